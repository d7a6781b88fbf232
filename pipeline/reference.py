"""Conventional intensity methods inside the predicted myocardium.

Reference scar (beside the model's scar; a QC signal and what a reader compares with):
- n-SD: scar = myocardium brighter than mean + n * SD of remote myocardium (healthy
  myocardium at least 10 mm from any predicted scar; all healthy myocardium if too little).
- FWHM: scar = myocardium brighter than half the maximum inside the enhanced region (the
  predicted scar, or the whole myocardium when none was predicted). The maximum is the
  98th percentile there, so one noise spike does not move it.
- EWA (weighted intensity, after Engblom et al. 2016, without its EM step): every voxel
  above remote mean + 2 SD and within GREY_ZONE_REACH_MM of the FWHM core counts with
  the weight (I - remote mean) / (core mean - remote mean), clipped to 0..1; partial
  volume and intermediate signal count in part instead of all or nothing.

Infarct composition (`composition`), inside the predicted infarct's neighbourhood:
- core: FWHM region plus predicted MVO (hypo-enhanced, but infarct by convention);
- grey zone: above remote mean + n SD (n = 2 by default) but below the FWHM threshold,
  within GREY_ZONE_REACH_MM of the predicted infarct (intermediate signal far from any
  infarct is noise or partial volume at the blood pool, not peri-infarct tissue).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from pipeline.labels import Label, myocardium_mask, scar_mask
from pipeline.quantify import InfarctComposition, ReferenceScar
from pipeline.volume import Geometry

REMOTE_MM = 10.0
MIN_REMOTE_VOXELS = 30
PEAK_PERCENTILE = 98.0  # "maximum" of the enhanced region for FWHM
EWA_FLOOR_SD = 2.0
GREY_ZONE_REACH_MM = 10.0


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
    stats = _remote_stats(image, labels, geometry)
    if stats is None:
        return np.zeros_like(myo)
    return myo & (image > stats[0] + n * stats[1])


def _remote_stats(
    image: np.ndarray, labels: np.ndarray, geometry: Geometry
) -> tuple[float, float] | None:
    remote = remote_myocardium(labels, geometry)
    if remote.sum() < 2:
        return None
    values = image[remote]
    return float(values.mean()), float(values.std())


def fwhm_threshold(image: np.ndarray, labels: np.ndarray) -> float | None:
    """Half the (robust) maximum of the predicted scar, or of the myocardium without it."""
    myo = myocardium_mask(labels)
    region = (labels == Label.SCAR) if (labels == Label.SCAR).any() else myo
    if not region.any():
        return None
    return 0.5 * float(np.percentile(image[region], PEAK_PERCENTILE))


def fwhm_scar(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    myo = myocardium_mask(labels)
    threshold = fwhm_threshold(image, labels)
    if threshold is None:
        return np.zeros_like(myo)
    return myo & (image > threshold)


def ewa_weights(image: np.ndarray, labels: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Per-voxel infarct weight 0..1 inside the myocardium (0 elsewhere)."""
    myo = myocardium_mask(labels)
    stats = _remote_stats(image, labels, geometry)
    core = fwhm_scar(image, labels)
    weights = np.zeros(image.shape, dtype=np.float32)
    if stats is None or not core.any():
        return weights
    mean, sd = stats
    core_mean = float(image[core].mean())
    if core_mean <= mean:
        return weights
    w = np.clip((image - mean) / (core_mean - mean), 0.0, 1.0)
    # a priori: infarct is contiguous with its core, not noise scattered over the wall
    near = ndimage.distance_transform_edt(~core, sampling=geometry.spacing_zyx)
    keep = myo & (image > mean + EWA_FLOOR_SD * sd) & (near <= GREY_ZONE_REACH_MM)
    weights[keep] = w[keep]
    return weights


def composition(
    image: np.ndarray, labels: np.ndarray, geometry: Geometry, grey_zone_sd: float = 2.0
) -> InfarctComposition:
    """Core and grey zone of the predicted infarct (zero when no infarct was predicted)."""
    myo = myocardium_mask(labels)
    infarct = scar_mask(labels)
    voxel = geometry.voxel_volume_ml
    myo_ml = float(myo.sum()) * voxel
    method = (
        f"core: FWHM (> 50 % of the {PEAK_PERCENTILE:.0f}th-percentile scar signal) + MVO; "
        f"grey zone: > remote mean + {grey_zone_sd:g} SD and < FWHM threshold, within "
        f"{GREY_ZONE_REACH_MM:g} mm of the infarct"
    )
    stats = _remote_stats(image, labels, geometry)
    threshold = fwhm_threshold(image, labels)
    if not infarct.any() or stats is None or threshold is None or myo_ml <= 0:
        return InfarctComposition(0.0, 0.0, 0.0, 0.0, grey_zone_sd, method)
    mean, sd = stats
    core = (myo & (image > threshold)) | (labels == Label.MVO)
    near = ndimage.distance_transform_edt(~infarct, sampling=geometry.spacing_zyx)
    grey = (
        myo & ~core & (image > mean + grey_zone_sd * sd) & (image <= threshold)
        & (near <= GREY_ZONE_REACH_MM)
    )  # fmt: skip
    core_ml = float(core.sum()) * voxel
    grey_ml = float(grey.sum()) * voxel
    return InfarctComposition(
        core_ml=core_ml,
        core_percent=100.0 * core_ml / myo_ml,
        grey_zone_ml=grey_ml,
        grey_zone_percent=100.0 * grey_ml / myo_ml,
        grey_zone_sd=grey_zone_sd,
        method=method,
    )


def reference_scar(
    image: np.ndarray, labels: np.ndarray, geometry: Geometry, n: float = 5.0
) -> list[ReferenceScar]:
    myo_n = int(myocardium_mask(labels).sum())
    voxel = geometry.voxel_volume_ml
    out = []
    for method, param, mask in (
        ("nSD", n, nsd_scar(image, labels, geometry, n)),
        ("FWHM", None, fwhm_scar(image, labels)),
        ("EWA", None, ewa_weights(image, labels, geometry)),
    ):
        count = float(mask.sum())
        out.append(
            ReferenceScar(
                method=method,
                parameter=param,
                scar_ml=count * voxel,
                scar_percent=100.0 * count / myo_n if myo_n else 0.0,
            )
        )
    return out
