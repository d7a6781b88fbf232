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
from pipeline.research.phantom.style import CLASSIC, Style, draw

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
    normal: np.ndarray  # row x column; slices are stacked along it
    positions: np.ndarray  # (K, 3) ImagePositionPatient, in order along ``normal``
    breathing: np.ndarray  # (K, 3) in-plane heart displacement per slice, mm
    inversion_time: float
    snr: float
    scale: float  # stored value of scar signal
    reverse_instances: bool = False  # InstanceNumber 1 is the last slice along ``normal``
    texture: float = 0.04  # amplitude of the smooth multiplicative tissue texture
    psf_sigma_px: float = 0.0  # extra in-plane blur
    bias_lobes: int = 2
    bias_floor: float = 0.7
    # acquisition artifacts (the wide and holdout styles); the defaults change nothing
    phase_axis: int = 1  # image axis of phase encoding: 0 rows, 1 columns
    ghost_amplitude: float = 0.0  # signed: a replica can add or subtract
    ghost_shift: float = 0.0  # replica offset, fraction of the matrix along phase encoding
    kspace_fraction: float = 1.0  # central fraction of phase-encoding lines acquired
    coils: int = 1
    gfactor: float = 1.0

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
    style: Style = CLASSIC,
    extra: np.random.Generator | None = None,
) -> tuple[Anatomy, Acquisition]:
    """Anatomy and acquisition of one case. ``rng`` draws in the same order for every
    style; what only randomized styles vary comes from ``extra`` (required for them)."""
    if style.randomized and extra is None:
        raise ValueError(f"style {style.name!r} needs the extra random stream")
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

    lo, hi = style.slices
    k = int(n_slices if n_slices is not None else rng.integers(lo, hi + 1))
    length = draw(rng, style.lv_length)
    gap = draw(rng, style.gap)
    spacing = float(np.clip((length + 8.0) / (k - 0.5), *style.slice_spacing_clip))
    thickness = float(np.clip(spacing - gap, *style.thickness_clip))
    gap = float(np.clip(spacing - thickness, *style.gap))
    spacing = thickness + gap

    pixel = draw(rng, style.pixel_mm)
    fov = rng.uniform(*style.fov_mm)
    matrix = int(np.clip(round(fov / pixel / 16) * 16, *style.matrix_clip))
    rows = matrix
    columns = int(
        np.clip(matrix - 16 * rng.integers(0, style.column_steps + 1), *style.matrix_clip)
    )

    base_center = np.array([10.0, -20.0, 40.0]) + rng.normal(0, 10, 3)
    anatomy = sample_anatomy(rng, normal, base_center, scar, mvo, length, territory, style, extra)

    # Slice normal vs heart axis: depths of the slice planes measured along the normal.
    first = -rng.uniform(0.3, 0.9) * spacing
    depths = first + spacing * np.arange(k)
    offset = rng.uniform(-25, 25, 2)  # heart position in the field of view
    centres = base_center + depths[:, None] * normal
    centres = centres - offset[0] * row - offset[1] * col
    # Breath-hold mismatch: each slice sees the heart displaced 0..3 mm, mostly along the
    # in-plane projection of the superior axis.
    si = LPS_SUPERIOR - (LPS_SUPERIOR @ normal) * normal
    si = unit(si)
    other = np.cross(normal, si)
    amount = rng.uniform(0, style.breathing_mm, k)
    mix = rng.normal(0, 0.3, k)
    direction = si[None] + mix[:, None] * other[None]
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    breathing = amount[:, None] * direction
    inversion_time = float(rng.uniform(250, 350))
    snr = draw(rng, style.snr)
    scale = draw(rng, style.scale)

    appearance: dict[str, object] = {}
    if extra is not None and style.randomized:
        if extra.random() < style.flip_normal_p:
            # Mirror the rows: the DICOM normal then points apex -> base, so the stack
            # (sorted along it, as readers do) runs apex first.
            row = -row
            normal = -normal
            centres, breathing = centres[::-1], breathing[::-1]
        appearance = {
            "reverse_instances": bool(extra.random() < style.reverse_instances_p),
            "texture": draw(extra, style.texture),
            "psf_sigma_px": draw(extra, style.psf_sigma_px),
            "bias_lobes": int(extra.integers(style.bias_lobes[0], style.bias_lobes[1] + 1)),
            "bias_floor": float(extra.uniform(0.45, 0.9)),
        }
        if style.artifacts:  # drawn last: the earlier styles' draws stay as they were
            ghost = extra.random() < style.ghost_p
            truncate = extra.random() < style.kspace_p
            amplitude = draw(extra, style.ghost_amplitude) * (1 if extra.random() < 0.7 else -1)
            appearance |= {
                "phase_axis": int(extra.integers(0, 2)),
                "ghost_amplitude": amplitude if ghost else 0.0,
                "ghost_shift": float(extra.uniform(0.12, 0.5)),
                "kspace_fraction": draw(extra, style.kspace_fraction) if truncate else 1.0,
                "coils": int(extra.integers(style.coils[0], style.coils[1] + 1)),
                "gfactor": draw(extra, style.gfactor),
            }
    positions = centres - ((columns - 1) / 2) * pixel * row - ((rows - 1) / 2) * pixel * col

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
        inversion_time=inversion_time,
        snr=snr,
        scale=scale,
        **appearance,  # type: ignore[arg-type]
    )
    return anatomy, acq


def tissue_signal(rng: np.random.Generator, kind: str, style: Style = CLASSIC) -> np.ndarray:
    """Relative signal per tissue (scar ~ 1) for this case's contrast."""
    r = style.signals[kind]
    s = np.zeros(len(Tissue))
    blood = draw(rng, r.blood)  # at the top end nearly as bright as scar
    fat = r.fat
    # Draw order is fixed (classic seeds stay identical); a range of zero width is a
    # constant and draws nothing.
    values: dict[Tissue, float | tuple[float, float]] = {
        Tissue.AIR: 0.0,
        Tissue.SUBCUTANEOUS_FAT: fat,
        Tissue.MUSCLE: r.muscle,
        Tissue.LUNG: r.lung,
        Tissue.LIVER: r.liver,
        Tissue.SPINE: r.spine,
        Tissue.AORTA: blood * 0.9,
        Tissue.EPICARDIAL_FAT: fat,
        Tissue.RV_WALL: r.rv_wall,
        Tissue.RV_BLOOD: blood,
        Tissue.ATRIAL_BLOOD: blood,
        Tissue.LV_BLOOD: blood,
        Tissue.PAPILLARY: r.papillary,
        Tissue.MYOCARDIUM: r.myocardium,
        Tissue.SCAR: r.scar,
        Tissue.MVO: r.mvo,
    }
    for t, value in values.items():
        if isinstance(value, tuple):
            value = value[0] if value[0] == value[1] else draw(rng, value)
        s[t] = value
    if style.randomized:
        # Papillary muscles are myocardium: never brighter than the pool, close to the
        # wall's own signal; MVO always darker than the scar around it.
        s[Tissue.PAPILLARY] = min(s[Tissue.PAPILLARY], blood)
        s[Tissue.MVO] = min(s[Tissue.MVO], s[Tissue.SCAR] - 0.4)
    return s


def render(
    anatomy: Anatomy,
    acq: Acquisition,
    kind: str,
    rng: np.random.Generator,
    progress: bool = False,
    style: Style = CLASSIC,
) -> tuple[np.ndarray, np.ndarray]:
    """Return (signal float32 (K, rows, cols) before noise, labels uint8 same shape).

    Labels are the anatomy sampled at each output voxel centre; the signal averages
    SUPERSAMPLE^3 samples per voxel, so borders carry partial volume (with
    ``style.supersample_window_mm``: only in that window around the heart, which keeps
    512-pixel matrices affordable).
    """
    signal_of = tissue_signal(rng, kind, style)
    if anatomy.infarct is not None and anatomy.infarct.border > 0:
        f = anatomy.infarct.border_signal
        signal_of[Tissue.BORDER_ZONE] = (1 - f) * signal_of[Tissue.MYOCARDIUM] + f * signal_of[
            Tissue.SCAR
        ]
    K = acq.n_slices
    out = np.empty((K, acq.rows, acq.columns), dtype=np.float32)
    labels = np.empty((K, acq.rows, acq.columns), dtype=np.uint8)
    texture = _texture(rng, (K, acq.rows, acq.columns), acq.texture)
    steps = range(K)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc="rendering slices", unit="slice", leave=False)
    everything = (slice(0, acq.rows), slice(0, acq.columns))
    for k in steps:
        if style.supersample_window_mm is None:
            signal, labels[k] = _sample(anatomy, acq, k, signal_of, everything, SUPERSAMPLE)
        else:
            signal, labels[k] = _sample(anatomy, acq, k, signal_of, everything, 1)
            window = _heart_window(anatomy, acq, k, style.supersample_window_mm)
            signal[window] = _sample(anatomy, acq, k, signal_of, window, SUPERSAMPLE)[0]
        # A smooth multiplicative field keeps tissue regions from being perfectly flat.
        out[k] = signal * texture[k]
    if acq.psf_sigma_px > 0:
        out = ndimage.gaussian_filter(out, sigma=(0, acq.psf_sigma_px, acq.psf_sigma_px))
    out *= _bias_field(rng, acq, style)
    return _acquisition_artifacts(out, acq), labels


def _acquisition_artifacts(signal: np.ndarray, acq: Acquisition) -> np.ndarray:
    """Motion ghosts and reduced phase resolution, both along the phase-encoding axis.

    Periodic motion during the acquisition modulates k-space line by line: the image gains
    faint replicas shifted along phase encoding (wrapping around, as aliasing does).
    Acquiring only the central fraction of the phase-encoding lines (reduced phase
    resolution, zero-filled) blurs along that axis and rings at sharp edges (Gibbs).
    """
    axis = 1 + acq.phase_axis  # (K, rows, columns)
    if acq.ghost_amplitude:
        n = signal.shape[axis]
        shift = max(1, round(acq.ghost_shift * n))
        replicas = np.roll(signal, shift, axis) + np.roll(signal, -shift, axis)
        second = np.roll(signal, 2 * shift, axis) + np.roll(signal, -2 * shift, axis)
        signal = signal + acq.ghost_amplitude * (replicas + 0.5 * second)
    if acq.kspace_fraction < 1.0:
        n = signal.shape[axis]
        k = np.fft.fftfreq(n) * n  # line index, 0 at the centre of k-space
        keep = np.abs(k) <= acq.kspace_fraction * n / 2
        shape = [1, 1, 1]
        shape[axis] = n
        spectrum = np.fft.fft(signal, axis=axis) * keep.reshape(shape)
        signal = np.fft.ifft(spectrum, axis=axis).real
    return signal.astype(np.float32)


def _sample(
    anatomy: Anatomy,
    acq: Acquisition,
    k: int,
    signal_of: np.ndarray,
    window: tuple[slice, slice],
    n: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean signal of n^3 samples per voxel and the label at each voxel centre."""
    sub = (np.arange(n) - (n - 1) / 2) / n  # offsets in voxel units, centre sample included
    rows = np.arange(acq.rows)[window[0]]
    cols = np.arange(acq.columns)[window[1]]
    jj = (cols[:, None] + sub[None]).ravel()  # (cols * n)
    ii = (rows[:, None] + sub[None]).ravel()
    acc = np.zeros((len(rows), len(cols)), dtype=np.float64)
    labels = np.zeros((len(rows), len(cols)), dtype=np.uint8)
    for dz in sub:
        origin = acq.positions[k] + dz * acq.thickness * acq.normal - acq.breathing[k]
        points = (
            origin
            + (ii[:, None, None] * acq.pixel_spacing) * acq.column_direction
            + (jj[None, :, None] * acq.pixel_spacing) * acq.row_direction
        )
        tissue = anatomy.tissues(points)
        if dz == 0:
            labels = TISSUE_TO_LABEL[tissue[n // 2 :: n, n // 2 :: n]]
        sig = signal_of[tissue]
        acc += sig.reshape(len(rows), n, len(cols), n).mean(axis=(1, 3))
    return acc / n, labels


def _heart_window(
    anatomy: Anatomy, acq: Acquisition, k: int, half_mm: float
) -> tuple[slice, slice]:
    """Pixel window of +-half_mm around where the LV axis crosses slice k."""
    centre = anatomy.base_center + 0.4 * anatomy.length * anatomy.axis + acq.breathing[k]
    d = centre - acq.positions[k]
    i = d @ acq.column_direction / acq.pixel_spacing
    j = d @ acq.row_direction / acq.pixel_spacing
    h = half_mm / acq.pixel_spacing
    return (
        slice(int(np.clip(i - h, 0, acq.rows)), int(np.clip(i + h + 1, 0, acq.rows))),
        slice(int(np.clip(j - h, 0, acq.columns)), int(np.clip(j + h + 1, 0, acq.columns))),
    )


def _texture(rng: np.random.Generator, shape: tuple[int, int, int], amplitude: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.normal(0, 1, shape), sigma=(0, 4, 4))
    field /= max(float(field.std()), 1e-9)
    return (1 + amplitude * field).astype(np.float32)


def _bias_field(rng: np.random.Generator, acq: Acquisition, style: Style) -> np.ndarray:
    """Smooth receive-coil sensitivity: surface-coil lobes plus a floor (classic: two
    lobes, ~0.7..1.3), normalised to 1 at the image centre."""
    y, x = np.mgrid[0 : acq.rows, 0 : acq.columns].astype(float)
    y /= acq.rows
    x /= acq.columns
    field = np.full_like(x, acq.bias_floor)
    for _ in range(acq.bias_lobes):
        cy, cx = rng.uniform(-0.1, 1.1, 2)
        width = draw(rng, style.bias_width)
        amplitude = draw(rng, style.bias_amplitude)
        field += amplitude * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * width**2))
    centre = field[acq.rows // 2, acq.columns // 2]
    return (field / centre).astype(np.float32)[None]


def add_noise(
    rng: np.random.Generator, signal: np.ndarray, acq: Acquisition, kind: str
) -> np.ndarray:
    """Scale to scanner units and add noise: Rician for magnitude, Gaussian for PSIR.

    With several receive channels the magnitude is their root-sum-of-squares (noncentral
    chi: a brighter noise floor); a g-factor above 1 amplifies the noise towards the
    image centre, as parallel imaging does far from the coils.
    """
    if acq.coils > 1 or acq.gfactor != 1.0:
        return _add_multichannel_noise(rng, signal, acq, kind)
    sigma = 1.0 / acq.snr
    n1 = rng.normal(0, sigma, signal.shape)
    if kind == "magnitude":
        n2 = rng.normal(0, sigma, signal.shape)
        noisy = np.sqrt((signal + n1) ** 2 + n2**2)
    else:
        noisy = signal + n1
    return (noisy * acq.scale).astype(np.float32)


def _add_multichannel_noise(
    rng: np.random.Generator, signal: np.ndarray, acq: Acquisition, kind: str
) -> np.ndarray:
    y, x = np.mgrid[0 : acq.rows, 0 : acq.columns].astype(float)
    r2 = ((y / acq.rows - 0.5) ** 2 + (x / acq.columns - 0.5) ** 2) / (2 * 0.3**2)
    sigma = ((1 + (acq.gfactor - 1) * np.exp(-r2)) / acq.snr)[None]
    if kind != "magnitude":  # phase-sensitive reconstruction: real-valued, Gaussian
        noisy = signal + sigma * rng.standard_normal(signal.shape)
    else:
        # each channel sees signal / sqrt(L); the noise per channel keeps sigma, so the
        # combined SNR of tissue stays acq.snr while the noise floor rises with L
        share = signal / np.sqrt(acq.coils)
        total = np.zeros(signal.shape, dtype=np.float64)
        for _ in range(acq.coils):
            total += (share + sigma * rng.standard_normal(signal.shape)) ** 2
            total += (sigma * rng.standard_normal(signal.shape)) ** 2
        noisy = np.sqrt(total)
    return (noisy * acq.scale).astype(np.float32)


def tissue_at_centres(anatomy: Anatomy, acq: Acquisition, tissue: Tissue) -> np.ndarray:
    """Where ``tissue`` lies at the voxel centres: a truth mask for what has no label."""
    out = np.zeros((acq.n_slices, acq.rows, acq.columns), dtype=bool)
    ii = np.arange(acq.rows, dtype=float)
    jj = np.arange(acq.columns, dtype=float)
    for k in range(acq.n_slices):
        points = (
            acq.positions[k]
            - acq.breathing[k]
            + (ii[:, None, None] * acq.pixel_spacing) * acq.column_direction
            + (jj[None, :, None] * acq.pixel_spacing) * acq.row_direction
        )
        out[k] = anatomy.tissues(points) == tissue
    return out
