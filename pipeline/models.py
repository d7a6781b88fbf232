"""Where the models are: a bundle folder with ``yolo/heart.pt`` and an nnU-Net results tree
``nnunet/DatasetXXX_*/<Trainer>__<Plans>__<config>/fold_*/``. A model trained elsewhere
(EMIDEC, a site's own data) drops in by pointing ``nnunet_model`` at its trainer folder."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.qc import QcCalibration
from pipeline.runtime import BUNDLED_MODELS as BUNDLED


class ModelError(RuntimeError):
    """A model folder is missing or incomplete; the message says what was looked for."""


@dataclass(frozen=True)
class ModelBundle:
    yolo_weights: Path
    nnunet_folder: Path  # the <Trainer>__<Plans>__<config> folder
    folds: tuple[str, ...]
    name: str
    version: str
    synthetic_trained: bool
    qc: QcCalibration = field(default_factory=QcCalibration.defaults)
    # How the model is meant to run: its QC thresholds are calibrated for that mode.
    test_time_mirroring: bool = False
    mirror_axes: tuple[int, ...] | None = None  # in-plane axes to mirror; None: all allowed
    manifest: dict = field(default_factory=dict, compare=False)  # training data, settings

    @classmethod
    def load(
        cls,
        model_dir: Path | None = None,
        nnunet_model: Path | None = None,
        yolo_weights: Path | None = None,
    ) -> ModelBundle:
        root = Path(model_dir) if model_dir else BUNDLED
        manifest = {}
        if (root / "manifest.json").is_file():
            manifest = json.loads((root / "manifest.json").read_text())
        inference = manifest.get("inference", {})
        yolo = Path(yolo_weights) if yolo_weights else root / "yolo" / "heart.pt"
        if not yolo.is_file():
            raise ModelError(f"YOLO weights not found: {yolo} (train with lge-node train-demo)")
        folder = Path(nnunet_model) if nnunet_model else _find_trainer_folder(root / "nnunet")
        if not (folder / "plans.json").is_file() or not (folder / "dataset.json").is_file():
            raise ModelError(f"{folder}: not an nnU-Net model folder (plans.json, dataset.json)")
        folds = tuple(
            sorted(
                p.name.removeprefix("fold_")
                for p in folder.glob("fold_*")
                if (p / "checkpoint_final.pth").is_file()
            )
        )
        if not folds:
            raise ModelError(f"{folder}: no fold_*/checkpoint_final.pth")
        return cls(
            yolo_weights=yolo,
            nnunet_folder=folder,
            folds=folds,
            name=manifest.get("name", folder.name),
            version=str(manifest.get("version", "unknown")),
            synthetic_trained=bool(manifest.get("synthetic_trained", False)),
            qc=QcCalibration.from_json(manifest.get("qc")),
            test_time_mirroring=bool(inference.get("test_time_mirroring")),
            mirror_axes=_axes(inference.get("mirror_axes")),
            manifest=manifest,
        )


def _axes(value: object) -> tuple[int, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(a, int) and a in (0, 1) for a in value):
        raise ModelError(f"manifest inference.mirror_axes must be a list of 0 and/or 1: {value!r}")
    return tuple(value)


def _find_trainer_folder(nnunet_root: Path) -> Path:
    candidates = sorted(p.parent for p in nnunet_root.glob("Dataset*/*/plans.json"))
    if len(candidates) != 1:
        raise ModelError(
            f"expected one nnU-Net model under {nnunet_root}, found {len(candidates)}; "
            "set pipeline.nnunet_model to the trainer folder"
        )
    return candidates[0]
