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
  scar found in tissue as dark as healthy myocardium is not scar that LGE shows;
- ``pool_rim``: the blood pool's rim, where it meets the myocardium, no brighter than the
  pool's core. Subendocardial scar called blood pool (the under-call that leaves the
  myocardium looking right) shows as a bright band along the rim, which normal blood next
  to dark myocardium never is.
- ``focal_thinning``: no notch in the wall. A short-axis wall thickens and thins smoothly
  around the ring; a short deep notch, over consecutive mid-ventricular slices, is the
  shape left when a subendocardial band was called blood pool. It catches the under-call
  that ``pool_rim`` cannot: scar as bright as the pool beside it, which has no rim.

The score is the minimum of the components (one broken signal is enough to distrust the
case), ``low_confidence`` is that score below 0.5. Each component is a ramp on one raw
measure: 0.5 at its ``flag_at`` value, 1 at its ``typical`` value. Those two numbers
depend on the model, so they live beside it (``manifest.json``, section ``qc``), set by
`calibrate` from a calibration set of phantoms whose seeds are kept apart from training
and from every evaluation set; `DEFAULT_THRESHOLDS` apply to a model without them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np
from scipy import ndimage

from pipeline.labels import Label, myocardium_mask
from pipeline.volume import Geometry

LOW_CONFIDENCE_BELOW = 0.5
SECTORS = 72  # 5 degree directions around the blood pool
PLAUSIBLE_WALL_MM = (3.0, 20.0)


@dataclass(frozen=True)
class Threshold:
    """One raw measure -> one component score: 0.5 at ``flag_at``, 1 at ``typical``."""

    flag_at: float
    typical: float

    def score(self, value: float) -> float:
        if self.typical == self.flag_at:
            return 1.0 if value == self.typical else 0.0
        return float(np.clip(0.5 + 0.5 * (value - self.flag_at) / (self.typical - self.flag_at),
                             0.0, 1.0))  # fmt: skip

    def flags(self, value: float) -> bool:
        return self.score(value) < LOW_CONFIDENCE_BELOW


# measure -> (component, True when a higher value is better)
MEASURES: dict[str, tuple[str, bool]] = {
    "self_agreement": ("self_agreement", True),
    "scar_percent_soft_gap": ("scar_certainty", False),
    "scar_cnr": ("scar_contrast", True),
    "ring_coverage": ("ring", True),
    "wall_mm_low": ("wall", True),
    "wall_mm_high": ("wall", False),
    "wall_cv": ("wall", False),
    "continuity": ("continuity", True),
    "localization": ("localization", True),
    "reference_gap": ("reference", False),
    "pool_rim_excess": ("pool_rim", False),
    "focal_thinning": ("focal_thinning", False),
}
# component -> what a low score means, in a reader's words (the PDF and summary page)
SIGNALS: dict[str, str] = {
    "self_agreement": "the model hesitated over the myocardium's contours",
    "scar_certainty": "the model hesitated over which pixels are scar: the scar % is uncertain",
    "scar_contrast": "the scar found is hardly brighter than healthy myocardium",
    "ring": "the myocardium does not close around the blood pool in some slices",
    "wall": "implausible or uneven wall thickness",
    "focal_thinning": "a notch in the wall: scar as bright as the blood pool may have been "
    "called blood pool, unless the wall is truly thinned there (a chronic infarct)",
    "continuity": "myocardium missing or collapsing between slices",
    "localization": "the heart detector was unsure where the heart is",
    "reference": "the scar % disagrees with the n-SD, FWHM and EWA references",
    "pool_rim": "a bright band along the blood pool's rim: subendocardial scar may have been "
    "called blood pool",
    "empty": "no myocardium was segmented",
}
DEFAULT_THRESHOLDS: dict[str, Threshold] = {
    "self_agreement": Threshold(0.80, 0.88),
    "scar_percent_soft_gap": Threshold(2.75, 1.5),
    "scar_cnr": Threshold(2.0, 3.0),
    "ring_coverage": Threshold(0.825, 0.95),
    "wall_mm_low": Threshold(2.25, 3.0),
    "wall_mm_high": Threshold(22.5, 20.0),
    "wall_cv": Threshold(0.8, 0.6),
    "continuity": Threshold(0.30, 0.45),
    "localization": Threshold(0.35, 0.5),
    "reference_gap": Threshold(11.5, 8.0),
    "pool_rim_excess": Threshold(3.0, 0.0),
    "focal_thinning": Threshold(0.35, 0.1),
}


@dataclass(frozen=True)
class QcCalibration:
    """The thresholds of one model, and where they came from."""

    thresholds: dict[str, Threshold]
    source: str = "defaults"  # e.g. "calibration set, 60 cases, seeds 8000-8059"

    @classmethod
    def defaults(cls) -> QcCalibration:
        return cls(dict(DEFAULT_THRESHOLDS))

    @classmethod
    def from_json(cls, doc: dict | None) -> QcCalibration:
        if not doc:
            return cls.defaults()
        merged = dict(DEFAULT_THRESHOLDS)
        for name, t in doc.get("thresholds", {}).items():
            if name in MEASURES:
                merged[name] = Threshold(float(t["flag_at"]), float(t["typical"]))
        return cls(merged, str(doc.get("source", "manifest")))

    def to_json(self) -> dict:
        return {
            "source": self.source,
            "thresholds": {
                k: {"flag_at": round(t.flag_at, 4), "typical": round(t.typical, 4)}
                for k, t in self.thresholds.items()
            },
        }


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
    thickness_mm: np.ndarray  # (SECTORS,) wall thickness per direction, 0 where uncovered


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
    per_ray = on.sum(axis=1) * step
    if not covered.any():
        return _SliceShape(coverage, 0.0, 0.0, per_ray)
    thickness = per_ray[covered]
    median = float(np.median(thickness))
    cv = float(thickness.std() / median) if median > 0 else 0.0
    return _SliceShape(coverage, median, cv, per_ray)


def _largest(mask: np.ndarray) -> np.ndarray:
    lab, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = ndimage.sum(mask, lab, range(1, n + 1))
    return lab == (1 + int(np.argmax(sizes)))


NOTCH_RAYS = 5  # 25 degrees: narrower than a coronary territory, wider than a papillary root
CLOSED_RING = 0.9  # coverage from which a slice's wall is a whole ring


def _thickness_shortfall(thickness: np.ndarray) -> np.ndarray:
    """Per direction, how far the wall falls short of a smooth ring, as a share of the mean
    wall. Smooth: mean plus one cosine (a wall thicker on one side, or a pool off centre),
    fitted with weights that shrink for outliers, so that a notch does not pull the fit;
    directions without myocardium (a gap: shortfall 1) do not take part in it."""
    angles = np.linspace(0, 2 * np.pi, thickness.size, endpoint=False)
    basis = np.stack([np.ones_like(angles), np.cos(angles), np.sin(angles)], axis=1)
    covered = (thickness > 0).astype(float)
    weights = covered
    for _ in range(4):
        coef = np.linalg.lstsq(basis * weights[:, None], thickness * weights, rcond=None)[0]
        residual = thickness - basis @ coef
        scale = 1.4826 * float(np.median(np.abs(residual[covered > 0]))) + 1e-6
        weights = covered / (1.0 + (residual / (2.0 * scale)) ** 2)
    return -residual / max(float(coef[0]), 1e-6)


def focal_thinning(shapes: dict[int, _SliceShape]) -> float | None:
    """Deepest notch in the wall, as a share of the mean wall thickness: the shortfall
    below a smooth ring averaged over NOTCH_RAYS neighbouring directions and two adjacent
    slices (a missed infarct spans several; one noisy slice does not). Only closed rings
    between the first and last one count: the basal and apical ends are cut obliquely and
    partial-volumed, and thin there without anything being missed. None without two such
    adjacent slices."""
    rings = sorted(k for k, s in shapes.items() if s.coverage >= CLOSED_RING)[1:-1]
    pairs = [(a, b) for a, b in pairwise(rings) if b == a + 1]
    if not pairs:
        return None
    paired = {k for pair in pairs for k in pair}
    shortfall = {k: _thickness_shortfall(shapes[k].thickness_mm) for k in paired}
    kernel = np.ones(NOTCH_RAYS) / NOTCH_RAYS
    deepest = 0.0
    for a, b in pairs:
        both = (shortfall[a] + shortfall[b]) / 2
        wrapped = np.r_[both[-NOTCH_RAYS:], both, both[:NOTCH_RAYS]]
        arc = np.convolve(wrapped, kernel, mode="same")[NOTCH_RAYS:-NOTCH_RAYS]
        deepest = max(deepest, float(arc.max()))
    return deepest


def continuity(labels: np.ndarray) -> float:
    """How smoothly myocardium runs through the stack: 0 with a gap inside it, else the
    smallest ratio of an inner slice's area to the mean of its neighbours (1 when there
    are fewer than three slices)."""
    area = myocardium_mask(labels).sum(axis=(1, 2)).astype(float)
    present = np.flatnonzero(area)
    if present.size == 0:
        return 0.0
    run = area[present[0] : present[-1] + 1]
    if (run == 0).any():
        return 0.0
    if run.size < 3:
        return 1.0
    inner = run[1:-1] / np.maximum((run[:-2] + run[2:]) / 2, 1.0)
    return float(min(inner.min(), 1.0))


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


RIM_SECTORS = 8


def pool_rim_excess(image: np.ndarray | None, labels: np.ndarray) -> float | None:
    """How much brighter than the LV pool's core its rim (the pool within 2 pixels of the
    myocardium) is, in robust SDs of the core (papillary muscles lie in it): per slice the
    brightest of 8 sectors around the pool; over the stack the second brightest slice (one
    odd slice is not a finding)."""
    if image is None:
        return None
    per_slice = []
    for k in range(labels.shape[0]):
        pool = labels[k] == Label.LV_BLOOD
        myo = myocardium_mask(labels[k])
        if pool.sum() < 30 or not myo.any():
            continue
        core = ndimage.binary_erosion(pool, iterations=3)
        rim = pool & ndimage.binary_dilation(myo, iterations=2)
        if core.sum() < 10 or rim.sum() < 10:
            continue
        ref = image[k][core]
        centre = float(np.median(ref))
        sd = 1.4826 * float(np.median(np.abs(ref - centre))) or 1e-6
        cy, cx = ndimage.center_of_mass(pool)
        ys, xs = np.nonzero(rim)
        turn = (np.arctan2(ys - cy, xs - cx) + np.pi) / (2 * np.pi)
        sector = (turn * RIM_SECTORS).astype(int) % RIM_SECTORS
        counts = np.bincount(sector, minlength=RIM_SECTORS)
        sums = np.bincount(sector, weights=image[k][ys, xs], minlength=RIM_SECTORS)
        if (counts >= 5).any():
            brightest = float((sums[counts >= 5] / counts[counts >= 5]).max())
            per_slice.append((brightest - centre) / sd)
    if not per_slice:
        return None
    return float(sorted(per_slice)[-2] if len(per_slice) > 1 else per_slice[0])


@dataclass(frozen=True)
class QcInputs:
    """What the QC reads of one result; arrays on the labels' grid (the heart crop)."""

    labels: np.ndarray  # (z, y, x)
    geometry: Geometry
    probabilities: np.ndarray | None  # (C, z, y, x) class probabilities, if the model gave them
    localization_confidence: float | None
    scar_percent: float
    reference_percents: list[float]
    image: np.ndarray | None = None


def measure(inputs: QcInputs) -> tuple[dict[str, float], dict[int, float]]:
    """The raw measures behind the components (those that apply), and a 0..1 shape score
    per slice (ring closure, wall thickness and evenness on fixed plausibility ramps)."""
    labels, probabilities, image = inputs.labels, inputs.probabilities, inputs.image
    scar_percent = inputs.scar_percent
    raw: dict[str, float] = {}
    slices: dict[int, float] = {}
    agree = self_agreement(probabilities, labels)
    if agree is not None:
        raw["self_agreement"] = agree
    soft = soft_scar_percent(probabilities)
    if soft is not None:
        raw["scar_percent_soft_gap"] = abs(soft - scar_percent)
    cnr = scar_cnr(image, labels)
    if cnr is not None:
        raw["scar_cnr"] = cnr
    rim = pool_rim_excess(image, labels)
    if rim is not None:
        raw["pool_rim_excess"] = rim
    shapes = {
        k: s
        for k in range(labels.shape[0])
        if (s := ring_shape(labels[k], inputs.geometry.pixel_spacing)) is not None
    }
    lo, hi = PLAUSIBLE_WALL_MM
    for k, s in shapes.items():
        ring = _ramp(s.coverage, 0.7, 0.95)
        wall = min(_ramp(s.wall_mm, lo - 1.5, lo), _ramp(s.wall_mm, hi + 5, hi))
        slices[k] = min(ring, wall, _ramp(s.wall_cv, 1.1, 0.7))
    # The worst two slices decide: one odd apical slice is normal, several are not.
    covs = sorted(s.coverage for s in shapes.values())
    raw["ring_coverage"] = float(np.mean(covs[:2])) if covs else 0.0
    if shapes:
        wall_mm = float(np.median([s.wall_mm for s in shapes.values()]))
        raw["wall_mm_low"] = raw["wall_mm_high"] = wall_mm
        raw["wall_cv"] = float(np.median([s.wall_cv for s in shapes.values()]))
    thinning = focal_thinning(shapes)
    if thinning is not None:
        raw["focal_thinning"] = thinning
    raw["continuity"] = continuity(labels)
    if inputs.localization_confidence is not None:
        raw["localization"] = inputs.localization_confidence
    if inputs.reference_percents:
        raw["reference_gap"] = min(abs(scar_percent - r) for r in inputs.reference_percents)
    return raw, slices


def assess(inputs: QcInputs, calibration: QcCalibration | None = None) -> Reliability:
    """Reliability of one result under ``calibration`` (default thresholds without)."""
    if not myocardium_mask(inputs.labels).any():
        return Reliability(0.0, True, {"empty": 0.0}, {}, "empty")
    thresholds = (calibration or QcCalibration.defaults()).thresholds
    raw, slices = measure(inputs)
    comps: dict[str, float] = {}
    for name, value in raw.items():
        component = MEASURES[name][0]
        score = thresholds[name].score(value)
        comps[component] = min(score, comps.get(component, 1.0))
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


def calibrate(
    measures: list[dict[str, float]],
    failed: list[bool],
    good_budget: float = 0.08,
    per_measure_share: float = 0.02,
    source: str = "",
) -> QcCalibration:
    """Thresholds from a calibration set: the raw measures of each case and whether it
    failed (myocardium Dice < 0.80 or scar % off by > 5 points).

    Two steps. First, each measure flags only what lies beyond the good cases' range
    (its ``per_measure_share`` most extreme good cases at most): a one-class bound, so
    failures of kinds the calibration set never showed are still caught by whatever
    signal they push out of the normal range. Then, while failures remain unflagged,
    the threshold that catches the most of them per good case it also flags is
    tightened, as long as at most ``good_budget`` of the good cases end up flagged.
    ``typical`` is the good cases' median; ``flag_at`` is never on its wrong side.
    """
    if len(measures) != len(failed):
        raise ValueError("one failure label per case")
    good = [m for m, f in zip(measures, failed, strict=True) if not f]
    if len(good) < 10:
        raise ValueError(f"{len(good)} good cases: too few to calibrate (need 10)")
    thresholds = dict(DEFAULT_THRESHOLDS)
    for name, (_, higher_better) in MEASURES.items():
        values = np.array([m[name] for m in good if name in m])
        if values.size < 10:
            continue
        typical = float(np.median(values))
        q = per_measure_share if higher_better else 1.0 - per_measure_share
        edge = float(np.quantile(values, q, method="lower" if higher_better else "higher"))
        spread = float(np.quantile(values, 0.75) - np.quantile(values, 0.25)) or abs(typical) * 0.05
        # flag strictly beyond the edge: half a spread further out
        flag_at = edge - 0.5 * spread if higher_better else edge + 0.5 * spread
        if flag_at == typical:
            flag_at = typical - 1e-6 if higher_better else typical + 1e-6
        thresholds[name] = Threshold(flag_at, typical)

    def flagged(t: dict[str, Threshold], m: dict[str, float]) -> bool:
        return any(t[k].flags(v) for k, v in m.items() if k in t)

    bad = [m for m, f in zip(measures, failed, strict=True) if f]
    while True:
        missed = [m for m in bad if not flagged(thresholds, m)]
        if not missed:
            break
        best: tuple[float, str, Threshold] | None = None
        for name, (_, higher_better) in MEASURES.items():
            t = thresholds[name]
            for m in missed:
                if name not in m:
                    continue
                v = m[name]
                if (higher_better and v >= t.typical) or (not higher_better and v <= t.typical):
                    continue  # a failure that looks typical here: not this measure's job
                eps = 1e-6 * max(abs(v), 1.0)
                cand = Threshold(v + eps if higher_better else v - eps, t.typical)
                trial = {**thresholds, name: cand}
                good_flagged = sum(flagged(trial, g) for g in good) / len(good)
                if good_flagged > good_budget:
                    continue
                caught = sum(flagged(trial, b) for b in missed)
                gain = caught / (1.0 + good_flagged * len(good))
                if best is None or gain > best[0]:
                    best = (gain, name, cand)
        if best is None:
            break  # the rest cannot be caught within the budget; `evaluate` reports them
        thresholds[best[1]] = best[2]
    return QcCalibration(thresholds, source or f"calibration set, {len(measures)} cases")
