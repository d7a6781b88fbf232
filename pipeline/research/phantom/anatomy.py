"""Phantom anatomy: a parametric thorax with an LV shell, RV crescent and an infarct.

All shapes are defined in continuous patient space, so any sampling grid (the 3x
super-resolution used for rendering, or the output pixel centres used for the truth)
sees the same anatomy. Heart coordinates: ``w`` mm along the LV long axis from the base
plane toward the apex; in-plane angle ``theta`` measured from the septal direction
(midway between the RV insertion points), positive toward the anterior wall — the same
convention `pipeline.quantify` uses for the AHA segments.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import IntEnum

import numpy as np

from pipeline.labels import Label
from pipeline.research.phantom.style import CLASSIC, Style, draw

LPS_LEFT = np.array([1.0, 0.0, 0.0])
LPS_POSTERIOR = np.array([0.0, 1.0, 0.0])
LPS_SUPERIOR = np.array([0.0, 0.0, 1.0])


class Tissue(IntEnum):
    AIR = 0
    SUBCUTANEOUS_FAT = 1
    MUSCLE = 2
    LUNG = 3
    LIVER = 4
    SPINE = 5
    AORTA = 6
    EPICARDIAL_FAT = 7
    RV_WALL = 8
    RV_BLOOD = 9
    ATRIAL_BLOOD = 10
    LV_BLOOD = 11
    PAPILLARY = 12
    MYOCARDIUM = 13
    SCAR = 14
    MVO = 15
    BORDER_ZONE = 16  # peri-infarct grey zone: viable, partly enhanced


TISSUE_TO_LABEL = np.zeros(len(Tissue), dtype=np.uint8)
TISSUE_TO_LABEL[Tissue.LV_BLOOD] = Label.LV_BLOOD
TISSUE_TO_LABEL[Tissue.PAPILLARY] = Label.LV_BLOOD  # papillary muscles belong to the pool
TISSUE_TO_LABEL[Tissue.MYOCARDIUM] = Label.MYOCARDIUM
TISSUE_TO_LABEL[Tissue.SCAR] = Label.SCAR
TISSUE_TO_LABEL[Tissue.MVO] = Label.MVO
# The grey zone is not a segmentation label: it is measured from intensities (truth.json).
TISSUE_TO_LABEL[Tissue.BORDER_ZONE] = Label.MYOCARDIUM
TISSUE_TO_LABEL[Tissue.RV_BLOOD] = Label.RV_BLOOD

TERRITORIES = ("LAD", "LCx", "RCA")


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def rotate(v: np.ndarray, axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues rotation of ``v`` about unit ``axis`` by ``angle`` radians."""
    return (
        v * np.cos(angle)
        + np.cross(axis, v) * np.sin(angle)
        + axis * (axis @ v) * (1 - np.cos(angle))
    )


@dataclass(frozen=True)
class Infarct:
    territory: str
    center_deg: float  # angular centre, heart convention
    half_width_deg: float
    start: float  # longitudinal extent as fractions of LV length (0 base, 1 apex)
    end: float
    transmurality: float  # peak fraction of the wall, 0.1..1
    ripple: tuple[float, float, float, float]  # irregular border: amplitudes and phases
    mvo: bool
    mvo_rim: float  # thin enhanced subendocardial rim kept around the MVO core
    # Peri-infarct border zone (0: none): a shell this fraction of the wall beyond the
    # scar, over an infarct widened by ``border_widen`` in angle and length, whose signal
    # is ``border_signal`` of the way from healthy myocardium to scar.
    border: float = 0.0
    border_widen: float = 1.0
    border_signal: float = 0.0


Harmonic = tuple[int, float, float]  # (order, amplitude mm, phase rad)


@dataclass(frozen=True)
class Contour:
    """An LV shape beyond the ellipse with a one-cosine wall (the ``varied`` style): random
    harmonics of the epicardial radius and of the wall thickness, whose phases turn by
    ``twist`` from base to apex, and a chronic infarct's thinned wall."""

    epi: tuple[Harmonic, ...] = ()
    wall: tuple[Harmonic, ...] = ()
    twist: float = 0.0
    thinning: float = 0.0  # fraction of the wall lost at the infarct's core

    @staticmethod
    def wave(harmonics: tuple[Harmonic, ...], theta: np.ndarray, turn: np.ndarray) -> np.ndarray:
        """The harmonics' sum (mm) around the LV, the pattern turned by ``turn`` radians."""
        out = np.zeros(np.broadcast(theta, turn).shape)
        for order, amplitude, phase in harmonics:
            out = out + amplitude * np.cos(order * (theta - phase - turn))
        return out


MIN_THINNED_WALL_MM = 2.0


@dataclass(frozen=True)
class Anatomy:
    """Everything that defines one phantom heart and its surroundings (mm, LPS)."""

    base_center: np.ndarray  # LV centre at the base plane
    axis: np.ndarray  # LV long axis, base -> apex
    septal: np.ndarray  # unit, perpendicular to axis
    anterior: np.ndarray  # unit, axis x septal oriented toward the patient's anterior
    radius: float  # epicardial radius at the base
    length: float  # base to epicardial apex
    exponent: float  # longitudinal profile, 2 = ellipsoid, larger = blunter
    ecc: float
    ecc_phase: float
    wall: float  # mean basal wall thickness
    wall_amp: float
    wall_phase: float
    apex_wall: float
    rv_depth: float
    rv_length: float
    papillary_radius: float
    fat_thickness: float
    fat_phase: float
    body_semi: tuple[float, float]  # left-right, anterior-posterior
    body_fat: float
    infarct: Infarct | None
    wall_clip: tuple[float, float] = (6.0, 12.0)  # local wall thickness limits, mm
    fat_ring: float = 0.0  # epicardial fat all around the heart, mm
    papillary_deg: tuple[float, float] = (150.0, -75.0)  # anterolateral, posteromedial
    contour: Contour | None = None

    def r_epi(self, theta: np.ndarray, w: np.ndarray) -> np.ndarray:
        return self._outline(theta, w) * self._profile(w / self.length)

    def r_endo(self, theta: np.ndarray, w: np.ndarray) -> np.ndarray:
        thickness = self.wall + self.wall_amp * np.cos(theta - self.wall_phase)
        c = self.contour
        if c is not None and c.wall:
            thickness = thickness + Contour.wave(c.wall, theta, c.twist * w / self.length)
        thickness = np.clip(thickness, *self.wall_clip)
        if c is not None and c.thinning > 0 and self.infarct is not None:
            tau, _ = self._transmurality(theta, w / self.length)
            core = tau / max(self.infarct.transmurality, 1e-6)
            thinned = np.minimum(thickness, MIN_THINNED_WALL_MM)
            thickness = np.maximum(thickness * (1 - c.thinning * core), thinned)
        cavity_length = self.length - self.apex_wall
        return (self._outline(theta, w) - thickness) * self._profile(w / cavity_length)

    def _outline(self, theta: np.ndarray, w: np.ndarray) -> np.ndarray:
        """Epicardial radius before the longitudinal profile (mm)."""
        r = self.radius * self._ellipse(theta)
        c = self.contour
        if c is not None and c.epi:
            r = r + Contour.wave(c.epi, theta, c.twist * w / self.length)
        return r

    def _ellipse(self, theta: np.ndarray) -> np.ndarray:
        return 1.0 + self.ecc * np.cos(2 * (theta - self.ecc_phase))

    def _profile(self, x: np.ndarray) -> np.ndarray:
        x = np.clip(x, 0.0, 1.0)
        return (1.0 - x**self.exponent) ** (1.0 / self.exponent)

    def tissues(self, points: np.ndarray) -> np.ndarray:
        """Tissue class for (..., 3) LPS points (already corrected for breathing)."""
        with np.errstate(divide="ignore", invalid="ignore"):  # degenerate RV/apex radii
            return self._tissues(points)

    def _tissues(self, points: np.ndarray) -> np.ndarray:
        d = points - self.base_center
        w = d @ self.axis
        u = d @ self.septal
        v = d @ self.anterior
        r = np.hypot(u, v)
        theta = np.arctan2(v, u)
        tissue = np.full(w.shape, Tissue.AIR, dtype=np.uint8)

        # Thorax, in the plane perpendicular to the body's superior axis.
        lr = d @ LPS_LEFT + 40.0  # body centre sits right of the heart...
        ap = d @ LPS_POSTERIOR - 45.0  # ...and posterior to it
        a, b = self.body_semi
        body = (lr / a) ** 2 + (ap / b) ** 2
        inner = (lr / (a - self.body_fat)) ** 2 + (ap / (b - self.body_fat)) ** 2
        cavity = (lr / (a - self.body_fat - 11)) ** 2 + (ap / (b - self.body_fat - 11)) ** 2
        tissue[body < 1] = Tissue.SUBCUTANEOUS_FAT
        tissue[inner < 1] = Tissue.MUSCLE
        tissue[cavity < 1] = Tissue.LUNG
        in_cavity = cavity < 1
        liver = in_cavity & ((-(d @ LPS_SUPERIOR)) * 0.8 + (-(d @ LPS_LEFT)) * 0.6 > 70.0)
        tissue[liver] = Tissue.LIVER
        spine = np.hypot(d @ LPS_LEFT + 25.0, d @ LPS_POSTERIOR - 95.0) < 20.0
        tissue[spine & in_cavity] = Tissue.SPINE
        aorta = np.hypot(d @ LPS_LEFT - 5.0, d @ LPS_POSTERIOR - 62.0) < 11.0
        tissue[aorta & in_cavity] = Tissue.AORTA

        r_epi = self.r_epi(theta, w)
        r_endo = self.r_endo(theta, w)
        in_lv = (w >= 0) & (w <= self.length)

        # Epicardial fat, thickest in one sector (the AV-groove side).
        fat = self.fat_thickness * np.clip(np.cos(theta - self.fat_phase), 0, None) ** 2
        if self.fat_ring:
            fat = fat + self.fat_ring
        tissue[in_lv & (r < r_epi + fat) & (r >= r_epi)] = Tissue.EPICARDIAL_FAT

        # RV: a crescent on the septal side, shrinking toward the apex.
        f = np.sqrt(np.clip(1.0 - (np.maximum(w, 0) / self.rv_length) ** 2, 0.0, 1.0))
        present = (w >= -15.0) & (f > 0)
        r_sep = self.radius * self._profile(np.maximum(w, 0) / self.length)
        cu = 0.35 * r_sep
        sa_u = 0.65 * r_sep + self.rv_depth * f
        sa_v = 0.95 * r_sep * np.maximum(f, 0.3)
        outer = ((u - cu) / sa_u) ** 2 + (v / sa_v) ** 2 < 1
        inner = ((u - cu) / np.maximum(sa_u - 3.0, 1e-3)) ** 2 + (
            v / np.maximum(sa_v - 3.0, 1e-3)
        ) ** 2 < 1
        outside_lv = ~in_lv | (r >= r_epi)
        tissue[present & outer & outside_lv] = Tissue.RV_WALL
        tissue[present & inner & outside_lv & (np.maximum(sa_u, sa_v) > 6)] = Tissue.RV_BLOOD

        # Above the base: left atrium / outflow, bright blood that is not LV.
        atrium = (w < 0) & (w > -30.0) & (r < 0.85 * self.radius)
        tissue[atrium & (r > 0.85 * self.radius - 2.0)] = Tissue.RV_WALL
        tissue[atrium & (r <= 0.85 * self.radius - 2.0)] = Tissue.ATRIAL_BLOOD

        myo = in_lv & (r < r_epi) & (r >= r_endo)
        pool = in_lv & (r < r_endo)
        tissue[pool] = Tissue.LV_BLOOD
        for pm_deg in self.papillary_deg:
            pm = np.deg2rad(pm_deg)
            dist = np.hypot(u - 0.62 * r_endo * np.cos(pm), v - 0.62 * r_endo * np.sin(pm))
            level = (w > 0.2 * self.length) & (w < 0.75 * self.length)
            tissue[pool & level & (dist < np.minimum(self.papillary_radius, 0.3 * r_endo))] = (
                Tissue.PAPILLARY
            )
        tissue[myo] = Tissue.MYOCARDIUM

        if self.infarct is not None:
            rho = np.where(r_endo > 0, (r - r_endo) / np.maximum(r_epi - r_endo, 1e-6), r / r_epi)
            tau, tau_mvo = self._transmurality(theta, w / self.length)
            scar = myo & (rho < tau)
            tissue[scar] = Tissue.SCAR
            if self.infarct.mvo:
                tissue[scar & (rho < tau_mvo) & (rho > self.infarct.mvo_rim)] = Tissue.MVO
            if self.infarct.border > 0:
                wide, _ = self._transmurality(theta, w / self.length, self.infarct.border_widen)
                outer = np.where(wide > 0, np.minimum(wide + self.infarct.border, 1.0), 0.0)
                tissue[myo & ~scar & (rho < outer)] = Tissue.BORDER_ZONE
        return tissue

    def _transmurality(
        self, theta: np.ndarray, x: np.ndarray, widen: float = 1.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """Fraction of the wall, from the endocardium, that is scar (and MVO); ``widen``
        > 1 gives the same infarct grown in angle and length (the border zone's extent)."""
        inf = self.infarct
        assert inf is not None
        half = np.full(x.shape, np.deg2rad(min(inf.half_width_deg * widen, 179.0)))
        if inf.territory == "LAD":  # the LAD wraps the apex
            wrap = np.clip((x - 0.72) / 0.2, 0, 1)
            half = half + (np.pi - half) * wrap**2
        delta = np.angle(np.exp(1j * (theta - np.deg2rad(inf.center_deg))))
        a1, p1, a2, p2 = inf.ripple
        ripple = 1 + a1 * np.sin(3 * theta + p1) + a2 * np.sin(5 * theta + p2)
        ang = np.clip(1.4 * (1 - (delta / half) ** 2) * ripple, 0, 1)
        soft = 0.06
        grow = 0.1 * (widen - 1.0)
        lon = np.clip((x - inf.start + grow) / soft + 0.5, 0, 1) * np.clip(
            (inf.end + grow - x) / soft + 0.5, 0, 1
        )
        tau = inf.transmurality * ang * lon
        core = np.clip(1.6 * (1 - (delta / (0.5 * half)) ** 2), 0, 1)
        tau_mvo = np.where(tau > 0.35, 0.6 * tau * core, 0.0)
        return tau, tau_mvo

    def labels(self, points: np.ndarray) -> np.ndarray:
        return TISSUE_TO_LABEL[self.tissues(points)]


def sample_contour(rng: np.random.Generator, style: Style, infarct: bool) -> Contour:
    """An irregular shape for the ``varied`` style, from its own random stream (the other
    draws of a seed stay as they are); amplitudes fall with the harmonic's order."""

    def harmonics(orders: tuple[int, ...], peak: tuple[float, float]) -> tuple[Harmonic, ...]:
        return tuple(
            (k, draw(rng, peak) * orders[0] / k, float(rng.uniform(0, 2 * np.pi))) for k in orders
        )

    epi = harmonics((3, 4, 5), style.contour_harmonic_mm)
    wall = harmonics((2, 3, 4), style.wall_harmonic_mm)
    twist = float(rng.uniform(-1.0, 1.0))
    thinning = draw(rng, style.infarct_thinning) if rng.random() < 0.6 else 0.0
    return Contour(epi=epi, wall=wall, twist=twist, thinning=thinning if infarct else 0.0)


def sample_anatomy(
    rng: np.random.Generator,
    slice_normal: np.ndarray,
    base_center: np.ndarray,
    scar: bool,
    mvo: bool,
    length: float,
    territory: str | None = None,
    style: Style = CLASSIC,
    extra: np.random.Generator | None = None,
) -> Anatomy:
    """Draw a heart; ``slice_normal`` is the short-axis plane normal (base -> apex).

    ``rng`` draws in the same order for every style (classic seeds never change);
    what only randomized styles vary comes from ``extra``.
    """
    tilt_axis = unit(np.cross(slice_normal, rng.normal(size=3)))
    axis = unit(rotate(slice_normal, tilt_axis, np.deg2rad(rng.uniform(0, style.tilt_deg))))
    right_anterior = unit(-LPS_LEFT - LPS_POSTERIOR)
    septal = unit(right_anterior - (right_anterior @ axis) * axis)
    turn = style.septal_rotation_deg
    septal = unit(rotate(septal, axis, np.deg2rad(rng.uniform(-turn, turn))))
    anterior = unit(np.cross(axis, septal))
    anterior_lps = -LPS_POSTERIOR
    if anterior @ anterior_lps < 0:
        anterior = -anterior
    radius = draw(rng, style.radius_mm)
    wall = draw(rng, style.wall_mm)
    infarct = None
    if scar:
        drawn = str(rng.choice(TERRITORIES))  # drawn always, so seeds stay comparable
        territory = territory or drawn
        center, start, end = {
            "LAD": (rng.uniform(60, 100), rng.uniform(0.2, 0.5), 1.05),
            "LCx": (rng.uniform(150, 200), rng.uniform(0.0, 0.2), rng.uniform(0.6, 0.85)),
            "RCA": (rng.uniform(-100, -50), 0.0, rng.uniform(0.5, 0.75)),
        }[territory]
        low = 0.55 if mvo else 0.1
        infarct = Infarct(
            territory=territory,
            center_deg=float(center),
            half_width_deg=float(rng.uniform(30, 60)),
            start=float(start),
            end=float(end),
            transmurality=float(rng.uniform(low, 1.0)),
            ripple=(
                float(rng.uniform(0, 0.15)),
                float(rng.uniform(0, 2 * np.pi)),
                float(rng.uniform(0, 0.1)),
                float(rng.uniform(0, 2 * np.pi)),
            ),
            mvo=mvo,
            mvo_rim=float(rng.uniform(0.04, 0.1)),
        )
    anatomy = Anatomy(
        base_center=base_center,
        axis=axis,
        septal=septal,
        anterior=anterior,
        radius=radius,
        length=length,
        exponent=draw(rng, style.exponent),
        ecc=draw(rng, style.ecc),
        ecc_phase=rng.uniform(0, np.pi),
        wall=wall,
        wall_amp=draw(rng, style.wall_amp_mm),
        wall_phase=rng.uniform(0, 2 * np.pi),
        apex_wall=draw(rng, style.apex_wall_mm),
        rv_depth=draw(rng, style.rv_depth_mm),
        rv_length=length * draw(rng, style.rv_length),
        papillary_radius=draw(rng, style.papillary_mm),
        fat_thickness=draw(rng, style.fat_mm),
        fat_phase=rng.uniform(-np.pi, np.pi),
        body_semi=(draw(rng, style.body_lr_mm), draw(rng, style.body_ap_mm)),
        body_fat=draw(rng, style.body_fat_mm),
        infarct=infarct,
        wall_clip=style.wall_clip_mm,
    )
    if extra is None or not style.randomized:
        return anatomy
    jitter = style.papillary_jitter_deg
    return replace(
        anatomy,
        fat_ring=draw(extra, style.fat_ring_mm),
        papillary_deg=(
            150.0 + float(extra.uniform(-jitter, jitter)),
            -75.0 + float(extra.uniform(-jitter, jitter)),
        ),
    )
