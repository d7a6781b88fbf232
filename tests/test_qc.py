"""QC reliability: the true segmentation of a phantom is trusted, typical failures are
flagged, and calibration catches the calibration set's failures within its budget."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.labels import Label, myocardium_mask
from pipeline.models import BUNDLED, ModelBundle
from pipeline.qc import (
    DEFAULT_THRESHOLDS,
    MEASURES,
    SIGNALS,
    QcCalibration,
    QcInputs,
    Threshold,
    assess,
    calibrate,
    focal_thinning,
    pool_rim_excess,
    ring_shape,
)
from pipeline.quantify import quantify
from pipeline.reference import reference_scar
from pipeline.research.evaluate import CaseResult, reflag
from pipeline.research.phantom import PhantomCase
from pipeline.series import load_series


def _assess(case: PhantomCase, labels: np.ndarray, calibration: QcCalibration | None = None):
    volume = load_series(case.out_dir / "dicom")
    metrics = quantify(labels, volume.geometry)
    refs = reference_scar(volume.array, labels, volume.geometry, 5.0)
    onehot = np.eye(len(Label), dtype=np.float32)[labels].transpose(3, 0, 1, 2)
    inputs = QcInputs(
        labels, volume.geometry, onehot, 0.9, metrics.scar_percent,
        [r.scar_percent for r in refs], volume.array,
    )  # fmt: skip
    return assess(inputs, calibration)


def test_the_true_segmentation_is_trusted(psir_classic: PhantomCase) -> None:
    r = _assess(psir_classic, psir_classic.labels)
    assert not r.low_confidence, r
    assert r.components["ring"] > 0.9 and r.components["continuity"] > 0.9
    assert set(r.measures) <= set(MEASURES)


def test_half_a_ring_is_flagged_on_its_slices(psir_classic: PhantomCase) -> None:
    """The failure a radiologist must not be handed: only the septal half found."""
    labels = psir_classic.labels.copy()
    cols = np.argwhere(myocardium_mask(labels).any(axis=(0, 1))).ravel()
    centre = int((cols.min() + cols.max()) // 2)
    half = labels[:, :, centre:]
    half[myocardium_mask(half)] = 0
    r = _assess(psir_classic, labels)
    assert r.low_confidence and r.weakest == "ring", r
    assert max(r.slices.values()) < 0.5


def test_a_missing_slice_inside_the_stack_is_flagged(psir_classic: PhantomCase) -> None:
    labels = psir_classic.labels.copy()
    present = np.flatnonzero(myocardium_mask(labels).any(axis=(1, 2)))
    labels[present[len(present) // 2]] = 0
    r = _assess(psir_classic, labels)
    assert r.low_confidence and r.components["continuity"] == 0.0, r


def test_scar_called_blood_pool_shows_as_a_bright_pool_rim() -> None:
    """The under-call that leaves the myocardium looking right: subendocardial scar
    labelled as blood pool. Where the pool is darker than scar, its rim then carries a
    bright band that the QC flags; the correct labels leave the rim like the core."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:96, :96] - 48.0
    r, angle = np.hypot(yy, xx), np.arctan2(yy, xx)
    labels2d = np.zeros((96, 96), np.uint8)
    labels2d[r < 20] = Label.LV_BLOOD
    labels2d[(r >= 20) & (r < 28)] = Label.MYOCARDIUM
    labels2d[(r >= 20) & (r < 24) & (np.abs(angle) < 0.8)] = Label.SCAR  # subendocardial
    signal = {Label.LV_BLOOD: 150.0, Label.MYOCARDIUM: 20.0, Label.SCAR: 400.0}
    image2d = np.full((96, 96), 60.0)
    for label, value in signal.items():
        image2d[labels2d == label] = value
    labels = np.repeat(labels2d[None], 6, axis=0)
    image = np.repeat(image2d[None], 6, axis=0) + rng.normal(0, 15, labels.shape)
    under = labels.copy()
    under[under == Label.SCAR] = Label.LV_BLOOD
    rim = DEFAULT_THRESHOLDS["pool_rim_excess"]
    right, wrong = pool_rim_excess(image, labels), pool_rim_excess(image, under)
    assert right is not None and wrong is not None
    assert not rim.flags(right), right
    assert rim.flags(wrong), wrong
    assert pool_rim_excess(None, labels) is None  # no image, no measure


def _notch_stack(notched: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Eight short-axis slices of a ring whose wall thickens smoothly toward one side
    (6-10 px, as a hypertrophic septum), with a subendocardial infarct over 50 degrees
    and half the wall; in the slices ``notched`` the infarct is called blood pool."""
    yy, xx = np.mgrid[:96, :96] - 48.0
    r, angle = np.hypot(yy, xx), np.arctan2(yy, xx)
    epi = 30.0
    endo = epi - (8.0 + 2.0 * np.cos(angle - 1.0))
    labels2d = np.zeros((96, 96), np.uint8)
    labels2d[r < endo] = Label.LV_BLOOD
    labels2d[(r >= endo) & (r < epi)] = Label.MYOCARDIUM
    band = (r >= endo) & (r < endo + 4.0) & (np.abs(angle + 2.0) < np.radians(25))
    labels2d[band] = Label.SCAR
    truth = np.repeat(labels2d[None], 8, axis=0)
    under = truth.copy()
    for k in notched:
        under[k][band] = Label.LV_BLOOD
    return truth, under


def _thinning(labels: np.ndarray) -> float | None:
    shapes = {k: s for k in range(len(labels)) if (s := ring_shape(labels[k], (1.0, 1.0)))}
    return focal_thinning(shapes)


def test_scar_called_blood_pool_leaves_a_notch_in_the_wall() -> None:
    """The under-call that the pool rim cannot show (scar as bright as the pool has no
    bright rim): the wall gets a notch over the slices where it happened. A wall that is
    merely thicker on one side is no notch, nor is one odd slice or the stack's ends."""
    limit = DEFAULT_THRESHOLDS["focal_thinning"]
    truth, under = _notch_stack(notched=[3, 4, 5])
    right, wrong = _thinning(truth), _thinning(under)
    assert right is not None and wrong is not None
    assert not limit.flags(right), right
    assert limit.flags(wrong), wrong
    _, one_slice = _notch_stack(notched=[4])
    _, ends = _notch_stack(notched=[0, 7])
    assert not limit.flags(_thinning(one_slice) or 0.0)
    assert _thinning(ends) == pytest.approx(right)
    assert _thinning(truth[:3]) is None  # no two adjacent inner rings: no measure


def test_every_component_is_explained_for_readers() -> None:
    components = {component for component, _ in MEASURES.values()} | {"empty"}
    assert components == set(SIGNALS)


def test_threshold_is_half_at_flag_and_one_at_typical() -> None:
    up, down = Threshold(0.8, 0.9), Threshold(3.0, 1.0)
    assert up.score(0.8) == pytest.approx(0.5) and up.score(0.95) == 1.0 and up.flags(0.79)
    assert down.score(3.0) == pytest.approx(0.5) and down.score(0.5) == 1.0
    assert down.flags(3.1) and not down.flags(2.9)


def _cases(rng: np.random.Generator, n: int) -> list[dict[str, float]]:
    return [
        {
            "self_agreement": float(rng.normal(0.9, 0.015)),
            "ring_coverage": float(min(rng.normal(0.98, 0.01), 1.0)),
            "continuity": float(min(rng.normal(0.8, 0.05), 1.0)),
            "reference_gap": float(abs(rng.normal(2.0, 1.0))),
            "wall_mm_low": (w := float(rng.normal(8.0, 1.0))),
            "wall_mm_high": w,
        }
        for _ in range(n)
    ]


def test_calibration_catches_its_failures_within_the_good_case_budget() -> None:
    rng = np.random.default_rng(0)
    good = _cases(rng, 50)
    # failures: one far out (one-class bound catches it), two subtle ones just past the
    # good range on different measures, one that looks typical on every measure
    far = {**good[0], "ring_coverage": 0.4}
    subtle_a = {**good[1], "self_agreement": min(g["self_agreement"] for g in good) - 0.004}
    subtle_b = {**good[2], "reference_gap": max(g["reference_gap"] for g in good) + 0.3}
    hidden = dict(good[3])
    measures = [*good, far, subtle_a, subtle_b, hidden]
    failed = [False] * len(good) + [True] * 4
    cal = calibrate(measures, failed, good_budget=0.08)

    def flagged(m: dict[str, float]) -> bool:
        return any(cal.thresholds[k].flags(v) for k, v in m.items())

    assert flagged(far) and flagged(subtle_a) and flagged(subtle_b)
    assert not flagged(hidden)  # nothing distinguishes it; calibration does not overfit it
    assert sum(map(flagged, good)) <= 0.08 * len(good)
    for name, t in cal.thresholds.items():  # flag_at always on the atypical side
        higher_better = MEASURES[name][1]
        assert (t.flag_at < t.typical) if higher_better else (t.flag_at > t.typical), name


def test_calibration_refuses_too_few_good_cases() -> None:
    rng = np.random.default_rng(1)
    with pytest.raises(ValueError, match="too few"):
        calibrate(_cases(rng, 5), [False] * 5)


def test_reflag_decides_as_assess_does(psir_classic: PhantomCase) -> None:
    cal = QcCalibration({**DEFAULT_THRESHOLDS, "self_agreement": Threshold(0.999, 1.0)})
    r = _assess(psir_classic, psir_classic.labels, cal)
    case = CaseResult(
        case="1", kind="psir", dice={"myocardium": 1.0}, hd95_mm={}, truth_ml={},
        predicted_ml={}, truth_scar_percent=0.0, predicted_scar_percent=0.0,
        seconds_per_image=0.0, qc_flags=[], reliability_measures=r.measures,
    )  # fmt: skip
    for calibration in (cal, QcCalibration.defaults()):
        expected = _assess(psir_classic, psir_classic.labels, calibration).low_confidence
        reflag([case], calibration)
        assert case.low_confidence is expected


def test_a_models_thresholds_travel_in_its_manifest(tmp_path: Path) -> None:
    bundle = tmp_path / "models"
    shutil.copytree(BUNDLED, bundle)
    cal = QcCalibration({**DEFAULT_THRESHOLDS, "ring_coverage": Threshold(0.6, 0.97)}, "test")
    doc = json.loads((bundle / "manifest.json").read_text())
    (bundle / "manifest.json").write_text(json.dumps({**doc, "qc": cal.to_json()}))
    loaded = ModelBundle.load(bundle).qc
    assert loaded.thresholds["ring_coverage"] == Threshold(0.6, 0.97)
    assert loaded.source == "test"
