"""Post-processing rules and ROI combination, on small hand-made inputs."""

from __future__ import annotations

import numpy as np

from pipeline.labels import Label
from pipeline.localize import combine
from pipeline.postprocess import postprocess
from pipeline.roi import Box
from tests.test_quantify import axial_geometry, ring_stack


def test_only_the_largest_lv_component_is_kept() -> None:
    labels = ring_stack(6)
    labels[:, 2:6, 2:6] = Label.MYOCARDIUM  # a stray blob in the corner
    out = postprocess(labels)
    assert (out[:, 2:6, 2:6] == 0).all()
    assert (out[labels == Label.LV_BLOOD] == Label.LV_BLOOD).all()


def test_scar_specks_become_healthy_myocardium() -> None:
    labels = ring_stack(6)
    ys, xs = np.nonzero(labels[2] == Label.MYOCARDIUM)
    labels[2, ys[0], xs[0]] = Label.SCAR  # one voxel
    out = postprocess(labels)
    assert out[2, ys[0], xs[0]] == Label.MYOCARDIUM


def test_mvo_without_surrounding_scar_is_not_mvo() -> None:
    labels = ring_stack(6)
    ys, xs = np.nonzero(labels[3] == Label.MYOCARDIUM)
    # an isolated dark "MVO" blob inside healthy myocardium
    for y, x in zip(ys[:6], xs[:6], strict=True):
        labels[3, y, x] = Label.MVO
    out = postprocess(labels)
    assert not (out == Label.MVO).any()
    assert (out[3, ys[:6], xs[:6]] == Label.MYOCARDIUM).all()


def test_an_lv_of_a_few_voxels_is_noise_not_a_heart() -> None:
    speck = np.zeros((4, 32, 32), dtype=np.uint8)
    speck[1, 10:12, 10:17] = Label.MYOCARDIUM  # 14 voxels, as a model gave an empty image
    assert not postprocess(speck, min_lv_voxels=20).any()
    assert (postprocess(speck, min_lv_voxels=14) == speck).all()
    assert (postprocess(ring_stack(6), min_lv_voxels=20) == ring_stack(6)).all()


def test_mvo_inside_scar_is_kept() -> None:
    labels = ring_stack(6)
    region = labels[3] == Label.MYOCARDIUM
    ys, xs = np.nonzero(region)
    sel = (ys > 70) & (xs > 70)
    labels[3, ys[sel], xs[sel]] = Label.SCAR
    core = (ys > 75) & (xs > 75) & (ys < 85)
    labels[3, ys[core], xs[core]] = Label.MVO
    out = postprocess(labels)
    assert (out[3, ys[core], xs[core]] == Label.MVO).all()


class _Vol:
    """The bits of a Volume that `combine` reads."""

    def __init__(self, n: int) -> None:
        self.geometry = axial_geometry(n)
        self.array = np.zeros(self.geometry.shape, dtype=np.float32)


def test_missing_slices_borrow_and_outliers_are_dropped() -> None:
    heart = Box(50, 50, 80, 80)
    boxes = [heart, None, heart, Box(0, 0, 10, 10), heart]
    confs = [0.9, 0.0, 0.8, 0.7, 0.9]
    loc = combine(boxes, confs, _Vol(5))
    assert loc.found
    assert loc.boxes[1] == heart and 1 in loc.borrowed
    assert loc.boxes[3] == heart, "the corner box is a false positive"
    # The heart box with a 15 mm margin (1 mm pixels) is 60 mm: smaller than any heart,
    # so the detector saw part of it; the region grows to 100 mm about the same centre.
    assert loc.roi == Box(15, 15, 115, 115)


def test_a_whole_heart_keeps_its_margin_and_a_region_stays_in_the_image() -> None:
    whole = Box(30, 30, 100, 105)  # 70 x 75 mm: with 15 mm each side, 100 x 105 mm
    assert combine([whole] * 3, [0.9] * 3, _Vol(3)).roi == Box(15, 15, 115, 120)
    corner = Box(0, 100, 20, 128)  # at the image's edge: widened inward only
    roi = combine([corner] * 3, [0.9] * 3, _Vol(3)).roi
    assert roi == Box(0, 28, 100, 128)


def test_nothing_found_falls_back_to_the_whole_image() -> None:
    loc = combine([None] * 4, [0.0] * 4, _Vol(4))
    assert not loc.found
    assert loc.roi == Box(0, 0, 128, 128)
    assert loc.confidence == 0.0


def _mvo_rule_whole_volume(out: np.ndarray, min_mvo_voxels: int = 2) -> np.ndarray:
    """The MVO rule as first written: one whole-volume dilation per component."""
    from scipy import ndimage

    from pipeline.postprocess import CONNECT_3D, IN_PLANE

    out = out.copy()
    comps, n = ndimage.label(out == Label.MVO, structure=CONNECT_3D)
    for i in range(1, n + 1):
        comp = comps == i
        ring = ndimage.binary_dilation(comp, structure=IN_PLANE) & ~comp
        if not (out[ring] == Label.SCAR).any():
            out[comp] = Label.MYOCARDIUM
        elif comp.sum() < min_mvo_voxels:
            out[comp] = Label.SCAR
    return out


def test_many_mvo_specks_get_the_same_verdicts_as_one_component_at_a_time() -> None:
    """A poorly trained model's output: hundreds of MVO and scar specks in myocardium.
    The per-component rule (now worked in each component's box) decides every speck as
    the whole-volume rule does, touching the image border included."""
    rng = np.random.default_rng(7)
    labels = rng.choice([Label.MYOCARDIUM, Label.SCAR, Label.MVO], p=[0.6, 0.25, 0.15],
                        size=(8, 64, 64)).astype(np.uint8)  # fmt: skip
    out = postprocess(labels, min_scar_voxels=1)
    scar_step = labels.copy()  # postprocess up to the MVO rule, which keeps every voxel here
    assert (out != Label.BACKGROUND).all()
    from scipy import ndimage

    n = ndimage.label(labels == Label.MVO, structure=np.ones((3, 3, 3)))[1]
    assert n > 100
    assert np.array_equal(out, _mvo_rule_whole_volume(scar_step))
