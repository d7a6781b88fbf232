"""The model registry: every model of ``[pipeline.models]`` loaded once per worker, and
the rule that picks one for a series (``[[pipeline.model_rules]]``, else the default).

A config without a registry has one model, ``default`` (``pipeline.model_dir`` or the
bundled demo models), and its outputs keep the method's name; with a registry every
output names the model that produced it (``lge-node <name>``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset

from node.config import PipelineSection
from node.workflow.selector import SeriesFacts, reconstruction
from pipeline.instance import listed

if TYPE_CHECKING:
    from dicom_templates.identity import Algorithm
    from pipeline.run import Pipeline


@dataclass(frozen=True)
class Choice:
    model: str
    reason: str  # which rule, or "default"


def choose(cfg: PipelineSection, facts: SeriesFacts, calling_ae: str) -> Choice:
    """The model for a series: the first rule whose conditions all hold, else the default."""
    kind = reconstruction(facts)
    for number, rule in enumerate(cfg.model_rules, start=1):
        if rule.reconstruction and rule.reconstruction != kind:
            continue
        if rule.series_description and not re.search(
            rule.series_description, facts.description, re.IGNORECASE
        ):
            continue
        if rule.calling_ae and calling_ae not in rule.calling_ae:
            continue
        return Choice(rule.model, f"model rule {number}")
    return Choice(cfg.default, "default")


def facts_of(ds: Dataset) -> SeriesFacts:
    """What the rules look at, from a loaded series' first object."""
    image_type = ds.get("ImageType") or ""
    values = listed(image_type)
    return SeriesFacts(
        series_uid=str(ds.get("SeriesInstanceUID", "")),
        modality=str(ds.get("Modality", "")),
        description=str(ds.get("SeriesDescription", "")),
        image_type="\\".join(values) if values is not None else str(image_type),
    )


@dataclass(frozen=True)
class LoadedModel:
    name: str
    pipeline: Pipeline
    algorithm: Algorithm


@dataclass(frozen=True)
class ModelInfo:
    """What the console shows of a loaded model."""

    name: str
    title: str
    version: str
    folds: list[str]
    synthetic_trained: bool
    default: bool
    trained_on: str  # the training data's source (or the phantom generator)
    licence: str  # of the training data


class Models:
    """The registry's models, loaded (YOLO and nnU-Net in memory, once each)."""

    def __init__(self, cfg: PipelineSection) -> None:
        from dicom_templates.identity import Algorithm
        from pipeline.models import ModelBundle, ModelError
        from pipeline.run import Pipeline, PipelineSettings

        self.cfg = cfg
        settings = PipelineSettings(
            device=cfg.device,
            mirroring=cfg.mirroring,
            nsd=cfg.nsd,
            grey_zone_sd=cfg.grey_zone_sd,
            nonviable_percent=cfg.nonviable_percent,
        )
        self.loaded: dict[str, LoadedModel] = {}
        for name, entry in cfg.registry().items():
            try:
                bundle = ModelBundle.load(entry.model_dir, entry.nnunet_model, entry.yolo_weights)
            except ModelError as exc:
                raise ModelError(f"model {name!r}: {exc}") from exc
            # Without a registry the outputs keep the method's name, as before.
            algorithm = Algorithm.of_models(bundle, None if not cfg.models else name)
            self.loaded[name] = LoadedModel(name, Pipeline(bundle, settings), algorithm)

    @property
    def default(self) -> LoadedModel:
        return self.loaded[self.cfg.default]

    def get(self, name: str | None) -> LoadedModel:
        """A model by name; the default for None or a name no longer configured."""
        return self.loaded.get(name or "", self.default)

    def for_series(self, ds: Dataset, calling_ae: str) -> tuple[LoadedModel, Choice]:
        choice = choose(self.cfg, facts_of(ds), calling_ae)
        return self.loaded[choice.model], choice

    def describe(self) -> list[ModelInfo]:
        out = []
        for name, loaded in self.loaded.items():
            bundle = loaded.pipeline.bundle
            data = bundle.manifest.get("training_data", {})
            info = ModelInfo(
                name=name, title=bundle.name, version=bundle.version,
                folds=list(bundle.folds), synthetic_trained=bundle.synthetic_trained,
                default=name == self.cfg.default,
                trained_on=str(data.get("source") or data.get("generator") or "unknown"),
                licence=str(data.get("licence") or ""),
            )  # fmt: skip
            out.append(info)
        return out
