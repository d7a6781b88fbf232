"""Phantom acquisition and image formation: geometry of the short-axis stack, tissue
contrast of an LGE inversion-recovery image (magnitude or PSIR), partial volume,
coil bias field and noise."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from pipeline.research.phantom.anatomy import (
    LPS_LEFT,
    LPS_POSTERIOR,
    LPS_SUPERIOR,
    TISSUE_TO_LABEL,
    Anatomy,
    Tissue,
    rotate,
    sample_anatomy,
    unit,
)

SUPERSAMPLE = 3  # in-plane and through-plane samples per output voxel (partial volume)


@dataclass(frozen=True)
class Acquisition:
    """Short-axis stack geometry and scanner-side parameters of one phantom."""

    rows: int
    columns: int
    pixel_spacing: float
    thickness: float
    gap: float
    row_direction: np.ndarray
    column_direction: np.ndarray
    normal: np.ndarray  # row x column; slices are stacked base -> apex along it
    positions: np.ndarray  # (K, 3) ImagePositionPatient
    breathing: np.ndarray  # (K, 3) in-plane heart displacement per slice, mm
    inversion_time: float
    snr: float
    scale: float  # stored value of scar signal

    @property
    def n_slices(self) -> int:
        return len(self.positions)

    @property
    def spacing(self) -> float:
        return self.thickness + self.gap


def sample_case(
    rng: np.random.Generator,
    n_slices: int | None,
    scar: bool,
    mvo: bool,
    territory: str | None = None,
) -> tuple[Anatomy, Acquisition]:
    # The LV long axis points left, anterior and inferior; the short-axis plane is
    # perpendicular to it, so its orientation is oblique to every patient axis.
    normal = unit(
        0.62 * LPS_LEFT - 0.5 * LPS_POSTERIOR - 0.6 * LPS_SUPERIOR + rng.normal(0, 0.08, 3)
    )
    # Image rows run roughly toward the patient's left, columns toward posterior-inferior,
    # giving the familiar display: RV on the left, anterior wall up; then a seed rotation.
    row = unit(LPS_LEFT - (LPS_LEFT @ normal) * normal)
    row = unit(rotate(row, normal, np.deg2rad(rng.uniform(-30, 30))))
    col = np.cross(normal, row)
    if col @ (LPS_POSTERIOR - LPS_SUPERIOR) < 0:  # keep anterior up: flip and keep handedness
        col = -col
    normal = np.cross(row, col)

    k = int(n_slices if n_slices is not None else rng.integers(8, 15))
    length = rng.uniform(72.0, 92.0)
    gap = rng.uniform(0.0, 2.0)
    spacing = float(np.clip((length + 8.0) / (k - 0.5), 6.0, 12.0))
    thickness = float(np.clip(spacing - gap, 6.0, 10.0))
    gap = float(np.clip(spacing - thickness, 0.0, 2.0))
    spacing = thickness + gap

    pixel = float(rng.uniform(1.2, 2.0))
    fov = rng.uniform(300.0, 380.0)
    matrix = int(np.clip(round(fov / pixel / 16) * 16, 160, 256))
    rows = matrix
    columns = int(np.clip(matrix - 16 * rng.integers(0, 3), 160, 256))

    base_center = np.array([10.0, -20.0, 40.0]) + rng.normal(0, 10, 3)
    anatomy = sample_anatomy(rng, normal, base_center, scar, mvo, length, territory)

    # Slice normal vs heart axis: depths of the slice planes measured along the normal.
    first = -rng.uniform(0.3, 0.9) * spacing
    depths = first + spacing * np.arange(k)
    offset = rng.uniform(-25, 25, 2)  # heart position in the field of view
    centres = base_center + depths[:, None] * normal
    centres = centres - offset[0] * row - offset[1] * col
    positions = centres - ((columns - 1) / 2) * pixel * row - ((rows - 1) / 2) * pixel * col
    # Breath-hold mismatch: each slice sees the heart displaced 0..3 mm, mostly along the
    # in-plane projection of the superior axis.
    si = LPS_SUPERIOR - (LPS_SUPERIOR @ normal) * normal
    si = unit(si)
    other = np.cross(normal, si)
    amount = rng.uniform(0, 3.0, k)
    mix = rng.normal(0, 0.3, k)
    direction = si[None] + mix[:, None] * other[None]
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    breathing = amount[:, None] * direction

    acq = Acquisition(
        rows=rows,
        columns=columns,
        pixel_spacing=pixel,
        thickness=thickness,
        gap=gap,
        row_direction=row,
        column_direction=col,
        normal=normal,
        positions=positions,
        breathing=breathing,
        inversion_time=float(rng.uniform(250, 350)),
        snr=float(rng.uniform(12, 35)),
        scale=float(rng.uniform(1100, 1600)),
    )
    return anatomy, acq


def tissue_signal(rng: np.random.Generator, kind: str) -> np.ndarray:
    """Relative signal per tissue (scar ~ 1) for this case's contrast."""
    s = np.zeros(len(Tissue))
    blood = rng.uniform(0.55, 0.97)  # at the top end nearly as bright as scar
    if kind == "magnitude":
        values = {
            Tissue.AIR: 0.0,
            Tissue.SUBCUTANEOUS_FAT: rng.uniform(0.45, 0.65),
            Tissue.MUSCLE: rng.uniform(0.12, 0.25),
            Tissue.LUNG: 0.03,
            Tissue.LIVER: rng.uniform(0.2, 0.35),
            Tissue.SPINE: 0.35,
            Tissue.AORTA: blood * 0.9,
            Tissue.EPICARDIAL_FAT: rng.uniform(0.45, 0.65),
            Tissue.RV_WALL: 0.06,
            Tissue.RV_BLOOD: blood,
            Tissue.ATRIAL_BLOOD: blood,
            Tissue.LV_BLOOD: blood,
            Tissue.PAPILLARY: rng.uniform(0.04, 0.12),
            Tissue.MYOCARDIUM: rng.uniform(0.02, 0.08),
            Tissue.SCAR: rng.uniform(0.9, 1.0),
            Tissue.MVO: rng.uniform(0.05, 0.2),
        }
    else:  # PSIR: signed, nulled myocardium near zero, long-T1 tissue negative
        values = {
            Tissue.AIR: 0.0,
            Tissue.SUBCUTANEOUS_FAT: rng.uniform(0.35, 0.5),
            Tissue.MUSCLE: rng.uniform(0.03, 0.1),
            Tissue.LUNG: -0.05,
            Tissue.LIVER: rng.uniform(0.05, 0.15),
            Tissue.SPINE: 0.3,
            Tissue.AORTA: blood * 0.9,
            Tissue.EPICARDIAL_FAT: rng.uniform(0.35, 0.5),
            Tissue.RV_WALL: 0.0,
            Tissue.RV_BLOOD: blood,
            Tissue.ATRIAL_BLOOD: blood,
            Tissue.LV_BLOOD: blood,
            Tissue.PAPILLARY: rng.uniform(0.0, 0.05),
            Tissue.MYOCARDIUM: rng.uniform(-0.02, 0.02),
            Tissue.SCAR: rng.uniform(0.9, 1.0),
            Tissue.MVO: rng.uniform(-0.25, -0.1),
        }
    for t, value in values.items():
        s[t] = value
    return s


def render(
    anatomy: Anatomy,
    acq: Acquisition,
    kind: str,
    rng: np.random.Generator,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Return (signal float32 (K, rows, cols) before noise, labels uint8 same shape).

    Labels are the anatomy sampled at each output voxel centre; the signal averages
    SUPERSAMPLE^3 samples per voxel, so borders carry partial volume.
    """
    signal_of = tissue_signal(rng, kind)
    n = SUPERSAMPLE
    sub = (np.arange(n) - (n - 1) / 2) / n  # offsets in voxel units, centre sample included
    jj = (np.arange(acq.columns)[:, None] + sub[None]).ravel()  # (cols * n)
    ii = (np.arange(acq.rows)[:, None] + sub[None]).ravel()
    K = acq.n_slices
    out = np.empty((K, acq.rows, acq.columns), dtype=np.float32)
    labels = np.empty((K, acq.rows, acq.columns), dtype=np.uint8)
    texture = _texture(rng, (K, acq.rows, acq.columns))
    steps = range(K)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc="rendering slices", unit="slice", leave=False)
    for k in steps:
        acc = np.zeros((acq.rows, acq.columns), dtype=np.float64)
        for dz in sub:
            origin = acq.positions[k] + dz * acq.thickness * acq.normal - acq.breathing[k]
            points = (
                origin
                + (ii[:, None, None] * acq.pixel_spacing) * acq.column_direction
                + (jj[None, :, None] * acq.pixel_spacing) * acq.row_direction
            )
            tissue = anatomy.tissues(points)
            if dz == 0:
                labels[k] = TISSUE_TO_LABEL[tissue[n // 2 :: n, n // 2 :: n]]
            sig = signal_of[tissue]
            acc += sig.reshape(acq.rows, n, acq.columns, n).mean(axis=(1, 3))
        # A smooth multiplicative field keeps tissue regions from being perfectly flat.
        out[k] = (acc / n) * texture[k]
    out *= _bias_field(rng, acq)
    return out, labels


def _texture(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.normal(0, 1, shape), sigma=(0, 4, 4))
    field /= max(float(field.std()), 1e-9)
    return (1 + 0.04 * field).astype(np.float32)


def _bias_field(rng: np.random.Generator, acq: Acquisition) -> np.ndarray:
    """Smooth receive-coil sensitivity: two surface-coil lobes plus a floor, ~0.7..1.3."""
    y, x = np.mgrid[0 : acq.rows, 0 : acq.columns].astype(float)
    y /= acq.rows
    x /= acq.columns
    field = np.full_like(x, 0.7)
    for _ in range(2):
        cy, cx = rng.uniform(-0.1, 1.1, 2)
        width = rng.uniform(0.35, 0.6)
        field += rng.uniform(0.2, 0.45) * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * width**2))
    centre = field[acq.rows // 2, acq.columns // 2]
    return (field / centre).astype(np.float32)[None]


def add_noise(
    rng: np.random.Generator, signal: np.ndarray, acq: Acquisition, kind: str
) -> np.ndarray:
    """Scale to scanner units and add noise: Rician for magnitude, Gaussian for PSIR."""
    sigma = 1.0 / acq.snr
    n1 = rng.normal(0, sigma, signal.shape)
    if kind == "magnitude":
        n2 = rng.normal(0, sigma, signal.shape)
        noisy = np.sqrt((signal + n1) ** 2 + n2**2)
    else:
        noisy = signal + n1
    return (noisy * acq.scale).astype(np.float32)
