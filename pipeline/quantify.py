"""Quantification of a label map: volumes, masses, percents and the AHA 17 segments.

The same code makes the phantom's ``truth.json`` and the pipeline's ``metrics.json``, so
the two are comparable key for key (docs/ARCHITECTURE.md, Contracts).

AHA segmentation, as implemented here:
- slices holding LV myocardium are ordered base -> apex; those with a blood pool are split
  into equal thirds (basal, mid, apical); slices with myocardium but no cavity are the
  apical cap (segment 17);
- in each slice, angles are measured about the LV centre (centroid of pool + myocardium)
  from the septal direction, positive toward the anterior wall;
- the septal direction is the bisector of the two RV insertion points (the ends of the arc
  where RV blood pool touches LV myocardium), averaged per level; a level without RV contact
  borrows from the others; with no RV label at all, the fallback is the in-plane
  projection of the patient's right-anterior direction (``septum_source = "fallback"``);
- transmurality: rays every 2 degrees from the LV centre, sampled every 0.25 pixel; the
  scar fraction of each ray's myocardial samples, averaged over the rays of the segment
  (``transmurality_percent``) and its largest ray (``max_transmurality_percent``);
- non-viable segments: mean transmurality above ``nonviable_percent`` (50 % for chronic
  infarcts after Kim et al. 2000; 75 % is used for acute ones, where oedema and MVO
  inflate enhancement).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from scipy import ndimage

from pipeline.labels import Label, mvo_mask, myocardium_mask, scar_mask
from pipeline.roi import paste
from pipeline.volume import Geometry

MYOCARDIUM_DENSITY = 1.05  # g/ml
RIGHT_ANTERIOR_LPS = np.array([-1.0, -1.0, 0.0]) / np.sqrt(2.0)
ANTERIOR_LPS = np.array([0.0, -1.0, 0.0])
RAY_STEP_DEG = 2.0
# QC flag identifiers and what they mean; outputs (SR, overlays) explain them with these.
QC_FLAGS = {
    "no_heart_found": "detector found no heart: the whole image was segmented",
    "empty_segmentation": "no LV myocardium was segmented",
    "coverage_incomplete_base": "myocardium reaches the first slice: the base may be cut off",
    "coverage_incomplete_apex": "myocardium reaches the last slice without an apical cap",
    "septum_fallback": "no RV insertion points: septum from patient axes (AHA orientation)",
    "reference_disagreement": "model scar % differs from both n-SD and FWHM by > 10 points",
    "low_confidence": "QC reliability below threshold: check the contours before using numbers",
}
RAY_STEP_PX = 0.25

SEGMENT_NAMES = {
    1: "basal anterior", 2: "basal anteroseptal", 3: "basal inferoseptal",
    4: "basal inferior", 5: "basal inferolateral", 6: "basal anterolateral",
    7: "mid anterior", 8: "mid anteroseptal", 9: "mid inferoseptal",
    10: "mid inferior", 11: "mid inferolateral", 12: "mid anterolateral",
    13: "apical anterior", 14: "apical septal", 15: "apical inferior", 16: "apical lateral",
    17: "apex",
}  # fmt: skip


@dataclass
class SegmentMetrics:
    id: int
    name: str
    scar_percent: float
    transmurality_percent: float
    mvo_ml: float
    myocardium_ml: float
    max_transmurality_percent: float = 0.0


@dataclass
class AhaInfo:
    septum_source: str  # "rv_insertion" | "fallback"
    base_to_apex: list[int] = field(default_factory=list)  # slice indices, base first
    levels: dict[str, list[int]] = field(default_factory=dict)  # basal/mid/apical/apex


@dataclass
class QualityControl:
    flags: list[str] = field(default_factory=list)  # keys of QC_FLAGS
    slices_used: list[int] = field(default_factory=list)  # slices holding myocardium
    localization_confidence: float | None = None
    borrowed_slices: list[int] = field(default_factory=list)  # took a neighbour's box
    # `pipeline.qc`: 0..1 (1: nothing suspicious), its components, per slice; None when
    # the labels did not come from the pipeline (e.g. a phantom's truth)
    reliability: float | None = None
    reliability_components: dict[str, float] = field(default_factory=dict)
    reliability_measures: dict[str, float] = field(default_factory=dict)
    slice_reliability: dict[int, float] = field(default_factory=dict)
    low_confidence: bool = False


@dataclass
class ReferenceScar:
    """A conventional threshold method inside the predicted myocardium (a QC signal)."""

    method: str  # "nSD", "FWHM" or "EWA"
    parameter: float | None  # n for nSD
    scar_ml: float
    scar_percent: float


@dataclass
class InfarctComposition:
    """Core and peri-infarct grey zone from intensities (`pipeline.reference.composition`)."""

    core_ml: float
    core_percent: float  # of LV myocardium
    grey_zone_ml: float
    grey_zone_percent: float
    grey_zone_sd: float  # n of the n-SD lower bound
    method: str  # named in every output

    @property
    def grey_zone_fraction(self) -> float:
        """Grey zone as a share of the whole infarct (core + grey zone), percent."""
        total = self.core_ml + self.grey_zone_ml
        return 100.0 * self.grey_zone_ml / total if total > 0 else 0.0


@dataclass
class Metrics:
    myocardium_ml: float
    myocardium_mass_g: float
    scar_ml: float
    scar_mass_g: float
    mvo_ml: float
    scar_percent: float
    mvo_percent: float
    segments: list[SegmentMetrics]
    aha: AhaInfo
    qc: QualityControl = field(default_factory=QualityControl)
    reference: list[ReferenceScar] = field(default_factory=list)
    nonviable_percent: float = 50.0  # a segment is non-viable above this mean transmurality
    composition: InfarctComposition | None = None  # needs the image: set by the pipeline
    # The AHA segment (1-17, 0 none) of every voxel of the labels measured: the SR outlines
    # each segment, and tracing the segments again cost a tenth of its build. Not reported.
    segment_map: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def nonviable_segments(self) -> list[int]:
        return [s.id for s in self.segments if s.transmurality_percent > self.nonviable_percent]

    def to_dict(self) -> dict:
        doc = asdict(replace(self, segment_map=None))
        del doc["segment_map"]
        doc["nonviable_segments"] = self.nonviable_segments
        if self.composition is not None:
            doc["composition"]["grey_zone_fraction"] = self.composition.grey_zone_fraction
        return doc


def quantify(labels: np.ndarray, geometry: Geometry, nonviable_percent: float = 50.0) -> Metrics:
    """Metrics of a (z, y, x) label map (`pipeline.labels` convention) in ``geometry``."""
    if labels.shape != geometry.shape:
        raise ValueError(f"labels {labels.shape} do not match geometry {geometry.shape}")
    # Every measure below is unchanged by cropping away unlabelled borders (centroids,
    # angles and rays move with the crop), and the crop is what they cost.
    ys, xs = _labelled_region(labels)
    full_shape = labels.shape
    labels = labels[:, ys, xs]
    geometry = replace(geometry, shape=labels.shape)
    voxel = geometry.voxel_volume_ml
    myo = myocardium_mask(labels)
    scar = scar_mask(labels)
    mvo = mvo_mask(labels)
    myo_ml = float(myo.sum()) * voxel
    scar_ml = float(scar.sum()) * voxel
    mvo_ml = float(mvo.sum()) * voxel
    segment_map, aha = aha_segments(labels, geometry)
    transmurality, max_transmurality = _transmurality_by_segment(labels, segment_map, geometry)
    segments = []
    for sid in range(1, 18):
        in_seg = segment_map == sid
        n_myo = int((in_seg & myo).sum())
        n_scar = int((in_seg & scar).sum())
        segments.append(
            SegmentMetrics(
                id=sid,
                name=SEGMENT_NAMES[sid],
                scar_percent=_pct(n_scar, n_myo),
                transmurality_percent=transmurality.get(sid, 0.0),
                mvo_ml=float((in_seg & mvo).sum()) * voxel,
                myocardium_ml=n_myo * voxel,
                max_transmurality_percent=max_transmurality.get(sid, 0.0),
            )
        )
    return Metrics(
        myocardium_ml=myo_ml,
        myocardium_mass_g=myo_ml * MYOCARDIUM_DENSITY,
        scar_ml=scar_ml,
        scar_mass_g=scar_ml * MYOCARDIUM_DENSITY,
        mvo_ml=mvo_ml,
        scar_percent=_pct(scar_ml, myo_ml),
        mvo_percent=_pct(mvo_ml, myo_ml),
        segments=segments,
        aha=aha,
        nonviable_percent=nonviable_percent,
        qc=QualityControl(
            flags=_coverage_flags(aha, labels.shape[0], myo_ml),
            slices_used=sorted(aha.base_to_apex),
        ),
        segment_map=paste(segment_map.astype(np.uint8), full_shape, ys, xs),
    )


def _labelled_region(labels: np.ndarray) -> tuple[slice, slice]:
    """In-plane rows and columns holding any label, one pixel of margin."""
    rows, cols = np.flatnonzero(labels.any(axis=(0, 2))), np.flatnonzero(labels.any(axis=(0, 1)))
    if rows.size == 0:
        return slice(0, labels.shape[1]), slice(0, labels.shape[2])
    return (
        slice(max(int(rows[0]) - 1, 0), int(rows[-1]) + 2),
        slice(max(int(cols[0]) - 1, 0), int(cols[-1]) + 2),
    )


def _coverage_flags(aha: AhaInfo, n_slices: int, myo_ml: float) -> list[str]:
    if myo_ml <= 0:
        return ["empty_segmentation"]
    flags = []
    edges = {0, n_slices - 1}
    if aha.base_to_apex and aha.base_to_apex[0] in edges:
        flags.append("coverage_incomplete_base")
    if aha.base_to_apex and not aha.levels.get("apex") and aha.base_to_apex[-1] in edges:
        flags.append("coverage_incomplete_apex")
    if aha.septum_source == "fallback":
        flags.append("septum_fallback")
    return flags


def _pct(part: float, whole: float) -> float:
    return 100.0 * part / whole if whole > 0 else 0.0


def _in_plane(geometry: Geometry, vector: np.ndarray) -> np.ndarray:
    """A patient-space vector as (dx, dy) in pixel-index axes (mm), normalised."""
    v = np.array([vector @ geometry.row_direction, vector @ geometry.column_direction])
    n = np.linalg.norm(v)
    return v / n if n > 1e-9 else np.array([1.0, 0.0])


def _slice_centre(pool_or_myo: np.ndarray) -> np.ndarray:
    cy, cx = ndimage.center_of_mass(pool_or_myo)
    return np.array([cx, cy])


def _angles(shape: tuple[int, int], centre: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Angle (radians) of each pixel about ``centre`` in a mm-isotropic (x, y) frame."""
    yy, xx = np.indices(shape)
    dx = (xx - centre[0]) * geometry.pixel_spacing[1]
    dy = (yy - centre[1]) * geometry.pixel_spacing[0]
    return np.arctan2(dy, dx)


def _septal_angle_from_rv(
    myo: np.ndarray, rv: np.ndarray, centre: np.ndarray, geometry: Geometry
) -> float | None:
    """Bisector of the RV insertion points in one slice (radians), or None."""
    contact = myo & ndimage.binary_dilation(rv, iterations=2)
    if contact.sum() < 3:
        return None
    ang = np.sort(_angles(myo.shape, centre, geometry)[contact])
    # The contact arc is the circle minus its largest angular gap.
    gaps = np.diff(np.r_[ang, ang[0] + 2 * np.pi])
    i = int(np.argmax(gaps))
    start, end = ang[(i + 1) % len(ang)], ang[i]
    span = (end - start) % (2 * np.pi)
    return float(start + span / 2)


def aha_segments(labels: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, AhaInfo]:
    """An int8 map of AHA segment ids (0 outside the myocardium)."""
    myo = myocardium_mask(labels)
    pool = labels == Label.LV_BLOOD
    rv = labels == Label.RV_BLOOD
    seg = np.zeros(labels.shape, dtype=np.int8)
    with_myo = [k for k in range(labels.shape[0]) if myo[k].any()]
    if not with_myo:
        return seg, AhaInfo(septum_source="fallback")

    # Base is the end with the larger LV (pool + myocardium) cross-section.
    area = [(myo[k] | pool[k]).sum() for k in with_myo]
    half = max(1, len(with_myo) // 2)
    if np.mean(area[:half]) < np.mean(area[-half:]):
        with_myo = with_myo[::-1]
    cavity = [k for k in with_myo if pool[k].any()]
    cap = [k for k in with_myo if not pool[k].any()]
    thirds: list[Any] = np.array_split(np.array(cavity, dtype=int), 3) if cavity else [[], [], []]
    levels = {
        "basal": [int(k) for k in thirds[0]],
        "mid": [int(k) for k in thirds[1]],
        "apical": [int(k) for k in thirds[2]],
        "apex": [int(k) for k in cap],
    }

    # Sign so that positive angles turn from the septum toward the anterior wall. Pixel
    # angles are measured in the (row_direction, column_direction) frame, whose handedness
    # is fixed by the geometry; anterior is found by projecting the patient axis.
    anterior = _in_plane(geometry, ANTERIOR_LPS)
    centres = {k: _slice_centre(myo[k] | pool[k]) for k in with_myo}
    septal: dict[str, list[np.ndarray]] = {name: [] for name in levels}
    for name, ks in levels.items():
        for k in ks:
            a = _septal_angle_from_rv(myo[k], rv[k], centres[k], geometry)
            if a is not None:
                septal[name].append(np.array([np.cos(a), np.sin(a)]))
    all_dirs = [d for dirs in septal.values() for d in dirs]
    source = "rv_insertion" if all_dirs else "fallback"
    global_dir = np.mean(all_dirs, axis=0) if all_dirs else _in_plane(geometry, RIGHT_ANTERIOR_LPS)

    for name, ks in levels.items():
        d = np.mean(septal[name], axis=0) if septal[name] else global_dir
        s_angle = float(np.arctan2(d[1], d[0]))
        perp = np.array([-np.sin(s_angle), np.cos(s_angle)])
        sign = 1.0 if perp @ anterior >= 0 else -1.0
        for k in ks:
            m = myo[k]
            if name == "apex":
                seg[k][m] = 17
                continue
            theta = sign * (_angles(m.shape, centres[k], geometry) - s_angle)
            deg = np.degrees(np.angle(np.exp(1j * theta)))  # (-180, 180]
            if name == "apical":
                # 14 septal [-45, 45), 13 anterior [45, 135), 16 lateral, 15 inferior.
                sector = np.floor(((deg + 45.0) % 360.0) / 90.0).astype(int)
                ids = np.array([14, 13, 16, 15])[sector]
            else:
                # From the septal centre: 2 [0, 60), 1 [60, 120), 6 [120, 180),
                # 5 [-180, -120), 4 [-120, -60), 3 [-60, 0).
                sector = np.floor((deg % 360.0) / 60.0).astype(int)
                ids = np.array([2, 1, 6, 5, 4, 3])[sector]
                if name == "mid":
                    ids = ids + 6
            seg[k][m] = ids[m]
    return seg, AhaInfo(septum_source=source, base_to_apex=with_myo, levels=levels)


def _transmurality_by_segment(
    labels: np.ndarray, segment_map: np.ndarray, geometry: Geometry
) -> tuple[dict[int, float], dict[int, float]]:
    """Mean and max over rays of the scar fraction of the wall, per segment (percent)."""
    myo = myocardium_mask(labels)
    scar = scar_mask(labels)
    pool = labels == Label.LV_BLOOD
    per_segment: dict[int, list[float]] = {}
    angles = np.deg2rad(np.arange(0.0, 360.0, RAY_STEP_DEG))
    for k in range(labels.shape[0]):
        if not myo[k].any():
            continue
        if not pool[k].any():  # apical cap: no cavity to cast from; area fraction instead
            ids = segment_map[k][myo[k]]
            for sid in np.unique(ids):
                in_seg = (segment_map[k] == sid) & myo[k]
                frac = (in_seg & scar[k]).sum() / in_seg.sum()
                per_segment.setdefault(int(sid), []).append(100.0 * float(frac))
            continue
        cy, cx = ndimage.center_of_mass(myo[k] | pool[k])
        ys, xs = np.nonzero(myo[k])
        reach = np.hypot(ys - cy, xs - cx).max() + 2
        radii = np.arange(0.0, reach, RAY_STEP_PX)
        # Rays are straight in mm; convert to pixel steps for anisotropic pixels.
        sy, sx = geometry.pixel_spacing
        iso = min(sx, sy)
        px = cx + np.outer(np.cos(angles), radii) * iso / sx
        py = cy + np.outer(np.sin(angles), radii) * iso / sy
        inside = (px >= -0.5) & (py >= -0.5) & (px < myo.shape[2] - 0.5) & (py < myo.shape[1] - 0.5)
        ix = np.clip(np.rint(px).astype(int), 0, myo.shape[2] - 1)
        iy = np.clip(np.rint(py).astype(int), 0, myo.shape[1] - 1)
        on_myo = myo[k][iy, ix] & inside
        on_scar = scar[k][iy, ix] & inside
        n_myo = on_myo.sum(axis=1)
        for r in np.flatnonzero(n_myo):
            ids = segment_map[k][iy[r], ix[r]][on_myo[r]]
            sid = int(np.bincount(ids).argmax())
            per_segment.setdefault(sid, []).append(100.0 * on_scar[r].sum() / n_myo[r])
    kept = {sid: v for sid, v in per_segment.items() if sid > 0}
    return (
        {sid: float(np.mean(v)) for sid, v in kept.items()},
        {sid: float(np.max(v)) for sid, v in kept.items()},
    )
