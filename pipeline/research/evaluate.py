"""``lge-node evaluate``: accuracy of the pipeline on held-out phantoms, or on any
labelled set from ``lge-node dataset import`` (`evaluate_dataset`), for one model or
several side by side (`compare`).

Per case: Dice and HD95 for myocardium (2+3+4), scar (3+4, in cases that have scar) and
MVO (4, in cases whose true MVO is at least 0.3 ml); volumes against truth. Dice is not
defined for a structure that is absent, so scar-free cases are reported on their own: the
scar volume wrongly found in them. Infarcts missed entirely are counted too. Summary:
patient-level mean Dice, median HD95, volume bias / 95 % limits of agreement / Lin's
concordance correlation (all cases), the median absolute error of scar %, and a
Bland-Altman plot.

Scar Dice is also given by the infarct's thickness: an infarct that is nowhere at least
2 pixels thick in-plane is at the resolution limit, and next to the blood pool it has the
pool's brightness, so where the endocardium lies under it is not in the image. A gallery
of the worst scar cases shows what the numbers hide.

Evaluation sets (``--set``), all seeds disjoint from training (10000+):
- ``classic``: the original generator, seeds 5000+;
- ``randomized``: the domain-randomized generator the first training run uses, seeds 6000+;
- ``wide``: the wider style of the later warm restarts (lower SNR, dilated and thick
  ventricles, grey blood, motion ghosts, reduced phase resolution, multi-coil noise),
  seeds 6500+;
- ``holdout``: a style never trained on (two axes per case beyond the wide ranges),
  seeds 7000+;
- ``varied``: the wide style with hearts of irregular shape (contour and wall-thickness
  harmonics, thinned infarcts), seeds 9000+.
The QC thresholds are set on a separate calibration set (wide and holdout styles
alternating, seeds 8000+: `calibrate_qc`), never on these. Each set reports the targets
of the robustness issue and how many failures (myocardium Dice < 0.80 or scar % off by
> 5 points) the QC flagged.

An imported dataset is scored on the cases the model never trained on (`held_out`): all
of them when it was trained elsewhere, the validation cases of its fold otherwise.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from pipeline.labels import mvo_mask, myocardium_mask, scar_mask
from pipeline.qc import QcCalibration, calibrate
from pipeline.quantify import quantify
from pipeline.research.phantom import PhantomSpec, make_phantom
from pipeline.run import Pipeline
from pipeline.series import load_series
from pipeline.volume import Volume

EVAL_SEED_BASE = 5_000  # below train.TRAIN_SEED_BASE: never used in training
EVAL_SETS = {  # name -> (first seed, phantom style)
    "classic": (EVAL_SEED_BASE, "classic"),
    "randomized": (6_000, "randomized"),
    "wide": (6_500, "wide"),
    "holdout": (7_000, "holdout"),
    "varied": (9_000, "varied"),
    # For the QC thresholds only: wide and holdout styles alternating, so the
    # calibration sees failures of the kinds a shifted appearance causes.
    "calibration": (8_000, "mixed"),
}
MVO_MIN_ML = 0.3
DETECTION_MIN_ML = 0.3  # per-patient scar present / absent
MIN_SCORED_ML = {"myocardium": 0.0, "scar": 0.0, "mvo": MVO_MIN_ML}
CLASSES = {"myocardium": myocardium_mask, "scar": scar_mask, "mvo": mvo_mask}
# Targets of the robustness issue (scar Dice: infarcts at least 2 pixels thick).
TARGETS = {"myocardium": 0.93, "scar": 0.90, "mvo": 0.85}
SCAR_PERCENT_TARGET = 1.0  # median |error|, points
DETECTION_TARGET = 0.95  # sensitivity and specificity
FAILURE_MYO_DICE = 0.80  # a case is a failure below this myocardium Dice ...
FAILURE_SCAR_POINTS = 5.0  # ... or with scar % off by more than this
FLAGGED_GOOD_MAX = 0.10  # share of good cases the QC may flag
THICK_PX = 2  # "thick": a THICK_PX x THICK_PX block of scar fits somewhere in-plane
GALLERY_CASES = 4
PHANTOMS = "held-out phantoms (synthetic data)"


@dataclass
class CaseResult:
    case: str  # a phantom's seed, or an imported case's id
    kind: str
    dice: dict[str, float | None]
    hd95_mm: dict[str, float | None]
    truth_ml: dict[str, float]
    predicted_ml: dict[str, float]
    truth_scar_percent: float
    predicted_scar_percent: float
    seconds_per_image: float
    qc_flags: list[str]
    scar_thickness_px: float | None = None  # thickest in-plane point of the true scar
    scar_thick: bool | None = None  # a THICK_PX block fits in the true scar (None: no scar)
    style: str = "classic"
    holdout_axes: list[str] | None = None
    reliability: float | None = None
    reliability_components: dict[str, float] | None = None
    reliability_measures: dict[str, float] | None = None
    low_confidence: bool = False

    @property
    def failed(self) -> bool:
        myo = self.dice["myocardium"]
        return (myo is None or myo < FAILURE_MYO_DICE) or abs(
            self.predicted_scar_percent - self.truth_scar_percent
        ) > FAILURE_SCAR_POINTS


@dataclass
class CasePanel:
    """The slice with the most true scar, cropped to the heart, for the gallery."""

    case: str
    image: np.ndarray
    truth_scar: np.ndarray
    predicted_scar: np.ndarray
    myocardium: np.ndarray


def dice(a: np.ndarray, b: np.ndarray) -> float | None:
    total = int(a.sum() + b.sum())
    return 2.0 * float((a & b).sum()) / total if total else None


def hd95(a: np.ndarray, b: np.ndarray, spacing: tuple[float, float, float]) -> float | None:
    """95th percentile of the symmetric surface distance (mm)."""
    if not a.any() or not b.any():
        return None
    sa = a & ~ndimage.binary_erosion(a)
    sb = b & ~ndimage.binary_erosion(b)
    da = ndimage.distance_transform_edt(~sb, sampling=spacing)[sa]
    db = ndimage.distance_transform_edt(~sa, sampling=spacing)[sb]
    return float(np.percentile(np.r_[da, db], 95))


def thickness_px(mask: np.ndarray) -> float | None:
    """Thickest in-plane point of a (z, y, x) mask, in pixels: 2 * max distance to the
    outside - 1 (a one-pixel rim: 1, a three-pixel band: 3)."""
    if not mask.any():
        return None
    deepest = max(float(ndimage.distance_transform_edt(sl).max()) for sl in mask if sl.any())
    return 2.0 * deepest - 1.0


def fits_block(mask: np.ndarray, px: int = THICK_PX) -> bool:
    """Whether a px x px block of the (z, y, x) mask fits in some slice."""
    block = np.ones((1, px, px), dtype=bool)
    return bool(ndimage.binary_erosion(mask, structure=block).any())


def ccc(x: np.ndarray, y: np.ndarray) -> float:
    """Lin's concordance correlation coefficient."""
    mx, my = x.mean(), y.mean()
    cov = ((x - mx) * (y - my)).mean()
    return float(2 * cov / (x.var() + y.var() + (mx - my) ** 2)) if len(x) > 1 else float("nan")


def eval_specs(n: int, eval_set: str = "classic") -> list[PhantomSpec]:
    # Both contrasts, cases with and without MVO (a third forced), scar-free seeds included.
    base, style = EVAL_SETS[eval_set]
    return [
        PhantomSpec(
            seed=base + i,
            kind="psir" if i % 2 == 0 else "magnitude",
            mvo=True if i % 3 == 0 else None,
            enhanced=i % 4 == 1,
            style=("holdout" if i % 2 else "wide") if style == "mixed" else style,
        )
        for i in range(n)
    ]


def _panel(case: str, image: np.ndarray, truth: np.ndarray, predicted: np.ndarray) -> CasePanel:
    t, p = scar_mask(truth), scar_mask(predicted)
    z = int(np.argmax(t.sum(axis=(1, 2))))
    ys, xs = np.nonzero(truth[z] > 0)
    box = np.s_[max(ys.min() - 4, 0) : ys.max() + 5, max(xs.min() - 4, 0) : xs.max() + 5]
    return CasePanel(case, image[z][box], t[z][box], p[z][box], myocardium_mask(truth)[z][box])


@dataclass
class LabelledCase:
    """A stack with its true labels, as the pipeline will see it."""

    case: str
    volume: Volume
    truth: np.ndarray  # (z, y, x) `pipeline.labels` values
    kind: str  # psir / magnitude (+enhanced) for phantoms; "imported" otherwise
    style: str  # phantom style, or the dataset's name
    truth_scar_percent: float | None = None  # None: measured from ``truth``
    holdout_axes: list[str] | None = None


def phantom_case(spec: PhantomSpec, workdir: Path) -> LabelledCase:
    case = make_phantom(workdir / str(spec.seed), spec)
    truth_doc = json.loads((case.out_dir / "truth.json").read_text())["phantom"]
    return LabelledCase(
        case=str(spec.seed),
        volume=load_series(case.out_dir / "dicom"),
        truth=case.labels,
        kind=spec.kind + ("+enhanced" if spec.enhanced else ""),
        style=spec.style,
        truth_scar_percent=case.truth.scar_percent,
        holdout_axes=truth_doc.get("holdout_axes") or None,
    )


def evaluate_case(
    pipeline: Pipeline, spec: PhantomSpec, workdir: Path
) -> tuple[CaseResult, CasePanel | None]:
    return score_case(pipeline, phantom_case(spec, workdir))


def score_case(pipeline: Pipeline, case: LabelledCase) -> tuple[CaseResult, CasePanel | None]:
    """Run the pipeline on ``case`` and score it against its truth."""
    volume = case.volume
    result = pipeline.run(volume)
    spacing = volume.geometry.spacing_zyx
    voxel = volume.geometry.voxel_volume_ml
    dices, hds, truth_ml, pred_ml = {}, {}, {}, {}
    for name, fn in CLASSES.items():
        t, p = fn(case.truth), fn(result.labels)
        truth_ml[name] = float(t.sum()) * voxel
        pred_ml[name] = float(p.sum()) * voxel
        scored = bool(t.any()) and truth_ml[name] >= MIN_SCORED_ML[name]
        dices[name] = dice(t, p) if scored else None
        hds[name] = hd95(t, p, spacing) if scored else None
    truth_percent = case.truth_scar_percent
    if truth_percent is None:
        nonviable = pipeline.settings.nonviable_percent
        truth_percent = quantify(case.truth, volume.geometry, nonviable).scar_percent
    qc = result.metrics.qc
    true_scar = scar_mask(case.truth)
    row = CaseResult(
        case=case.case,
        kind=case.kind,
        dice=dices,
        hd95_mm=hds,
        truth_ml=truth_ml,
        predicted_ml=pred_ml,
        truth_scar_percent=truth_percent,
        predicted_scar_percent=result.metrics.scar_percent,
        seconds_per_image=result.timings["total"] / volume.array.shape[0],
        qc_flags=qc.flags,
        scar_thickness_px=thickness_px(true_scar),
        scar_thick=fits_block(true_scar) if true_scar.any() else None,
        style=case.style,
        holdout_axes=case.holdout_axes,
        reliability=qc.reliability,
        reliability_components=qc.reliability_components,
        reliability_measures=qc.reliability_measures,
        low_confidence=qc.low_confidence,
    )
    panel = _panel(case.case, volume.array, case.truth, result.labels) if true_scar.any() else None
    return row, panel


def summarize(cases: list[CaseResult]) -> dict:
    out: dict = {"cases": len(cases), "classes": {}}
    for name in CLASSES:
        d = [v for c in cases if (v := c.dice[name]) is not None]
        h = [v for c in cases if (v := c.hd95_mm[name]) is not None]
        t = np.array([c.truth_ml[name] for c in cases])
        p = np.array([c.predicted_ml[name] for c in cases])
        diff = p - t
        out["classes"][name] = {
            "n_scored": len(d),
            "mean_dice": float(np.mean(d)) if d else None,
            "sd_dice": float(np.std(d)) if d else None,
            "target_dice": TARGETS[name],
            "median_hd95_mm": float(np.median(h)) if h else None,
            "bias_ml": float(diff.mean()),
            "loa_ml": [
                float(diff.mean() - 1.96 * diff.std(ddof=1)),
                float(diff.mean() + 1.96 * diff.std(ddof=1)),
            ],
            "ccc": ccc(t, p),
        }
    free = [c for c in cases if c.truth_ml["scar"] == 0]
    out["scar_free_cases"] = {
        "n": len(free),
        "with_false_scar": sum(c.predicted_ml["scar"] > 0 for c in free),
        "max_false_scar_ml": max((c.predicted_ml["scar"] for c in free), default=0.0),
    }
    out["missed_infarcts"] = sum(
        c.truth_ml["scar"] > 0 and c.predicted_ml["scar"] == 0 for c in cases
    )
    out["scar_by_thickness"] = {}
    for stratum, keep in (("thin", False), ("thick", True)):
        d = [v for c in cases if (v := c.dice["scar"]) is not None and c.scar_thick is keep]
        out["scar_by_thickness"][stratum] = {
            "n": len(d), "mean_dice": float(np.mean(d)) if d else None,
        }  # fmt: skip
    out["detection"] = detection(cases)
    out["qc"] = qc_catch(cases)
    err = np.abs([c.predicted_scar_percent - c.truth_scar_percent for c in cases])
    out["scar_percent_median_abs_error"] = float(np.median(err))
    out["seconds_per_image_mean"] = float(np.mean([c.seconds_per_image for c in cases]))
    out["targets"] = targets(out)
    return out


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """95 % Wilson score interval of the proportion k / n (None when n is 0).

    The sets are small (a few dozen cases), so a rate such as 2 of 22 good cases flagged
    is known only roughly; the interval says how roughly, and unlike the normal
    approximation it stays inside [0, 1] at 0 of n and n of n."""
    if n == 0:
        return None
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, float(centre - half)), min(1.0, float(centre + half)))


def _ci(interval: tuple[float, float] | None, percent: bool = False) -> str:
    if interval is None:
        return "no cases"
    lo, hi = interval
    if percent:
        return f"95 % CI {lo * 100:.0f}-{hi * 100:.0f} %"
    return f"95 % CI {lo:.2f}-{hi:.2f}"


def _rate(value: float | None, interval: tuple[float, float] | None) -> str:
    """A detection rate and its interval: "0.905 (95 % CI 0.71-0.97)"."""
    return ("n/a" if value is None else f"{value:.3f}") + f" ({_ci(interval)})"


def detection(cases: list[CaseResult]) -> dict:
    """Per patient: scar of at least DETECTION_MIN_ML present or absent."""
    tp = sum(
        c.truth_ml["scar"] >= DETECTION_MIN_ML and c.predicted_ml["scar"] >= DETECTION_MIN_ML
        for c in cases
    )
    fn = sum(
        c.truth_ml["scar"] >= DETECTION_MIN_ML and c.predicted_ml["scar"] < DETECTION_MIN_ML
        for c in cases
    )
    tn = sum(
        c.truth_ml["scar"] < DETECTION_MIN_ML and c.predicted_ml["scar"] < DETECTION_MIN_ML
        for c in cases
    )
    fp = sum(c.truth_ml["scar"] < DETECTION_MIN_ML and c.predicted_ml["scar"] >= DETECTION_MIN_ML
             for c in cases)  # fmt: skip
    return {
        "tp": tp, "fn": fn, "tn": tn, "fp": fp,
        "sensitivity": tp / (tp + fn) if tp + fn else None,
        "specificity": tn / (tn + fp) if tn + fp else None,
        "sensitivity_ci": wilson(tp, tp + fn),
        "specificity_ci": wilson(tn, tn + fp),
    }  # fmt: skip


def qc_catch(cases: list[CaseResult]) -> dict:
    """How many failures the QC flagged (low_confidence), and how many good cases."""
    failed = [c for c in cases if c.failed]
    good = [c for c in cases if not c.failed]
    caught = sum(c.low_confidence for c in failed)
    good_flagged = sum(c.low_confidence for c in good)
    return {
        "failures": len(failed),
        "failures_flagged": caught,
        "unflagged_failures": [c.case for c in failed if not c.low_confidence],
        "good": len(good),
        "good_flagged": good_flagged,
        "good_flagged_share": good_flagged / len(good) if good else 0.0,
        "failures_flagged_ci": wilson(caught, len(failed)),
        "good_flagged_ci": wilson(good_flagged, len(good)),
    }


def targets(summary: dict) -> dict[str, dict]:
    """Each target of the robustness issue: the value, the goal, met or not."""
    cls = summary["classes"]
    det = summary["detection"]
    qc = summary["qc"]
    rows = {
        "myocardium Dice": (cls["myocardium"]["mean_dice"], TARGETS["myocardium"], ">="),
        f"scar Dice, infarcts >= {THICK_PX} px thick": (
            summary["scar_by_thickness"]["thick"]["mean_dice"], TARGETS["scar"], ">=",
        ),
        "MVO Dice (>= 0.3 ml)": (cls["mvo"]["mean_dice"], TARGETS["mvo"], ">="),
        "scar detection sensitivity": (det["sensitivity"], DETECTION_TARGET, ">="),
        "scar detection specificity": (det["specificity"], DETECTION_TARGET, ">="),
        "median |scar % error| (points)": (
            summary["scar_percent_median_abs_error"], SCAR_PERCENT_TARGET, "<=",
        ),
        "unflagged failures": (len(qc["unflagged_failures"]), 0, "<="),
        "good cases flagged": (qc["good_flagged_share"], FLAGGED_GOOD_MAX, "<="),
    }  # fmt: skip
    out = {}
    for name, (value, goal, op) in rows.items():
        met = None if value is None else (value >= goal if op == ">=" else value <= goal)
        out[name] = {"value": value, "goal": goal, "op": op, "met": met}
    return out


def bland_altman(cases: list[CaseResult], path: Path, what: str = PHANTOMS) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for ax, name in zip(axes, CLASSES, strict=True):
        t = np.array([c.truth_ml[name] for c in cases])
        p = np.array([c.predicted_ml[name] for c in cases])
        mean, diff = (t + p) / 2, p - t
        bias, sd = diff.mean(), diff.std(ddof=1)
        ax.scatter(mean, diff, s=18)
        for y, style in ((bias, "-"), (bias + 1.96 * sd, "--"), (bias - 1.96 * sd, "--")):
            ax.axhline(y, color="gray", ls=style, lw=1)
        ax.set_title(f"{name}: bias {bias:+.2f} ml, LoA ±{1.96 * sd:.2f} ml")
        ax.set_xlabel("mean of model and truth (ml)")
        ax.set_ylabel("model - truth (ml)")
    fig.suptitle(f"Bland-Altman, {what} (research only, not clinical validation)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def gallery(
    cases: list[CaseResult], panels: dict[str, CasePanel], path: Path, what: str = PHANTOMS
) -> None:
    """The worst scar cases: image, true scar (red), model scar (cyan), true myocardium."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = sorted(
        (c for c in cases if c.dice["scar"] is not None and c.case in panels),
        key=lambda c: c.dice["scar"] or 0.0,
    )[:GALLERY_CASES]
    if not scored:
        return
    fig, axes = plt.subplots(1, len(scored), figsize=(4 * len(scored), 4.4), squeeze=False)
    for ax, c in zip(axes[0], scored, strict=True):
        p = panels[c.case]
        ax.imshow(p.image, cmap="gray", interpolation="nearest")
        ax.contour(p.myocardium, [0.5], colors="yellow", linewidths=0.6)
        ax.contour(p.truth_scar, [0.5], colors="red", linewidths=1.2)
        if p.predicted_scar.any():
            ax.contour(p.predicted_scar, [0.5], colors="cyan", linewidths=1.2)
        qc = "LOW CONFIDENCE" if c.low_confidence else "not flagged"
        rel = f" {c.reliability:.2f}" if c.reliability is not None else ""
        ax.set_title(
            f"{c.case} ({c.kind}, {c.style})\nscar Dice {c.dice['scar']:.2f}, "
            f"{c.truth_ml['scar']:.1f} ml, thickest {c.scar_thickness_px:.0f} px\n"
            f"scar % {c.predicted_scar_percent:.1f} vs {c.truth_scar_percent:.1f}; QC: {qc}{rel}",
            fontsize=8,
            color="darkred" if c.failed and not c.low_confidence else "black",
        )
        ax.axis("off")
    fig.suptitle(
        "Worst scar cases: true scar red, model cyan, true myocardium yellow "
        f"(slice with the most true scar; {what})", fontsize=10,
    )  # fmt: skip
    fig.tight_layout(rect=(0, 0, 1, 0.88))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def markdown_table(summary: dict) -> str:
    rows = [
        "| class | mean Dice (SD) | target | median HD95 (mm) | bias (ml) | 95 % LoA (ml) | CCC |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in summary["classes"].items():
        dice_txt = f"{s['mean_dice']:.3f} ({s['sd_dice']:.3f})" if s["mean_dice"] else "n/a"
        hd = f"{s['median_hd95_mm']:.2f}" if s["median_hd95_mm"] is not None else "n/a"
        label = f"{name} (n={s['n_scored']})"
        rows.append(
            f"| {label} | {dice_txt} | ≥ {s['target_dice']:.2f} | {hd} | {s['bias_ml']:+.2f} | "
            f"{s['loa_ml'][0]:+.2f} … {s['loa_ml'][1]:+.2f} | {s['ccc']:.3f} |"
        )
    rows.append("")
    free = summary["scar_free_cases"]
    rows.append(
        f"Scar-free cases: {free['n']}, of which {free['with_false_scar']} with false scar "
        f"(at most {free['max_false_scar_ml']:.2f} ml). Infarcts missed entirely: "
        f"{summary['missed_infarcts']}."
    )
    strata = summary.get("scar_by_thickness", {})
    if strata:
        parts = [
            f"{label} (n={strata[key]['n']}) "
            + (f"{strata[key]['mean_dice']:.3f}" if strata[key]["mean_dice"] is not None
               else "n/a")
            for key, label in (("thin", f"thinner than {THICK_PX} px"),
                               ("thick", f"at least {THICK_PX} px thick"))
        ]  # fmt: skip
        rows.append(f"Scar Dice by the infarct's thickest in-plane point: {'; '.join(parts)}.")
    det = summary["detection"]
    rows.append(
        f"Scar detection (≥ {DETECTION_MIN_ML} ml): {det['tp']} TP, {det['fn']} FN, "
        f"{det['tn']} TN, {det['fp']} FP; sensitivity "
        f"{_rate(det['sensitivity'], det['sensitivity_ci'])}, specificity "
        f"{_rate(det['specificity'], det['specificity_ci'])}."
    )
    rows.append(
        f"Median absolute error of scar % of LV: "
        f"{summary['scar_percent_median_abs_error']:.2f} points. "
        f"Mean pipeline time {summary['seconds_per_image_mean']:.3f} s per image."
    )
    qc = summary["qc"]
    rows.append(
        f"QC: {qc['failures_flagged']} of {qc['failures']} failures flagged low_confidence "
        f"(unflagged: {', '.join(qc['unflagged_failures']) or 'none'}; "
        f"{_ci(qc['failures_flagged_ci'], percent=True)}); {qc['good_flagged']} of "
        f"{qc['good']} good cases flagged ({qc['good_flagged_share'] * 100:.0f} %, "
        f"{_ci(qc['good_flagged_ci'], percent=True)})."
    )
    rows += ["", "| target | value | goal | met |", "|---|---|---|---|"]
    for name, t in summary["targets"].items():
        v = t["value"]
        shown = "n/a" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))
        met = "n/a" if t["met"] is None else ("yes" if t["met"] else "**no**")
        rows.append(f"| {name} | {shown} | {t['op']} {t['goal']} | {met} |")
    return "\n".join(rows)


def run_cases(
    pipeline: Pipeline, cases: Iterable[LabelledCase], out_dir: Path, what: str, total: int
) -> tuple[dict, list[CaseResult]]:
    """Score every case; write ``cases.json``, ``summary.json``, ``table.md``, the
    Bland-Altman plot and the worst-case gallery into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    results, panels = [], {}
    for case in tqdm(cases, desc=out_dir.name, unit="case", total=total):
        row, panel = score_case(pipeline, case)
        results.append(row)
        if panel is not None:
            panels[row.case] = panel
    if not results:
        raise ValueError(f"no cases to evaluate ({what})")
    summary = summarize(results)
    summary["evaluated_on"] = what
    summary["test_time_mirroring"] = _mode(pipeline)
    (out_dir / "cases.json").write_text(json.dumps([asdict(r) for r in results], indent=2))
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    (out_dir / "table.md").write_text(markdown_table(summary) + "\n")
    bland_altman(results, out_dir / "bland_altman.png", what)
    gallery(results, panels, out_dir / "worst_scar_cases.png", what)
    return summary, results


def evaluate(
    pipeline: Pipeline, n_cases: int, out_dir: Path, eval_set: str = "classic"
) -> tuple[dict, list[CaseResult]]:
    """A phantom set (`EVAL_SETS`), ``n_cases`` of it: its summary and its cases."""
    specs = eval_specs(n_cases, eval_set)

    def cases(tmp: Path) -> Iterator[LabelledCase]:
        for spec in specs:
            yield phantom_case(spec, tmp)

    with tempfile.TemporaryDirectory() as tmp:
        what = f"held-out phantoms, {eval_set} set (synthetic data)"
        return run_cases(pipeline, cases(Path(tmp)), out_dir, what, len(specs))


def evaluate_dataset(
    pipeline: Pipeline, dataset: Path, out_dir: Path, case_ids: list[str]
) -> tuple[dict, list[CaseResult]]:
    """The cases ``case_ids`` of an imported dataset, on their whole images."""
    from pipeline.research.importer import read_volume

    def cases() -> Iterator[LabelledCase]:
        for case_id in case_ids:
            volume, labels = read_volume(dataset, case_id)
            yield LabelledCase(case_id, volume, labels, "imported", dataset.name)

    what = f"{len(case_ids)} cases of dataset {dataset.name}"
    return run_cases(pipeline, cases(), out_dir, what, len(case_ids))


def held_out(dataset: Path, manifest: dict) -> tuple[list[str], str]:
    """The cases of ``dataset`` that the model of ``manifest`` never saw in training, and
    why those: a model trained on another dataset saw none of them; one trained on this
    dataset saw the training cases of each of its folds, and its detector every case
    outside the validation cases of fold 0 (the YOLO split)."""
    card = json.loads((dataset / "dataset_card.json").read_text())
    splits = json.loads((dataset / "nnunet" / "splits_final.json").read_text())
    every = sorted(splits[0]["train"] + splits[0]["val"])
    data = manifest.get("training_data", {})
    same = (card.get("import_id") and data.get("import_id") == card.get("import_id")) or (
        data.get("dataset") == str(dataset.resolve())
    )
    if not same:
        return every, "the model was not trained on this dataset: every case"
    folds = [str(f) for f in manifest.get("settings", {}).get("folds", ["all"])]
    if "all" in folds:
        return [], "the model was trained on every case of this dataset"
    seen = {c for f in folds for c in splits[int(f)]["train"]}
    unseen = sorted(set(splits[0]["val"]) - seen)
    return unseen, f"the validation cases of fold {', '.join(folds)} (never trained on)"


def compare(runs: dict[str, tuple[dict, list[CaseResult]]], out_dir: Path) -> str:
    """Several models on the same cases, side by side: ``comparison.md`` (the summary
    figures per model, then each model's per-case Dice against the first's, paired:
    mean difference, Wilcoxon signed-rank p, wins), ``comparison.json`` and a per-case
    scatter plot ``comparison.png``. Returns the markdown."""
    from scipy.stats import wilcoxon

    names = list(runs)
    summaries = {n: runs[n][0] for n in names}

    def fmt(v: object) -> str:
        return "n/a" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))

    rows: list[tuple[str, list[object]]] = []
    for cls in CLASSES:
        rows.append((f"{cls} Dice", [summaries[n]["classes"][cls]["mean_dice"] for n in names]))
    rows += [
        (f"scar Dice, >= {THICK_PX} px thick",
         [summaries[n]["scar_by_thickness"]["thick"]["mean_dice"] for n in names]),
        ("myocardium HD95 (mm, median)",
         [summaries[n]["classes"]["myocardium"]["median_hd95_mm"] for n in names]),
        ("scar volume bias (ml)", [summaries[n]["classes"]["scar"]["bias_ml"] for n in names]),
        ("median abs scar % error (points)",
         [summaries[n]["scar_percent_median_abs_error"] for n in names]),
        ("detection sensitivity", [summaries[n]["detection"]["sensitivity"] for n in names]),
        ("detection specificity", [summaries[n]["detection"]["specificity"] for n in names]),
        ("failures", [summaries[n]["qc"]["failures"] for n in names]),
        ("unflagged failures", [len(summaries[n]["qc"]["unflagged_failures"]) for n in names]),
        ("good cases flagged", [summaries[n]["qc"]["good_flagged"] for n in names]),
        ("seconds per image", [summaries[n]["seconds_per_image_mean"] for n in names]),
    ]  # fmt: skip
    lines = ["| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    lines += [f"| {label} | " + " | ".join(fmt(v) for v in values) + " |" for label, values in rows]
    paired: dict[str, dict[str, dict]] = {}
    base = {r.case: r for r in runs[names[0]][1]}
    lines += ["", f"Per case, against {names[0]} (paired, the cases both scored):", "",
              "| model | class | n | mean Dice difference | Wilcoxon p | better / worse |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for name in names[1:]:
        paired[name] = {}
        for cls in CLASSES:
            diff = np.array([b - a for a, b in _paired(base, runs[name][1], cls)], dtype=float)
            p = None
            if len(diff) >= 2 and np.any(diff != 0):
                p = float(wilcoxon(diff).pvalue)
            stats = {
                "n": len(diff),
                "mean_difference": float(diff.mean()) if len(diff) else None,
                "wilcoxon_p": p,
                "better": int((diff > 0).sum()),
                "worse": int((diff < 0).sum()),
            }
            paired[name][cls] = stats
            lines.append(
                f"| {name} | {cls} | {stats['n']} | "
                + (f"{stats['mean_difference']:+.3f}" if stats["n"] else "n/a")
                + f" | {fmt(p)} | {stats['better']} / {stats['worse']} |"
            )
    text = "\n".join(lines)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "comparison.md").write_text(text + "\n")
    doc = {"models": names, "summaries": summaries, "paired_against_first": paired}
    (out_dir / "comparison.json").write_text(json.dumps(doc, indent=2))
    _comparison_plot(runs, out_dir / "comparison.png")
    return text


def _paired(
    base: dict[str, CaseResult], rows: list[CaseResult], cls: str
) -> list[tuple[float, float]]:
    """(baseline Dice, this model's Dice) of ``cls`` for each case both scored."""
    out = []
    for r in rows:
        a = base[r.case].dice[cls] if r.case in base else None
        b = r.dice[cls]
        if a is not None and b is not None:
            out.append((a, b))
    return out


def _comparison_plot(runs: dict[str, tuple[dict, list[CaseResult]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(runs)
    base = {r.case: r for r in runs[names[0]][1]}
    fig, axes = plt.subplots(1, len(CLASSES), figsize=(5 * len(CLASSES), 4.6))
    for ax, cls in zip(axes, CLASSES, strict=True):
        for name in names[1:]:
            xy = _paired(base, runs[name][1], cls)
            if xy:
                ax.scatter(*zip(*xy, strict=True), s=18, label=name)
        ax.plot([0, 1], [0, 1], color="gray", lw=1, ls="--")
        ax.set(xlim=(0, 1), ylim=(0, 1), title=f"{cls} Dice per case",
               xlabel=names[0], ylabel="other model")  # fmt: skip
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle("Above the diagonal: better than " + names[0] + " (research only)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def reflag(cases: list[CaseResult], calibration: QcCalibration) -> None:
    """Recompute each case's low_confidence from its raw measures under ``calibration``
    (what `pipeline.qc.assess` would decide; a case without measures had no myocardium)."""
    for c in cases:
        m = c.reliability_measures or {}
        c.low_confidence = not m or any(
            calibration.thresholds[k].flags(v) for k, v in m.items() if k in calibration.thresholds
        )


def _mode(pipeline: Pipeline) -> str:
    if not pipeline.mirroring:
        return "off"
    axes = pipeline.segmenter.predictor.allowed_mirroring_axes
    return f"on (axes {', '.join(str(a) for a in axes or ())})"


def calibrate_qc(pipeline: Pipeline, n_cases: int, out_dir: Path, manifest: Path) -> dict:
    """Evaluate the calibration set, derive the QC thresholds from it, write them into the
    model's ``manifest.json`` (section ``qc``, with the inference mode they hold for in
    section ``inference``) and report the catch rate under them."""
    summary, cases = evaluate(pipeline, n_cases, out_dir, "calibration")
    base = EVAL_SETS["calibration"][0]
    cal = calibrate(
        [c.reliability_measures or {} for c in cases],
        [c.failed for c in cases],
        source=f"calibration set: {len(cases)} phantoms, seeds {base}-{base + len(cases) - 1}, "
        f"wide and holdout styles alternating, test-time mirroring {_mode(pipeline)}",
    )
    doc = json.loads(manifest.read_text()) if manifest.is_file() else {}
    doc["qc"] = cal.to_json()
    doc["inference"] = {"test_time_mirroring": pipeline.mirroring}
    if pipeline.mirroring and pipeline.bundle.mirror_axes is not None:
        doc["inference"]["mirror_axes"] = list(pipeline.bundle.mirror_axes)
    manifest.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    reflag(cases, cal)
    summary["qc"] = qc_catch(cases)
    summary["targets"] = targets(summary)
    summary["qc_calibration"] = cal.to_json()
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    (out_dir / "table.md").write_text(markdown_table(summary) + "\n")
    return summary
