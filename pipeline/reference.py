"""Conventional scar thresholds inside the predicted myocardium, reported beside the
model's scar as a QC signal.

- n-SD: scar = myocardium brighter than mean + n * SD of remote myocardium (healthy
  myocardium at least 10 mm from any predicted scar; all healthy myocardium if too little).
- FWHM: scar = myocardium brighter than half the maximum inside the enhanced region (the
  predicted scar, or the whole myocardium when none was predicted).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from pipeline.labels import Label, myocardium_mask, scar_mask
from pipeline.quantify import ReferenceScar
from pipeline.volume import Geometry

REMOTE_MM = 10.0
MIN_REMOTE_VOXELS = 30


def remote_myocardium(labels: np.ndarray, geometry: Geometry) -> np.ndarray:
    healthy = labels == Label.MYOCARDIUM
    scar = scar_mask(labels)
    if not scar.any():
        return healthy
    dist = ndimage.distance_transform_edt(~scar, sampling=geometry.spacing_zyx)
    remote = healthy & (dist >= REMOTE_MM)
    return remote if remote.sum() >= MIN_REMOTE_VOXELS else healthy


def nsd_scar(image: np.ndarray, labels: np.ndarray, geometry: Geometry, n: float) -> np.ndarray:
    myo = myocardium_mask(labels)
    remote = remote_myocardium(labels, geometry)
    if remote.sum() < 2:
        return np.zeros_like(myo)
    values = image[remote]
    return myo & (image > values.mean() + n * values.std())


def fwhm_scar(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    myo = myocardium_mask(labels)
    region = scar_mask(labels) if scar_mask(labels).any() else myo
    if not region.any():
        return np.zeros_like(myo)
    return myo & (image > 0.5 * float(image[region].max()))


def reference_scar(
    image: np.ndarray, labels: np.ndarray, geometry: Geometry, n: float = 5.0
) -> list[ReferenceScar]:
    myo_n = int(myocardium_mask(labels).sum())
    voxel = geometry.voxel_volume_ml
    out = []
    for method, param, mask in (
        ("nSD", n, nsd_scar(image, labels, geometry, n)),
        ("FWHM", None, fwhm_scar(image, labels)),
    ):
        count = int(mask.sum())
        out.append(
            ReferenceScar(
                method=method,
                parameter=param,
                scar_ml=count * voxel,
                scar_percent=100.0 * count / myo_n if myo_n else 0.0,
            )
        )
    return out
