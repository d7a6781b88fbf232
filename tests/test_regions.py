"""SR outlines: a viewer fills the polylines of a measurement's image region, so filling
them must give back the pixels that were measured."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.path import Path as PolyPath
from scipy import ndimage

from dicom_templates.regions import outlines


def _fill(polylines: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Even-odd fill at pixel centres ((column, row) + 0.5, DICOM's convention)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    centres = np.c_[xx.ravel() + 0.5, yy.ravel() + 0.5]
    inside = np.zeros(len(centres), dtype=int)
    for poly in polylines:
        inside += PolyPath(poly).contains_points(centres)
    return (inside % 2 == 1).reshape(shape)


def _ring(side: int = 64) -> np.ndarray:
    yy, xx = np.mgrid[:side, :side]
    r = np.hypot(yy - side / 2, xx - side / 2)
    wobble = 3 * np.sin(3 * np.arctan2(yy - side / 2, xx - side / 2))
    return (r < 20 + wobble) & (r > 12)


def test_a_ring_is_one_closed_polyline_that_fills_to_the_ring() -> None:
    ring = _ring()
    polys = outlines(ring)
    assert len(polys) == 1, "the hole joins its ring through a zero-width cut"
    assert np.allclose(polys[0][0], polys[0][-1]), "closed"
    wrong = int((_fill(polys, ring.shape) != ring).sum())
    # Only pixel centres lying exactly on the zero-width cut can be ambiguous.
    assert wrong <= 10, f"{wrong} of {ring.sum()} pixels differ"


@pytest.mark.parametrize("seed", range(6))
def test_blobs_fill_back_to_their_pixels(seed: int) -> None:
    rng = np.random.default_rng(seed)
    mask = ndimage.gaussian_filter(rng.random((72, 64)), 4) > 0.5
    mask |= _ring(72)[:, :64] & (seed % 2 == 0)
    polys = outlines(mask)
    _, n = ndimage.label(mask)
    assert 1 <= len(polys) <= n, "one polyline per 4-connected component at most"
    wrong = int((_fill(polys, mask.shape) != mask).sum())
    assert wrong <= 0.02 * mask.sum(), f"{wrong} of {mask.sum()} pixels differ"
    # Simplified, but not to a caricature: vertices only where the outline turns.
    assert sum(len(p) for p in polys) < 4 * int(mask.sum() ** 0.5) * n + 50


def test_nothing_to_outline() -> None:
    assert outlines(np.zeros((8, 8), bool)) == []


def test_a_speckled_mask_keeps_its_largest_components_only() -> None:
    """A poor model's thousands of specks: only the MAX_REGIONS largest components are
    traced; a mask with fewer is traced whole."""
    from dicom_templates.regions import MAX_REGIONS, _largest_components

    rng = np.random.default_rng(3)
    mask = np.zeros((4, 128, 128), dtype=bool)
    mask[:, ::3, ::3] = rng.random((4, 43, 43)) < 0.6  # isolated one-pixel specks
    mask[1, 10:30, 10:30] = True  # two real regions, among the specks
    mask[2, 50:60, 70:90] = True
    kept = _largest_components(mask, MAX_REGIONS)
    assert ndimage.label(kept[1])[1] + sum(ndimage.label(s)[1] for s in kept[[0, 2, 3]]) == (
        MAX_REGIONS
    )
    assert kept[1, 10:30, 10:30].all() and kept[2, 50:60, 70:90].all()
    assert not (kept & ~mask).any()
    few = mask & False
    few[0, 5:9, 5:9] = True
    assert _largest_components(few, MAX_REGIONS) is few


def test_a_region_riddled_with_holes_keeps_its_largest_holes_open() -> None:
    from dicom_templates.regions import _largest_holes

    mask = np.ones((120, 120), dtype=bool)
    mask[0, :] = mask[-1, :] = mask[:, 0] = mask[:, -1] = False
    mask[4:116:4, 4:116:4] = False  # 784 one-pixel holes
    mask[50:60, 50:60] = False  # and one large one
    kept = _largest_holes(mask, 20)
    holes = ndimage.binary_fill_holes(kept) & ~kept
    assert ndimage.label(holes, structure=np.ones((3, 3)))[1] == 20
    assert not kept[50:60, 50:60].any()  # the large hole stays open
    assert not (mask & ~kept).any()  # only holes are filled
    assert outlines(kept) and len(outlines(kept)) == 1
    ring = _ring()
    assert _largest_holes(ring, 20) is ring  # a myocardial ring's one hole: untouched


def test_regions_are_the_outlines_of_each_slice_in_image_coordinates(psir_classic) -> None:
    """The SR regions are traced in the box around the mask (the heart is a small part
    of the image): they must be the very outlines of the whole slice, at the same image
    coordinates, largest slice first, on the right source image."""
    from dicom_templates.regions import image_regions
    from pipeline.series import load_series

    volume = load_series(psir_classic.out_dir / "dicom")
    z, h, w = volume.array.shape
    mask = np.zeros((z, h, w), dtype=bool)
    ring = _ring(40)
    mask[2, h - 45 : h - 5, w - 43 : w - 3] = ring  # near a corner
    mask[5, 30:70, 20:60] = ring
    mask[5, 35:45, 100:130] = True  # a second component, holes left open
    mask[5, 38:40, 110:112] = False
    regions = image_regions(volume, mask)
    got = [  # the SCOORD item holds the coordinates, its child the source image
        (item.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID,
         np.asarray(item.GraphicData, dtype=float).reshape(-1, 2))
        for item in regions
    ]  # fmt: skip
    expected = [
        (volume.frames[k].sop_instance_uid, np.round(xy, 2))
        for k in (5, 2)  # slice 5 holds more pixels: first
        for xy in outlines(mask[k])
    ]
    assert len(got) == len(expected) == 3
    for (uid, xy), (want_uid, want) in zip(got, expected, strict=True):
        assert uid == want_uid
        assert np.allclose(xy, want, atol=0.006)
