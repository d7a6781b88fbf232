"""Post-processing rules applied to the network's labels, in this order:

1. LV (pool + myocardium + scar + MVO): keep the largest 3D connected component, and
   only if it holds at least ``min_lv_voxels`` (a few voxels are noise, not a heart).
2. RV blood pool: keep the largest 3D component.
3. Specks: scar components (scar + MVO) under ``min_scar_voxels`` become healthy
   myocardium; MVO components under ``min_mvo_voxels`` become scar.
4. MVO needs enhancement around it: an MVO component with no scar voxel next to it (in
   plane) is dark, non-enhanced tissue - healthy myocardium - not MVO.
MVO within scar within myocardium then holds by the label convention.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from pipeline.labels import Label

CONNECT_3D = np.ones((3, 3, 3), dtype=bool)
IN_PLANE = np.array([[[0, 0, 0], [0, 0, 0], [0, 0, 0]],
                     [[0, 1, 0], [1, 1, 1], [0, 1, 0]],
                     [[0, 0, 0], [0, 0, 0], [0, 0, 0]]], dtype=bool)  # fmt: skip


def _largest(mask: np.ndarray) -> np.ndarray:
    comps, n = ndimage.label(mask, structure=CONNECT_3D)
    if n <= 1:
        return mask
    sizes = ndimage.sum_labels(mask, comps, index=np.arange(1, n + 1))
    return comps == (int(np.argmax(sizes)) + 1)


def postprocess(
    labels: np.ndarray, min_scar_voxels: int = 4, min_mvo_voxels: int = 2, min_lv_voxels: int = 0
) -> np.ndarray:
    out = labels.copy()
    lv = (out >= Label.LV_BLOOD) & (out <= Label.MVO)
    heart = _largest(lv)
    if heart.sum() < min_lv_voxels:
        heart = np.zeros_like(lv)
    out[lv & ~heart] = Label.BACKGROUND
    rv = out == Label.RV_BLOOD
    out[rv & ~_largest(rv)] = Label.BACKGROUND

    scar = (out == Label.SCAR) | (out == Label.MVO)
    comps, n = ndimage.label(scar, structure=CONNECT_3D)
    if n:
        sizes = ndimage.sum_labels(scar, comps, index=np.arange(1, n + 1))
        small = np.isin(comps, np.flatnonzero(sizes < min_scar_voxels) + 1)
        out[small] = Label.MYOCARDIUM
    mvo = out == Label.MVO
    comps, _ = ndimage.label(mvo, structure=CONNECT_3D)
    # Each component in its own bounding box (one pixel wider in-plane for its ring): a
    # poor model's thousands of specks then cost what their pixels do, not the volume each.
    for i, box in enumerate(ndimage.find_objects(comps), start=1):
        if box is None:
            continue
        z, y, x = box
        near = (z, slice(max(y.start - 1, 0), y.stop + 1), slice(max(x.start - 1, 0), x.stop + 1))
        comp = comps[near] == i
        region = out[near]  # a view: assignments below change ``out``
        ring = ndimage.binary_dilation(comp, structure=IN_PLANE) & ~comp
        if not (region[ring] == Label.SCAR).any():
            region[comp] = Label.MYOCARDIUM
        elif comp.sum() < min_mvo_voxels:
            region[comp] = Label.SCAR
    return out
