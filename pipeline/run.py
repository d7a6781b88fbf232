"""The pipeline: an LGE `Volume` in, labels + metrics out (`Result`).

Stages: localization (YOLO) -> crop -> segmentation (nnU-Net) -> back to full geometry ->
post-processing -> quantification (+ reference thresholds, QC). Each stage is timed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from pipeline.localize import HeartLocator, Localization
from pipeline.models import ModelBundle
from pipeline.postprocess import postprocess
from pipeline.qc import QcInputs, assess
from pipeline.quantify import Metrics, quantify
from pipeline.reference import composition, reference_scar
from pipeline.roi import Box, heart_region, paste
from pipeline.segment import Segmenter
from pipeline.volume import Volume

DISAGREEMENT_POINTS = 10.0
MIN_LV_ML = 1.0  # an LV (pool and wall) smaller than this is noise, not a heart


@dataclass
class Result:
    labels: np.ndarray  # (z, y, x) on the volume's geometry
    metrics: Metrics
    localization: Localization
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage


@dataclass
class PipelineSettings:
    device: str = "cpu"
    mirroring: bool | None = None  # None: as the model's manifest says
    nsd: float = 5.0
    grey_zone_sd: float = 2.0  # lower bound of the grey zone: remote mean + n SD
    nonviable_percent: float = 50.0  # 50: chronic infarcts; 75: acute


class Pipeline:
    """Models are loaded once; `run` is called per series."""

    def __init__(self, bundle: ModelBundle, settings: PipelineSettings | None = None) -> None:
        self.bundle = bundle
        self.settings = settings or PipelineSettings()
        self.locator = HeartLocator(bundle.yolo_weights, device=self.settings.device)
        mirroring = self.settings.mirroring
        self.mirroring = bundle.test_time_mirroring if mirroring is None else mirroring
        self.segmenter = Segmenter(bundle, self.settings.device, self.mirroring)

    def run(self, volume: Volume, progress: Callable[[str], None] | None = None) -> Result:
        timings: dict[str, float] = {}

        def stage(name: str) -> None:
            if progress:
                progress(name)

        t = time.perf_counter()
        stage("localizing the heart")
        loc = self.locator.locate(volume)
        timings["localization"] = time.perf_counter() - t

        t = time.perf_counter()
        stage("segmenting")
        ys, xs = loc.roi.slices
        crop = volume.array[:, ys, xs]
        crop_labels, probabilities = self.segmenter.segment_with_probabilities(
            crop, volume.geometry.spacing_zyx
        )
        timings["segmentation"] = time.perf_counter() - t

        t = time.perf_counter()
        stage("post-processing")
        # on the crop: nothing is labelled outside it, so the components are the same
        min_lv = int(np.ceil(MIN_LV_ML / volume.geometry.voxel_volume_ml))
        crop_final = postprocess(crop_labels, min_lv_voxels=min_lv)
        labels = paste(crop_final, volume.array.shape, ys, xs)
        timings["postprocessing"] = time.perf_counter() - t

        t = time.perf_counter()
        stage("quantifying")
        metrics = measure(volume, labels, loc.roi, self.settings)
        qc = metrics.qc
        qc.localization_confidence = loc.confidence
        qc.borrowed_slices = loc.borrowed
        if not loc.found:
            qc.flags.insert(0, "no_heart_found")
        inputs = QcInputs(
            labels=crop_final,
            geometry=volume.geometry,
            probabilities=probabilities,
            localization_confidence=loc.confidence if loc.found else 0.0,
            scar_percent=metrics.scar_percent,
            reference_percents=[r.scar_percent for r in metrics.reference],
            image=crop,
        )
        reliability = assess(inputs, self.bundle.qc)
        qc.reliability = reliability.score
        qc.reliability_components = reliability.components
        qc.reliability_measures = reliability.measures
        qc.slice_reliability = reliability.slices
        qc.low_confidence = reliability.low_confidence
        if reliability.low_confidence:
            qc.flags.append("low_confidence")
        timings["quantification"] = time.perf_counter() - t
        timings["total"] = sum(timings.values())
        return Result(labels=labels, metrics=metrics, localization=loc, timings=timings)


def measure(volume: Volume, labels: np.ndarray, roi: Box, settings: PipelineSettings) -> Metrics:
    """Quantify ``labels`` (volumes, AHA segments) and add the reference intensity methods
    and the core/grey-zone composition, computed inside ``roi``; flags a reference
    disagreement. The model's result and a reader's correction are measured alike."""
    # Intensity methods on the heart crop: it holds all of the myocardium (the box has a
    # 15 mm margin) and their distance maps cost the crop's size, not the image's.
    ys, xs = roi.slices
    crop, crop_labels = volume.array[:, ys, xs], labels[:, ys, xs]
    metrics = quantify(labels, volume.geometry, settings.nonviable_percent)
    metrics.reference = reference_scar(crop, crop_labels, volume.geometry, settings.nsd)
    metrics.composition = composition(crop, crop_labels, volume.geometry, settings.grey_zone_sd)
    if metrics.myocardium_ml > 0 and all(
        abs(r.scar_percent - metrics.scar_percent) > DISAGREEMENT_POINTS for r in metrics.reference
    ):
        metrics.qc.flags.append("reference_disagreement")
    return metrics


def remeasure(volume: Volume, labels: np.ndarray, settings: PipelineSettings) -> Metrics:
    """`measure` for labels that did not come from the detector (a reader's correction):
    the region is the labelled heart with the detector's margin."""
    roi = heart_region(labels, volume.geometry.pixel_spacing)
    if roi is None:  # nothing labelled: the numbers are zeros, the crop does not matter
        roi = Box(0, 0, *labels.shape[1:])
    return measure(volume, labels, roi, settings)
