"""How far to trust one result: a reliability score and a ``low_confidence`` flag.

A segmenter that meets images unlike its training data rarely fails loudly; it returns a
plausible-looking but wrong mask (half a ring, a blood pool counted as scar). Several
independent signals catch different failure modes, each mapped to a score in [0, 1]
(1: nothing suspicious), per case and where it makes sense per slice:

- ``self_agreement``: the model's own probabilities against its decision (a soft Dice of
  the argmax myocardium with the myocardium probability): low where it hesitated;
- ``ring``: in slices with a blood pool, the share of directions around the pool in which
  myocardium encloses it (a short-axis LV is a closed ring);
- ``wall``: wall thickness along those directions, plausible (3-20 mm) and even enough;
- ``continuity``: myocardium in consecutive slices, without a gap or an abrupt collapse;
- ``localization``: the heart detector's confidence;
- ``reference``: agreement of the scar % with the conventional n-SD / FWHM thresholds;
- ``scar_certainty``: the scar % the probabilities imply against the decided one (a model
  hesitating over which pixels are scar moves this number, the one a reader uses);
- ``scar_contrast``: predicted scar brighter than remote myocardium (contrast-to-noise);
  scar found in tissue as dark as healthy myocardium is not scar that LGE shows.

The score is the minimum of the components (one broken signal is enough to distrust the
case), ``low_confidence`` is that score below `LOW_CONFIDENCE_BELOW`. The threshold and the
ramps were set on a calibration set of randomized phantoms (seeds kept apart from both
training and evaluation; ``lge-node evaluate`` reports how well it catches failures on the
evaluation sets).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from pipeline.labels import Label, myocardium_mask
from pipeline.volume import Geometry

LOW_CONFIDENCE_BELOW = 0.5
SECTORS = 72  # 5 degree directions around the blood pool
PLAUSIBLE_WALL_MM = (3.0, 20.0)


@dataclass
class Reliability:
    score: float  # 0..1, minimum of the components
    low_confidence: bool
    components: dict[str, float] = field(default_factory=dict)
    slices: dict[int, float] = field(default_factory=dict)  # slice index -> 0..1
    weakest: str = ""  # the component that set the score
    measures: dict[str, float] = field(default_factory=dict)  # the raw values behind them


def _ramp(value: float, bad: float, good: float) -> float:
    """0 at ``bad``, 1 at ``good``, linear between (either direction)."""
    if good == bad:
        return 1.0
    return float(np.clip((value - bad) / (good - bad), 0.0, 1.0))


def self_agreement(probabilities: np.ndarray | None, labels: np.ndarray) -> float | None:
    """Soft Dice between P(myocardium incl. scar/MVO) and the decided myocardium."""
    if probabilities is None or probabilities.shape[0] <= int(Label.MVO):
        return None
    p = probabilities[Label.MYOCARDIUM : Label.MVO + 1].sum(axis=0)
    m = myocardium_mask(labels)
    total = float(p.sum() + m.sum())
    return 2.0 * float(p[m].sum()) / total if total > 0 else None


@dataclass
class _SliceShape:
    coverage: float  # share of directions with myocardium around the pool
    wall_mm: float  # median wall thickness over covered directions
    wall_cv: float  # its coefficient of variation


def ring_shape(labels2d: np.ndarray, pixel_mm: tuple[float, float]) -> _SliceShape | None:
    """Myocardium around the LV pool of one slice, along SECTORS rays from its centre."""
    pool = labels2d == Label.LV_BLOOD
    myo = myocardium_mask(labels2d)
    if pool.sum() < 5 or not myo.any():
        return None
    pool = _largest(pool)
    cy, cx = ndimage.center_of_mass(pool)
    sy, sx = pixel_mm
    ys, xs = np.nonzero(myo | pool)
    reach_mm = float(np.hypot((ys - cy) * sy, (xs - cx) * sx).max()) + 3 * max(sy, sx)
    step = 0.5 * min(sy, sx)
    radii = np.arange(0.0, reach_mm, step)
    angles = np.linspace(0, 2 * np.pi, SECTORS, endpoint=False)
    py = cy + np.outer(np.sin(angles), radii) / sy
    px = cx + np.outer(np.cos(angles), radii) / sx
    inside = (py >= 0) & (px >= 0) & (py <= myo.shape[0] - 1) & (px <= myo.shape[1] - 1)
    iy = np.clip(np.rint(py).astype(int), 0, myo.shape[0] - 1)
    ix = np.clip(np.rint(px).astype(int), 0, myo.shape[1] - 1)
    on = myo[iy, ix] & inside
    covered = on.any(axis=1)
    coverage = float(covered.mean())
    if not covered.any():
        return _SliceShape(coverage, 0.0, 0.0)
    thickness = on.sum(axis=1)[covered] * step
    median = float(np.median(thickness))
    cv = float(thickness.std() / median) if median > 0 else 0.0
    return _SliceShape(coverage, median, cv)


def _largest(mask: np.ndarray) -> np.ndarray:
    lab, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = ndimage.sum(mask, lab, range(1, n + 1))
    return lab == (1 + int(np.argmax(sizes)))


def continuity(labels: np.ndarray) -> float:
    """1 when myocardium fills a run of consecutive slices whose areas change smoothly."""
    area = myocardium_mask(labels).sum(axis=(1, 2)).astype(float)
    present = np.flatnonzero(area)
    if present.size == 0:
        return 0.0
    run = area[present[0] : present[-1] + 1]
    if (run == 0).any():  # a gap inside the stack
        return 0.0
    if run.size < 3:
        return 1.0
    # Inner slices: compare each with the mean of its neighbours.
    inner = run[1:-1] / np.maximum((run[:-2] + run[2:]) / 2, 1.0)
    return _ramp(float(inner.min()), 0.15, 0.45)


def soft_scar_percent(probabilities: np.ndarray | None) -> float | None:
    """Scar % of LV myocardium under the probabilities instead of the argmax."""
    if probabilities is None or probabilities.shape[0] <= int(Label.MVO):
        return None
    myo = float(probabilities[Label.MYOCARDIUM : Label.MVO + 1].sum())
    scar = float(probabilities[Label.SCAR : Label.MVO + 1].sum())
    return 100.0 * scar / myo if myo > 0 else None


def scar_cnr(image: np.ndarray | None, labels: np.ndarray) -> float | None:
    """(median of predicted scar - mean of healthy myocardium) / SD of healthy myocardium."""
    if image is None:
        return None
    scar = (labels == Label.SCAR) | (labels == Label.MVO)
    healthy = labels == Label.MYOCARDIUM
    if scar.sum() < 5 or healthy.sum() < 20:
        return None
    ref = image[healthy]
    sd = float(ref.std()) or 1e-6
    return (float(np.median(image[labels == Label.SCAR])) - float(ref.mean())) / sd


def assess(
    labels: np.ndarray,
    geometry: Geometry,
    probabilities: np.ndarray | None,
    localization_confidence: float | None,
    scar_percent: float,
    reference_percents: list[float],
    image: np.ndarray | None = None,
) -> Reliability:
    """Reliability of one result (``probabilities``: (C, z, y, x) and ``image`` on
    ``labels``' grid)."""
    comps: dict[str, float] = {}
    raw: dict[str, float] = {}
    slices: dict[int, float] = {}
    if not myocardium_mask(labels).any():
        return Reliability(0.0, True, {"empty": 0.0}, {}, "empty")

    agree = self_agreement(probabilities, labels)
    if agree is not None:
        raw["self_agreement"] = agree
        comps["self_agreement"] = _ramp(agree, 0.72, 0.88)
    soft = soft_scar_percent(probabilities)
    if soft is not None:
        raw["scar_percent_soft_gap"] = abs(soft - scar_percent)
        comps["scar_certainty"] = _ramp(abs(soft - scar_percent), 4.0, 1.5)
    cnr = scar_cnr(image, labels)
    if cnr is not None:
        raw["scar_cnr"] = cnr
        comps["scar_contrast"] = _ramp(cnr, 1.0, 3.0)

    shapes = {
        k: s
        for k in range(labels.shape[0])
        if (s := ring_shape(labels[k], geometry.pixel_spacing)) is not None
    }
    if shapes:
        for k, s in shapes.items():
            ring = _ramp(s.coverage, 0.7, 0.95)
            lo, hi = PLAUSIBLE_WALL_MM
            wall = min(_ramp(s.wall_mm, lo - 1.5, lo), _ramp(s.wall_mm, hi + 5, hi))
            even = _ramp(s.wall_cv, 1.1, 0.7)
            slices[k] = min(ring, wall, even)
        # The worst two slices decide: one odd apical slice is normal, several are not.
        covs = sorted(s.coverage for s in shapes.values())
        raw["ring_coverage"] = float(np.mean(covs[:2]))
        comps["ring"] = _ramp(raw["ring_coverage"], 0.7, 0.95)
        walls = [s.wall_mm for s in shapes.values()]
        lo, hi = PLAUSIBLE_WALL_MM
        median_wall = float(np.median(walls))
        raw["wall_mm"] = median_wall
        raw["wall_cv"] = float(np.median([s.wall_cv for s in shapes.values()]))
        comps["wall"] = min(
            _ramp(median_wall, lo - 1.5, lo),
            _ramp(median_wall, hi + 5, hi),
            _ramp(float(np.median([s.wall_cv for s in shapes.values()])), 1.0, 0.6),
        )
    else:
        comps["ring"] = 0.0  # myocardium but never around a blood pool

    comps["continuity"] = continuity(labels)
    if localization_confidence is not None:
        raw["localization"] = localization_confidence
        comps["localization"] = _ramp(localization_confidence, 0.2, 0.5)
    if reference_percents:
        gap = min(abs(scar_percent - r) for r in reference_percents)
        raw["reference_gap"] = gap
        comps["reference"] = _ramp(gap, 15.0, 8.0)

    weakest = min(comps, key=lambda c: comps[c])
    score = float(comps[weakest])
    return Reliability(
        score=round(score, 3),
        low_confidence=score < LOW_CONFIDENCE_BELOW,
        components={k: round(v, 3) for k, v in comps.items()},
        slices={k: round(v, 3) for k, v in slices.items()},
        weakest=weakest,
        measures={k: round(v, 4) for k, v in raw.items()},
    )
