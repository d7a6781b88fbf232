"""Phantom styles: the ranges the generator draws anatomy, appearance and geometry from.

``classic`` is the generator the project started with (its seeds give the same images as
ever). ``randomized`` is domain randomization for training: every range is wide, so that a
model cannot learn one scanner's look, one heart shape or one geometry convention.
``wide`` widens it further (training of the later warm restarts): dilated thin-walled and
thicker ventricles, lower SNR, darker (grey-blood) pools, and acquisition artifacts that
the earlier styles never draw: motion ghosts along the phase-encoding direction, reduced
phase resolution (k-space truncation: blur and Gibbs ringing), multi-coil magnitude noise
and parallel-imaging noise amplification (g-factor).
``varied`` is the wide style with hearts of irregular shape (an evaluation set of its own,
and the data of a sixth training run that was tried, README): the earlier styles draw an
LV that is an ellipse in-plane with a wall whose thickness varies as one cosine; ``varied``
adds random higher harmonics to the epicardial contour and to the wall thickness, twisting
from base to apex, and thins the wall of a chronic infarct, so that a model learns the
myocardium as a band of any shape rather than one family of rings.
``holdout`` is for evaluation only: the wide ranges with two axes per case pushed
*outside* what training ever saw, so that the evaluation measures generalization, not
memory of the training ranges.

Ranges are ``(low, high)`` for ``rng.uniform`` (integers: inclusive).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

Range = tuple[float, float]


@dataclass(frozen=True)
class Signals:
    """Relative tissue signal ranges (scar ~ 1) for one contrast kind."""

    blood: Range
    myocardium: Range  # ~0 when the inversion time nulls it; higher when mistimed
    scar: Range
    mvo: Range
    fat: Range
    muscle: Range
    liver: Range
    papillary: Range
    rv_wall: Range
    lung: Range
    spine: Range


CLASSIC_SIGNALS = {
    "magnitude": Signals(
        blood=(0.55, 0.97), myocardium=(0.02, 0.08), scar=(0.9, 1.0), mvo=(0.05, 0.2),
        fat=(0.45, 0.65), muscle=(0.12, 0.25), liver=(0.2, 0.35), papillary=(0.04, 0.12),
        rv_wall=(0.06, 0.06), lung=(0.03, 0.03), spine=(0.35, 0.35),
    ),
    "psir": Signals(
        blood=(0.55, 0.97), myocardium=(-0.02, 0.02), scar=(0.9, 1.0), mvo=(-0.25, -0.1),
        fat=(0.35, 0.5), muscle=(0.03, 0.1), liver=(0.05, 0.15), papillary=(0.0, 0.05),
        rv_wall=(0.0, 0.0), lung=(-0.05, -0.05), spine=(0.3, 0.3),
    ),
}  # fmt: skip

RANDOMIZED_SIGNALS = {
    "magnitude": Signals(
        blood=(0.3, 1.0), myocardium=(0.0, 0.28), scar=(0.75, 1.0), mvo=(0.0, 0.3),
        fat=(0.25, 0.9), muscle=(0.05, 0.4), liver=(0.1, 0.5), papillary=(0.0, 0.3),
        rv_wall=(0.0, 0.25), lung=(0.0, 0.08), spine=(0.15, 0.5),
    ),
    "psir": Signals(
        blood=(0.3, 1.0), myocardium=(-0.08, 0.22), scar=(0.75, 1.0), mvo=(-0.4, 0.05),
        fat=(0.2, 0.8), muscle=(-0.05, 0.3), liver=(0.0, 0.4), papillary=(-0.05, 0.25),
        rv_wall=(-0.05, 0.2), lung=(-0.1, 0.02), spine=(0.1, 0.45),
    ),
}  # fmt: skip


@dataclass(frozen=True)
class Style:
    name: str
    # geometry
    slices: tuple[int, int] = (8, 14)
    slice_spacing_clip: Range = (6.0, 12.0)
    thickness_clip: Range = (6.0, 10.0)
    gap: Range = (0.0, 2.0)
    lv_length: Range = (72.0, 92.0)
    pixel_mm: Range = (1.2, 2.0)
    fov_mm: Range = (300.0, 380.0)
    matrix_clip: tuple[int, int] = (160, 256)
    column_steps: int = 2  # columns = rows - 16 * integers(0, column_steps)
    breathing_mm: float = 3.0
    flip_normal_p: float = 0.0  # DICOM normal apex -> base instead of base -> apex
    reverse_instances_p: float = 0.0  # InstanceNumber counts apex -> base
    # appearance
    snr: Range = (12.0, 35.0)
    scale: Range = (1100.0, 1600.0)
    signals: dict[str, Signals] = field(default_factory=lambda: CLASSIC_SIGNALS)
    texture: Range = (0.04, 0.04)
    bias_lobes: tuple[int, int] = (2, 2)
    bias_amplitude: Range = (0.2, 0.45)
    bias_width: Range = (0.35, 0.6)
    psf_sigma_px: Range = (0.0, 0.0)  # extra in-plane blur (lower effective resolution)
    # acquisition artifacts (drawn only when ``artifacts``; earlier styles stay bit-identical)
    ghost_p: float = 0.0  # probability of motion ghosts
    ghost_amplitude: Range = (0.0, 0.0)  # replica amplitude, fraction of the image
    kspace_p: float = 0.0  # probability of reduced phase resolution
    kspace_fraction: Range = (1.0, 1.0)  # fraction of phase-encoding k-space acquired
    coils: tuple[int, int] = (1, 1)  # receive channels combined by root-sum-of-squares
    gfactor: Range = (1.0, 1.0)  # peak parallel-imaging noise amplification
    # anatomy
    tilt_deg: float = 6.0
    septal_rotation_deg: float = 20.0
    radius_mm: Range = (23.0, 30.0)
    wall_mm: Range = (7.0, 10.0)
    wall_clip_mm: Range = (6.0, 12.0)
    wall_amp_mm: Range = (0.5, 2.0)
    exponent: Range = (2.0, 2.6)
    ecc: Range = (0.0, 0.08)
    apex_wall_mm: Range = (5.0, 8.0)
    rv_depth_mm: Range = (14.0, 24.0)
    rv_length: Range = (0.75, 0.88)
    papillary_mm: Range = (3.0, 5.0)
    papillary_jitter_deg: float = 0.0
    fat_mm: Range = (0.0, 4.0)
    fat_ring_mm: Range = (0.0, 0.0)
    body_lr_mm: Range = (165.0, 195.0)
    body_ap_mm: Range = (110.0, 135.0)
    body_fat_mm: Range = (6.0, 18.0)
    # irregular shape (`anatomy.Contour`, drawn only when ``irregular``; earlier styles
    # stay bit-identical): peak amplitude of the epicardial-radius and wall-thickness
    # harmonics (mm), and the fraction of the wall a chronic infarct loses at its core
    contour_harmonic_mm: Range = (0.0, 0.0)
    wall_harmonic_mm: Range = (0.0, 0.0)
    infarct_thinning: Range = (0.0, 0.0)
    # a window around the heart is rendered with partial volume, the rest at one sample
    # per voxel; None: everything supersampled (classic, bit-identical to earlier versions)
    supersample_window_mm: float | None = None

    @property
    def randomized(self) -> bool:
        return self.name != "classic"

    @property
    def artifacts(self) -> bool:
        return (
            self.ghost_p > 0
            or self.kspace_p > 0
            or self.coils != (1, 1)
            or self.gfactor != (1.0, 1.0)
        )

    @property
    def irregular(self) -> bool:
        return (
            self.contour_harmonic_mm[1] > 0
            or self.wall_harmonic_mm[1] > 0
            or self.infarct_thinning[1] > 0
        )


CLASSIC = Style(name="classic")

RANDOMIZED = Style(
    name="randomized",
    slices=(5, 20),
    slice_spacing_clip=(5.0, 18.0),
    thickness_clip=(5.0, 10.0),
    gap=(0.0, 4.0),
    lv_length=(62.0, 100.0),
    pixel_mm=(0.9, 2.5),
    fov_mm=(260.0, 420.0),
    matrix_clip=(128, 512),
    column_steps=4,
    breathing_mm=5.0,
    flip_normal_p=0.5,
    reverse_instances_p=0.5,
    snr=(7.0, 60.0),
    scale=(250.0, 1500.0),
    signals=RANDOMIZED_SIGNALS,
    texture=(0.02, 0.09),
    bias_lobes=(1, 4),
    bias_amplitude=(0.05, 0.75),
    bias_width=(0.2, 0.8),
    psf_sigma_px=(0.0, 0.7),
    tilt_deg=15.0,
    septal_rotation_deg=35.0,
    radius_mm=(18.0, 35.0),
    wall_mm=(5.0, 13.0),
    wall_clip_mm=(3.5, 16.0),
    wall_amp_mm=(0.0, 4.0),
    exponent=(1.6, 3.5),
    ecc=(0.0, 0.18),
    apex_wall_mm=(3.0, 9.0),
    rv_depth_mm=(6.0, 32.0),
    rv_length=(0.6, 0.95),
    papillary_mm=(2.0, 7.0),
    papillary_jitter_deg=25.0,
    fat_mm=(0.0, 8.0),
    fat_ring_mm=(0.0, 3.0),
    body_lr_mm=(140.0, 210.0),
    body_ap_mm=(95.0, 145.0),
    body_fat_mm=(3.0, 25.0),
    supersample_window_mm=95.0,
)

WIDE_SIGNALS = {
    "magnitude": replace(RANDOMIZED_SIGNALS["magnitude"], blood=(0.2, 1.0), myocardium=(0.0, 0.3)),
    "psir": replace(RANDOMIZED_SIGNALS["psir"], blood=(0.2, 1.0), myocardium=(-0.08, 0.24)),
}

WIDE = replace(
    RANDOMIZED,
    name="wide",
    snr=(5.0, 60.0),
    signals=WIDE_SIGNALS,
    radius_mm=(18.0, 38.0),
    wall_mm=(4.0, 14.0),
    wall_clip_mm=(3.0, 17.0),
    ghost_p=0.4,
    ghost_amplitude=(0.02, 0.15),
    kspace_p=0.4,
    kspace_fraction=(0.55, 1.0),
    coils=(1, 4),
    gfactor=(1.0, 2.0),
)

VARIED = replace(
    WIDE,
    name="varied",
    contour_harmonic_mm=(0.0, 3.0),
    wall_harmonic_mm=(0.0, 2.5),
    infarct_thinning=(0.2, 0.55),
)

# Axes the holdout style pushes beyond the wide (training) ranges, two per case.
_BEYOND: dict[str, dict[str, object]] = {
    "low_snr": {"snr": (3.5, 5.0)},
    "coarse_pixels": {"pixel_mm": (2.5, 2.9), "matrix_clip": (96, 512)},
    "strong_bias": {"bias_amplitude": (0.8, 1.1), "bias_width": (0.12, 0.2)},
    "rough_texture": {"texture": (0.09, 0.13)},
    "blurred": {"psf_sigma_px": (0.7, 1.0)},
    "dilated_lv": {"radius_mm": (38.0, 44.0), "wall_mm": (3.0, 4.0), "wall_clip_mm": (2.5, 17.0)},
    "hypertrophic": {"wall_mm": (14.0, 18.0), "wall_clip_mm": (3.0, 20.0)},
    "myocardium_not_nulled": {
        "signals": {
            kind: replace(s, myocardium=(0.3, 0.4) if kind == "magnitude" else (0.24, 0.32))
            for kind, s in WIDE_SIGNALS.items()
        }
    },
    "dark_blood": {
        "signals": {kind: replace(s, blood=(0.1, 0.2)) for kind, s in WIDE_SIGNALS.items()}
    },
    "strong_ghosts": {"ghost_p": 1.0, "ghost_amplitude": (0.15, 0.25)},
    "low_phase_resolution": {"kspace_p": 1.0, "kspace_fraction": (0.4, 0.55)},
    "high_gfactor": {"gfactor": (2.0, 3.0)},
}
HOLDOUT_AXES = tuple(_BEYOND)

HOLDOUT = replace(WIDE, name="holdout")

STYLES = {s.name: s for s in (CLASSIC, RANDOMIZED, WIDE, VARIED, HOLDOUT)}


def holdout_variant(seed: int) -> tuple[Style, tuple[str, str]]:
    """The holdout style for one seed: two axes (drawn by the seed) beyond training."""
    rng = np.random.default_rng([seed, 6])
    a, b = (str(x) for x in rng.choice(HOLDOUT_AXES, size=2, replace=False))
    changes: dict[str, object] = {}
    for axis in (a, b):
        for key, value in _BEYOND[axis].items():
            if key == "signals" and "signals" in changes:  # two signal axes: merge them
                merged = {}
                for kind, s in changes["signals"].items():  # type: ignore[attr-defined]
                    new = value[kind]  # type: ignore[index]
                    merged[kind] = replace(
                        s,
                        **{
                            f: getattr(new, f)
                            for f in ("blood", "myocardium")
                            if getattr(new, f) != getattr(WIDE_SIGNALS[kind], f)
                        },
                    )
                value = merged
            changes[key] = value
    return replace(HOLDOUT, **changes), (a, b)  # type: ignore[arg-type]


def style_for(name: str, seed: int) -> Style:
    if name not in STYLES:
        raise ValueError(f"style must be one of {tuple(STYLES)}, got {name!r}")
    return holdout_variant(seed)[0] if name == "holdout" else STYLES[name]


def draw(rng: np.random.Generator, r: Range) -> float:
    return float(rng.uniform(r[0], r[1]))
