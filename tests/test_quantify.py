"""Quantification on hand-built label maps with known answers."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage

from pipeline.labels import Label
from pipeline.quantify import quantify
from pipeline.volume import Geometry

PIXEL = 1.0  # mm
SPACING = 8.0  # mm between slices
N = 128
R_IN, R_OUT = 20.0, 30.0


def axial_geometry(n_slices: int) -> Geometry:
    # Rows along patient left (+x), columns along posterior (+y): anterior is image-up.
    return Geometry(
        shape=(n_slices, N, N),
        origin=np.zeros(3),
        row_direction=np.array([1.0, 0, 0]),
        column_direction=np.array([0, 1.0, 0]),
        slice_direction=np.array([0, 0, 1.0]),
        pixel_spacing=(PIXEL, PIXEL),
        slice_spacing=SPACING,
    )


def polar() -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.indices((N, N)) - (N - 1) / 2
    r = np.hypot(xx, yy) * PIXEL
    # Angle measured from image-left (patient right, where the RV is), toward image-up.
    theta = np.degrees(np.arctan2(-yy, -xx))
    return r, theta


def ring_stack(n_slices: int = 10, rv: bool = True) -> np.ndarray:
    r, theta = polar()
    labels = np.zeros((n_slices, N, N), dtype=np.uint8)
    sl = labels[0]
    sl[r < R_IN] = Label.LV_BLOOD
    sl[(r >= R_IN) & (r < R_OUT)] = Label.MYOCARDIUM
    if rv:  # RV crescent against the septum, on image-left (patient right)
        sl[(r >= R_OUT) & (r < R_OUT + 12) & (np.abs(theta) < 60)] = Label.RV_BLOOD
    labels[:] = sl
    return labels


def test_ring_volume_mass_and_percentages() -> None:
    labels = ring_stack()
    m = quantify(labels, axial_geometry(10))
    expected = np.pi * (R_OUT**2 - R_IN**2) * SPACING * 10 / 1000
    assert m.myocardium_ml == pytest.approx(expected, rel=0.02)
    assert m.myocardium_mass_g == pytest.approx(1.05 * m.myocardium_ml)
    assert m.scar_ml == 0 and m.scar_percent == 0 and m.mvo_ml == 0
    assert m.aha.septum_source == "rv_insertion"
    assert sum(s.myocardium_ml for s in m.segments) == pytest.approx(m.myocardium_ml)
    # Thirds of 10 cavity slices: 4 basal, 3 mid, 3 apical.
    assert [len(m.aha.levels[k]) for k in ("basal", "mid", "apical", "apex")] == [4, 3, 3, 0]


def test_transmural_wedge_lands_in_mid_anterior_with_mvo_inside() -> None:
    labels = ring_stack()
    r, theta = polar()
    wall = (r >= R_IN) & (r < R_OUT)
    wedge = wall & (np.abs(theta - 90) < 20)  # anterior (image-up), 40 degrees wide
    mvo = wedge & (r < 25) & (np.abs(theta - 90) < 10)
    for k in (4, 5, 6):  # the mid third
        labels[k][wedge] = Label.SCAR
        labels[k][mvo] = Label.MVO
    m = quantify(labels, axial_geometry(10))
    seg = {s.id: s for s in m.segments}
    # The wedge covers 40 of segment 7's 60 degrees, through the whole wall.
    assert seg[7].scar_percent == pytest.approx(100 * 40 / 60, abs=6)
    assert seg[7].transmurality_percent == pytest.approx(100 * 40 / 60, abs=6)
    assert seg[7].mvo_ml == pytest.approx(m.mvo_ml)
    expected_mvo = np.pi * (25**2 - R_IN**2) * (20 / 360) * SPACING * 3 / 1000
    assert m.mvo_ml == pytest.approx(expected_mvo, rel=0.1)
    for sid, s in seg.items():
        if sid != 7:
            assert s.scar_percent == 0 and s.transmurality_percent == 0, sid
    assert m.scar_percent == pytest.approx(100 * m.scar_ml / m.myocardium_ml)


def test_subendocardial_scar_is_half_transmural() -> None:
    labels = ring_stack()
    r, _ = polar()
    inner_half = (r >= R_IN) & (r < (R_IN + R_OUT) / 2)
    for k in range(4):  # basal, all around
        labels[k][inner_half] = Label.SCAR
    m = quantify(labels, axial_geometry(10))
    for s in m.segments[:6]:
        assert s.transmurality_percent == pytest.approx(50, abs=6), s
    for s in m.segments[6:]:
        assert s.transmurality_percent == 0


@pytest.mark.parametrize("degrees", [-35, 30])
def test_segments_follow_the_septum_when_the_heart_is_rotated(degrees: float) -> None:
    # Rotate the anatomy in the image (the patient axes stay): the wedge keeps its place
    # relative to the RV insertion points, so it stays in segment 7.
    labels = ring_stack()
    r, theta = polar()
    wedge = (r >= R_IN) & (r < R_OUT) & (np.abs(theta - 90) < 20)
    for k in (4, 5, 6):
        labels[k][wedge] = Label.SCAR
    rotated = ndimage.rotate(labels, degrees, axes=(2, 1), reshape=False, order=0)
    m = quantify(rotated, axial_geometry(10))
    seg = {s.id: s for s in m.segments}
    assert seg[7].scar_percent == pytest.approx(100 * 40 / 60, abs=8)
    assert seg[8].scar_percent < 5 and seg[12].scar_percent < 5


def test_apical_cap_is_segment_17() -> None:
    labels = ring_stack(11)
    r, _ = polar()
    labels[10] = 0
    labels[10][r < 15] = Label.MYOCARDIUM  # cap: myocardium, no cavity
    labels[10][r < 6] = Label.SCAR
    m = quantify(labels, axial_geometry(11))
    assert m.aha.levels["apex"] == [10]
    cap = m.segments[16]
    assert cap.id == 17 and cap.myocardium_ml > 0
    assert cap.scar_percent == pytest.approx(100 * 36 / 225, abs=4)


def test_without_rv_the_septum_falls_back_and_is_flagged() -> None:
    m = quantify(ring_stack(rv=False), axial_geometry(10))
    assert m.aha.septum_source == "fallback"
    assert "septum_fallback" in m.qc.flags


def test_empty_and_partial_coverage_flags() -> None:
    empty = quantify(np.zeros((8, N, N), dtype=np.uint8), axial_geometry(8))
    assert empty.myocardium_ml == 0 and "empty_segmentation" in empty.qc.flags
    assert all(s.scar_percent == 0 for s in empty.segments)
    # Myocardium in every slice, no cap: the stack cuts the heart at both ends.
    cut = quantify(ring_stack(), axial_geometry(10))
    assert {"coverage_incomplete_base", "coverage_incomplete_apex"} <= set(cut.qc.flags)


def test_max_transmurality_and_non_viable_segments_by_threshold() -> None:
    """Segment 7 (mid anterior): a wedge through the whole wall over 40 of its 60 degrees
    (mean ~67 %, max 100 %); segment 8 (mid anteroseptal): 40 % of the wall all across."""
    labels = ring_stack()
    r, theta = polar()
    wall = (r >= R_IN) & (r < R_OUT)
    wedge = wall & (np.abs(theta - 90) < 20)
    sub = wall & (r < R_IN + 4) & (theta > 0) & (theta < 60)  # anteroseptal sector
    for k in (4, 5, 6):
        labels[k][wedge] = Label.SCAR
        labels[k][sub] = Label.SCAR
    chronic = quantify(labels, axial_geometry(10))
    seg = {s.id: s for s in chronic.segments}
    assert seg[7].max_transmurality_percent == pytest.approx(100, abs=1)
    assert seg[7].transmurality_percent == pytest.approx(100 * 40 / 60, abs=6)
    # max over rays: one pixel of the 10-pixel wall is 10 points of pixelation
    assert seg[8].max_transmurality_percent == pytest.approx(40, abs=10)
    assert all(s.max_transmurality_percent >= s.transmurality_percent for s in seg.values())
    assert chronic.nonviable_segments == [7]
    assert quantify(labels, axial_geometry(10), nonviable_percent=75.0).nonviable_segments == []
    doc = chronic.to_dict()
    assert doc["nonviable_segments"] == [7] and doc["nonviable_percent"] == 50.0


def _composition(case, grey_zone_sd: float = 2.0):
    from pipeline.reference import composition
    from pipeline.series import load_series

    volume = load_series(case.out_dir / "dicom")
    return composition(volume.array, case.labels, volume.geometry, grey_zone_sd)


@pytest.mark.parametrize(("seed", "kind"), [(7, "psir"), (3, "magnitude")])
def test_grey_zone_and_core_of_a_border_zone_phantom_match_its_truth(
    phantom_factory, seed: int, kind: str
) -> None:
    """The true labels as segmentation isolate the intensity method: FWHM core ~ the
    phantom's scar + MVO, 2-SD grey zone ~ its border-zone tissue (partial volume at the
    scar's edge adds a little; the method's known bias)."""
    import json

    case = phantom_factory(seed=seed, kind=kind, scar=True, border_zone=True)
    truth = json.loads((case.out_dir / "truth.json").read_text())["phantom"]
    assert truth["grey_zone_ml"] > 2.0 and truth["core_ml"] > 1.0
    comp = _composition(case)
    assert comp.grey_zone_ml == pytest.approx(truth["grey_zone_ml"], rel=0.25)
    assert comp.core_ml == pytest.approx(truth["core_ml"], rel=0.25)
    assert "FWHM" in comp.method and "2 SD" in comp.method
    # the same heart without a border zone: the grey zone is what partial volume leaves
    plain = phantom_factory(seed=seed, kind=kind, scar=True)
    assert _composition(plain).grey_zone_ml < 0.5 * comp.grey_zone_ml
    # a stricter lower bound can only shrink the grey zone
    assert _composition(case, 3.0).grey_zone_ml <= comp.grey_zone_ml


def test_no_infarct_no_composition(phantom_factory) -> None:
    comp = _composition(phantom_factory(seed=1, kind="psir", scar=False))
    assert comp.core_ml == 0 and comp.grey_zone_ml == 0 and comp.grey_zone_fraction == 0


def test_ewa_counts_the_border_zone_in_part(phantom_factory) -> None:
    """EWA weighs intermediate signal: it lies between the core alone and core + grey zone."""
    import json

    from pipeline.reference import reference_scar
    from pipeline.series import load_series

    case = phantom_factory(seed=3, kind="magnitude", scar=True, border_zone=True)
    truth = json.loads((case.out_dir / "truth.json").read_text())["phantom"]
    volume = load_series(case.out_dir / "dicom")
    refs = {r.method: r for r in reference_scar(volume.array, case.labels, volume.geometry)}
    assert truth["core_ml"] < refs["EWA"].scar_ml < truth["core_ml"] + truth["grey_zone_ml"]


def test_unlabelled_borders_change_nothing() -> None:
    """Quantification works on the labelled region only: the same heart on a larger
    canvas, anywhere on it, gives the same numbers and the segment map moves with it."""
    labels = ring_stack()
    r, theta = polar()
    labels[4:7][:, (r >= R_IN) & (r < R_OUT) & (np.abs(theta - 90) < 30)] = Label.SCAR
    small = quantify(labels, axial_geometry(10))
    canvas = np.zeros((10, N + 70, N + 45), dtype=np.uint8)
    canvas[:, 50 : 50 + N, 11 : 11 + N] = labels
    geometry = replace(axial_geometry(10), shape=canvas.shape)
    large = quantify(canvas, geometry)
    assert large.to_dict() == small.to_dict()
    assert large.segment_map is not None and small.segment_map is not None
    assert large.segment_map.shape == canvas.shape
    assert np.array_equal(large.segment_map[:, 50 : 50 + N, 11 : 11 + N], small.segment_map)
    assert not large.segment_map[:, :50].any() and not large.segment_map[:, :, :11].any()
