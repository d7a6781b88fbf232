"""Image regions (SR SCOORD POLYLINEs) that outline a mask on its source images.

A viewer draws an SR measurement only where it has image coordinates, so every group in
the report carries the outline of what it measured. One closed polyline per connected
component and slice; a component with holes (the myocardium ring around the blood pool)
becomes one polyline with a zero-width cut to each hole, as RT structure sets do, so
the region stays the same set of pixels rather than the filled outer contour.
"""

from __future__ import annotations

import cv2
import highdicom as hd
import numpy as np
from matplotlib.path import Path as PolyPath
from scipy import ndimage
from skimage.measure import find_contours

from pipeline.volume import Volume

TOLERANCE_PX = 0.35  # polygon simplification; well under a pixel


def _signed_area(c: np.ndarray) -> float:
    x, y = c[:, 0], c[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def _bridge(outer: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """``outer`` with a zero-width cut into ``hole`` at their closest points."""
    d = np.linalg.norm(outer[:-1, None, :] - hole[None, :-1, :], axis=2)
    i, j = np.unravel_index(int(np.argmin(d)), d.shape)
    ring = np.concatenate([hole[j:-1], hole[: j + 1]])  # closed, starting at hole[j]
    return np.concatenate([outer[: i + 1], ring, outer[i:]])


def outlines(mask: np.ndarray) -> list[np.ndarray]:
    """Closed polylines (N, 2) as (column, row) image coordinates, DICOM's convention
    (pixel centres at .5), one per connected component of the 2D ``mask``."""
    if not mask.any():
        return []
    padded = np.pad(mask.astype(np.float32), 1)
    contours = []
    for c in find_contours(padded, 0.5):
        xy = c[:, ::-1] - 1.0 + 0.5  # (row, col) in the padded array -> (x, y)
        if np.allclose(xy[0], xy[-1]):
            xy = xy[:-1]
        # Douglas-Peucker in C (skimage's approximate_polygon is a Python loop, and the
        # outlines are on the path from a finished segmentation to its report).
        xy = cv2.approxPolyDP(xy.astype(np.float32)[:, None], TOLERANCE_PX, True)[:, 0]
        if len(xy) < 3:
            continue
        contours.append(np.vstack([xy, xy[:1]]).astype(np.float64))
    # Nesting depth decides outer (even) or hole (odd); a hole joins its innermost parent.
    # Only outlines whose bounding box holds the point can hold it: a poor segmentation's
    # thousands of specks then cost a comparison each, not a point-in-polygon test.
    paths = [PolyPath(c) for c in contours]
    bounds = np.array([[*c.min(axis=0), *c.max(axis=0)] for c in contours]).reshape(-1, 4)

    def enclosing(i: int) -> list[int]:
        x, y = contours[i][0]
        near = (bounds[:, 0] <= x) & (x <= bounds[:, 2]) & (bounds[:, 1] <= y) & (y <= bounds[:, 3])
        near[i] = False
        return [int(j) for j in np.flatnonzero(near) if paths[j].contains_point(contours[i][0])]

    around = [enclosing(i) for i in range(len(contours))]
    depth = [len(a) for a in around]
    result: dict[int, np.ndarray] = {i: c for i, c in enumerate(contours) if depth[i] % 2 == 0}
    for i, c in enumerate(contours):
        if depth[i] % 2 == 0:
            continue
        parents = [j for j in around[i] if j in result and depth[j] == depth[i] - 1]
        if parents:
            j = min(parents, key=lambda j: abs(_signed_area(result[j])))
            result[j] = _bridge(result[j], c)
    return list(result.values())


MAX_REGIONS = 100  # outlines per finding in the SR: a viewer's navigation, not the volume
MAX_HOLES = 20  # holes per slice kept open; each is a cut the outline has to make


def _largest_components(mask: np.ndarray, keep: int) -> np.ndarray:
    """``mask`` with only its ``keep`` largest in-plane components (4-connected, as the
    outlines see them): thousands of specks are dropped before they are traced. The
    mask itself when it has no more than ``keep``."""
    labelled = [ndimage.label(s) for s in mask]
    if sum(n for _, n in labelled) <= keep:
        return mask
    sizes = [
        (int(count), k, i + 1)
        for k, (lab, n) in enumerate(labelled)
        if n
        for i, count in enumerate(np.bincount(lab.ravel(), minlength=n + 1)[1:])
    ]
    sizes.sort(key=lambda t: -t[0])
    kept: dict[int, list[int]] = {}
    for _, k, i in sizes[:keep]:
        kept.setdefault(k, []).append(i)
    out = np.zeros_like(mask, dtype=bool)
    for k, ids in kept.items():
        out[k] = np.isin(labelled[k][0], ids)
    return out


def _largest_holes(mask: np.ndarray, keep: int) -> np.ndarray:
    """The 2D ``mask`` with all but its ``keep`` largest holes filled: a speckled region
    (a poor model's) would otherwise need a cut to each of its hundreds of holes."""
    if not mask.any():
        return mask
    eight = np.ones((3, 3), dtype=bool)  # the background, as the outlines see it
    holes = ndimage.binary_fill_holes(mask, structure=eight) & ~mask
    labelled, n = ndimage.label(holes, structure=eight)
    if n <= keep:
        return mask
    sizes = np.bincount(labelled.ravel(), minlength=n + 1)[1:]
    open_ = np.argsort(-sizes, kind="stable")[:keep] + 1
    return mask | (holes & ~np.isin(labelled, open_))


def image_regions(volume: Volume, mask: np.ndarray) -> list[hd.sr.ImageRegion]:
    """SR image regions outlining the 3D ``mask`` (z, y, x), the slice where the mask is
    largest first (a viewer opens a measurement on its first region). At most
    `MAX_REGIONS`, the largest, with at most `MAX_HOLES` holes per slice: a fragmented
    segmentation (a poor model's specks) would otherwise fill the report with thousands
    of outlines and cuts; the volumes count every voxel."""
    # Traced in the box that holds the mask (the heart is a small part of the image):
    # the same outlines, offset, at a fraction of the cost over the 20 findings.
    rows, columns = np.nonzero(mask.any(axis=0))
    if rows.size == 0:
        return []
    y0, x0 = int(rows.min()), int(columns.min())
    mask = mask[:, y0 : int(rows.max()) + 1, x0 : int(columns.max()) + 1]
    mask = _largest_components(mask, MAX_REGIONS)
    mask = np.stack([_largest_holes(s, MAX_HOLES) for s in mask])
    areas = mask.reshape(mask.shape[0], -1).sum(axis=1)
    order = [int(k) for k in np.argsort(-areas, kind="stable") if areas[k] > 0]
    offset = np.array([x0, y0], dtype=np.float64)
    found = [(k, xy + offset) for k in order for xy in outlines(mask[k])]
    if len(found) > MAX_REGIONS:
        sizes = [abs(_signed_area(xy)) for _, xy in found]
        keep = set(np.argsort(sizes, kind="stable")[::-1][:MAX_REGIONS].tolist())
        found = [f for i, f in enumerate(found) if i in keep]
    regions = []
    for k, xy in found:
        ref = volume.frames[k]
        source = hd.sr.SourceImageForRegion(
            referenced_sop_class_uid=ref.sop_class_uid,
            referenced_sop_instance_uid=ref.sop_instance_uid,
            referenced_frame_numbers=[ref.frame_number] if ref.frame_number else None,
        )
        regions.append(
            hd.sr.ImageRegion(
                graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                graphic_data=np.round(xy, 2),
                source_image=source,
            )
        )
    return regions
