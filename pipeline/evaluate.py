"""``lge-node evaluate``: accuracy of the pipeline on held-out phantoms.

Per case: Dice and HD95 for myocardium (2+3+4), scar (3+4, in cases that have scar) and
MVO (4, in cases whose true MVO is at least 0.3 ml); volumes against truth. Dice is not
defined for a structure that is absent, so scar-free cases are reported on their own: the
scar volume wrongly found in them. Infarcts missed entirely are counted too. Summary:
patient-level mean Dice, median HD95, volume bias / 95 % limits of agreement / Lin's
concordance correlation (all cases), the median absolute error of scar %, and a
Bland-Altman plot.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from pipeline.labels import mvo_mask, myocardium_mask, scar_mask
from pipeline.phantom import PhantomSpec, make_phantom
from pipeline.run import Pipeline
from pipeline.series import load_series

EVAL_SEED_BASE = 5_000  # below train.TRAIN_SEED_BASE: never used in training
MVO_MIN_ML = 0.3
MIN_SCORED_ML = {"myocardium": 0.0, "scar": 0.0, "mvo": MVO_MIN_ML}
CLASSES = {"myocardium": myocardium_mask, "scar": scar_mask, "mvo": mvo_mask}
TARGETS = {"myocardium": 0.90, "scar": 0.85, "mvo": 0.80}


@dataclass
class CaseResult:
    seed: int
    kind: str
    dice: dict[str, float | None]
    hd95_mm: dict[str, float | None]
    truth_ml: dict[str, float]
    predicted_ml: dict[str, float]
    truth_scar_percent: float
    predicted_scar_percent: float
    seconds_per_image: float
    qc_flags: list[str]


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


def ccc(x: np.ndarray, y: np.ndarray) -> float:
    """Lin's concordance correlation coefficient."""
    mx, my = x.mean(), y.mean()
    cov = ((x - mx) * (y - my)).mean()
    return float(2 * cov / (x.var() + y.var() + (mx - my) ** 2)) if len(x) > 1 else float("nan")


def eval_specs(n: int) -> list[PhantomSpec]:
    # Both contrasts, cases with and without MVO (a third forced), scar-free seeds included.
    return [
        PhantomSpec(
            seed=EVAL_SEED_BASE + i,
            kind="psir" if i % 2 == 0 else "magnitude",
            mvo=True if i % 3 == 0 else None,
            enhanced=i % 4 == 1,
        )
        for i in range(n)
    ]


def evaluate_case(pipeline: Pipeline, spec: PhantomSpec, workdir: Path) -> CaseResult:
    case = make_phantom(workdir / str(spec.seed), spec)
    volume = load_series(case.out_dir / "dicom")
    result = pipeline.run(volume)
    spacing = volume.geometry.spacing_zyx
    voxel = volume.geometry.voxel_volume_ml
    dices, hds, truth_ml, pred_ml = {}, {}, {}, {}
    for name, fn in CLASSES.items():
        t, p = fn(case.labels), fn(result.labels)
        truth_ml[name] = float(t.sum()) * voxel
        pred_ml[name] = float(p.sum()) * voxel
        scored = bool(t.any()) and truth_ml[name] >= MIN_SCORED_ML[name]
        dices[name] = dice(t, p) if scored else None
        hds[name] = hd95(t, p, spacing) if scored else None
    return CaseResult(
        seed=spec.seed,
        kind=spec.kind + ("+enhanced" if spec.enhanced else ""),
        dice=dices,
        hd95_mm=hds,
        truth_ml=truth_ml,
        predicted_ml=pred_ml,
        truth_scar_percent=case.truth.scar_percent,
        predicted_scar_percent=result.metrics.scar_percent,
        seconds_per_image=result.timings["total"] / volume.array.shape[0],
        qc_flags=result.metrics.qc.flags,
    )


def summarize(cases: list[CaseResult]) -> dict:
    out: dict = {"cases": len(cases), "classes": {}}
    for name in CLASSES:
        d = [c.dice[name] for c in cases if c.dice[name] is not None]
        h = [c.hd95_mm[name] for c in cases if c.hd95_mm[name] is not None]
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
    err = np.abs([c.predicted_scar_percent - c.truth_scar_percent for c in cases])
    out["scar_percent_median_abs_error"] = float(np.median(err))
    out["seconds_per_image_mean"] = float(np.mean([c.seconds_per_image for c in cases]))
    return out


def bland_altman(cases: list[CaseResult], path: Path) -> None:
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
    fig.suptitle("Bland-Altman, held-out phantoms (synthetic data, not clinical validation)")
    fig.tight_layout()
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
    rows.append(
        f"Median absolute error of scar % of LV: "
        f"{summary['scar_percent_median_abs_error']:.2f} points (target ≤ 2). "
        f"Mean pipeline time {summary['seconds_per_image_mean']:.3f} s per image."
    )
    return "\n".join(rows)


def evaluate(pipeline: Pipeline, n_cases: int, out_dir: Path) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in tqdm(eval_specs(n_cases), desc="evaluating", unit="case"):
            results.append(evaluate_case(pipeline, spec, Path(tmp)))
    summary = summarize(results)
    (out_dir / "cases.json").write_text(json.dumps([asdict(r) for r in results], indent=2))
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    (out_dir / "table.md").write_text(markdown_table(summary) + "\n")
    bland_altman(results, out_dir / "bland_altman.png")
    return summary
