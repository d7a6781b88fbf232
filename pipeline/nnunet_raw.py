"""The nnU-Net v2 raw dataset layout (``imagesTr/``, ``labelsTr/``, ``dataset.json``) of
heart-region crops. Written by the training-set export (`pipeline.research.dataset`) and
by the node for readers' corrections, so the two can be trained on together."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from pipeline.labels import Label
from pipeline.roi import Box
from pipeline.volume import Geometry

# dataset.json "labels": names nnU-Net trains under, values of `pipeline.labels.Label`.
LABELS = {
    "background": Label.BACKGROUND.value,
    "lv_blood_pool": Label.LV_BLOOD.value,
    "myocardium": Label.MYOCARDIUM.value,
    "scar": Label.SCAR.value,
    "mvo": Label.MVO.value,
    "rv_blood_pool": Label.RV_BLOOD.value,
}
FILE_ENDING = ".nii.gz"


def crop_geometry(geometry: Geometry, box: Box) -> Geometry:
    """The geometry of ``box`` cut out of every slice of ``geometry``."""
    origin = geometry.index_to_patient(np.array([0, box.y0, box.x0], dtype=float))
    return Geometry(
        shape=(geometry.shape[0], box.y1 - box.y0, box.x1 - box.x0),
        origin=origin,
        row_direction=geometry.row_direction,
        column_direction=geometry.column_direction,
        slice_direction=geometry.slice_direction,
        pixel_spacing=geometry.pixel_spacing,
        slice_spacing=geometry.slice_spacing,
        slice_thickness=geometry.slice_thickness,
    )


def case_files(dataset_dir: Path, case_id: str) -> tuple[Path, Path]:
    """(image, labels) paths of a case."""
    return (
        dataset_dir / "imagesTr" / f"{case_id}_0000{FILE_ENDING}",
        dataset_dir / "labelsTr" / f"{case_id}{FILE_ENDING}",
    )


def write_case(
    image: np.ndarray,
    labels: np.ndarray,
    geometry: Geometry,
    box: Box,
    case_id: str,
    dataset_dir: Path,
) -> tuple[Path, Path]:
    """Write the ``box`` crop of a (z, y, x) image and its labels as one training case.

    Each file is written under a temporary name outside ``imagesTr``/``labelsTr`` and
    renamed, so nnU-Net never lists half a case; the crop keeps its position in patient
    space (NIfTI origin and direction)."""
    sub = crop_geometry(geometry, box)
    ys, xs = box.slices
    paths = case_files(dataset_dir, case_id)
    staging = dataset_dir / ".staging"
    staging.mkdir(parents=True, exist_ok=True)
    arrays: list[np.ndarray] = [
        image[:, ys, xs].astype(np.float32),
        labels[:, ys, xs].astype(np.uint8),
    ]
    for path, array in zip(paths, arrays, strict=True):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = staging / path.name  # the suffix tells SimpleITK the format
        sitk.WriteImage(sub.to_sitk(array), str(tmp), True)
        os.replace(tmp, path)
    return paths


def write_dataset_json(dataset_dir: Path, n_training: int, description: str) -> Path:
    """``dataset.json`` (written atomically): one LGE channel, the label names, the count."""
    doc = {
        "channel_names": {"0": "LGE"},  # not "CT": per-image z-score normalisation
        "labels": LABELS,
        "numTraining": n_training,
        "file_ending": FILE_ENDING,
        "description": description,
    }
    path = dataset_dir / "dataset.json"
    tmp = dataset_dir / ".dataset.json.tmp"
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, path)
    return path
