"""The accuracy metrics behind the README table, on inputs with known answers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.research.evaluate import (
    CaseResult,
    ccc,
    compare,
    dice,
    fits_block,
    hd95,
    held_out,
    markdown_table,
    summarize,
    thickness_px,
    wilson,
)


def cube(shift: int = 0) -> np.ndarray:
    m = np.zeros((10, 40, 40), dtype=bool)
    m[2:8, 10 + shift : 20 + shift, 10:20] = True
    return m


def test_dice() -> None:
    assert dice(cube(), cube()) == 1.0
    assert dice(cube(), cube(20)) == 0.0
    assert dice(cube(), cube(5)) == pytest.approx(0.5)
    assert dice(np.zeros((2, 2, 2), bool), np.zeros((2, 2, 2), bool)) is None


def test_hd95_is_the_shift_in_mm() -> None:
    assert hd95(cube(), cube(), (8.0, 1.5, 1.5)) == 0.0
    assert hd95(cube(), cube(2), (8.0, 1.5, 1.5)) == pytest.approx(3.0)
    assert hd95(cube(), np.zeros_like(cube()), (1, 1, 1)) is None


def test_ccc() -> None:
    x = np.array([1.0, 2.0, 3.0, 4.0])
    assert ccc(x, x) == pytest.approx(1.0)
    assert ccc(x, x + 1) < 1.0  # a bias lowers concordance, not correlation


def test_thickness_in_pixels() -> None:
    m = np.zeros((3, 30, 30), dtype=bool)
    assert thickness_px(m) is None
    m[1, 10, 5:25] = True  # a one-pixel rim
    assert thickness_px(m) == pytest.approx(1.0)
    m[2, 10:13, 5:25] = True  # a three-pixel band on another slice: the thickest counts
    assert thickness_px(m) == pytest.approx(3.0)


def test_thick_means_a_two_by_two_block_fits_somewhere_in_plane() -> None:
    m = np.zeros((3, 30, 30), dtype=bool)
    m[0, 10, 5:25] = True  # one pixel thick
    m[1, 5:25, 10] = True
    assert not fits_block(m)
    m[2, 10:12, 5:7] = True  # a 2 x 2 block on another slice
    assert fits_block(m)
    z = np.zeros((3, 30, 30), dtype=bool)
    z[0:2, 10, 10] = True  # two pixels through-plane are not thick in-plane
    assert not fits_block(z)


def _case(
    truth_scar: float,
    pred_scar: float,
    d: float | None,
    thick: float | None = 3.0,
    myo: float = 0.9,
    flagged: bool = False,
    case: str = "0",
    dices: dict | None = None,
) -> CaseResult:
    return CaseResult(
        case=case,
        kind="psir",
        dice=dices or {"myocardium": myo, "scar": d, "mvo": None},
        hd95_mm={"myocardium": 1.0, "scar": None, "mvo": None},
        truth_ml={"myocardium": 80.0, "scar": truth_scar, "mvo": 0.0},
        predicted_ml={"myocardium": 79.0, "scar": pred_scar, "mvo": 0.0},
        truth_scar_percent=100 * truth_scar / 80,
        predicted_scar_percent=100 * pred_scar / 79,
        seconds_per_image=0.03,
        qc_flags=[],
        scar_thickness_px=thick if truth_scar else None,
        scar_thick=(thick >= 2) if truth_scar and thick is not None else None,
        low_confidence=flagged,
    )


def test_scar_free_cases_and_missed_infarcts_are_reported_not_hidden() -> None:
    summary = summarize([_case(5.0, 4.0, 0.8), _case(1.0, 0.0, 0.0), _case(0.0, 0.6, None)])
    assert summary["classes"]["scar"]["n_scored"] == 2
    assert summary["classes"]["scar"]["mean_dice"] == pytest.approx(0.4)  # the miss counts
    assert summary["missed_infarcts"] == 1
    assert summary["scar_free_cases"] == {"n": 1, "with_false_scar": 1, "max_false_scar_ml": 0.6}


def test_scar_dice_is_split_by_infarct_thickness_without_changing_the_main_figure() -> None:
    cases = [_case(5.0, 4.0, 0.9), _case(6.0, 5.0, 0.8), _case(1.0, 0.0, 0.0, thick=1.0)]
    summary = summarize(cases)
    assert summary["classes"]["scar"]["mean_dice"] == pytest.approx(1.7 / 3)
    strata = summary["scar_by_thickness"]
    assert strata["thin"] == {"n": 1, "mean_dice": 0.0}
    assert strata["thick"]["n"] == 2
    assert strata["thick"]["mean_dice"] == pytest.approx(0.85)
    assert "thinner than 2 px (n=1) 0.000; at least 2 px thick (n=2) 0.850" in markdown_table(
        summary
    )
    assert summary["targets"]["scar Dice, infarcts >= 2 px thick"]["met"] is False


def test_detection_counts_patients_with_at_least_0_3_ml_of_scar() -> None:
    cases = [
        _case(5.0, 4.0, 0.8),  # TP
        _case(1.0, 0.1, 0.1),  # FN: found less than 0.3 ml
        _case(0.0, 0.0, None),  # TN
        _case(0.2, 0.0, 0.0),  # TN: a trace below 0.3 ml is "absent"
        _case(0.0, 0.5, None),  # FP
    ]
    det = summarize(cases)["detection"]
    assert (det["tp"], det["fn"], det["tn"], det["fp"]) == (1, 1, 2, 1)
    assert det["sensitivity"] == pytest.approx(0.5)
    assert det["specificity"] == pytest.approx(2 / 3)


def test_qc_catch_rate_names_every_unflagged_failure() -> None:
    cases = [
        _case(5.0, 5.0, 0.9, case="1"),  # good, not flagged
        _case(5.0, 5.0, 0.9, case="2", flagged=True),  # good but flagged
        _case(5.0, 5.0, 0.9, myo=0.7, case="3", flagged=True),  # failure (myo), caught
        _case(8.0, 2.0, 0.3, case="4"),  # failure (scar % off by 7.5 points), missed
    ]
    summary = summarize(cases)
    qc = summary["qc"]
    assert (qc["failures"], qc["failures_flagged"], qc["unflagged_failures"]) == (2, 1, ["4"])
    assert (qc["good"], qc["good_flagged"]) == (2, 1)
    assert summary["targets"]["unflagged failures"]["met"] is False
    table = markdown_table(summary)
    assert "unflagged: 4;" in table
    # 1 of 2 good cases flagged: the interval shows how little two cases say
    assert "1 of 2 good cases flagged (50 %, 95 % CI 9-91 %)" in table


def test_rates_carry_a_wilson_interval_that_stays_within_0_and_1() -> None:
    lo, hi = wilson(6, 21)  # worked by hand
    assert (lo, hi) == (pytest.approx(0.138, abs=1e-3), pytest.approx(0.500, abs=1e-3))
    assert wilson(0, 10) == (0.0, pytest.approx(0.2775, abs=1e-3))
    lo, hi = wilson(20, 20)
    assert hi == 1.0 and 0.83 < lo < 0.84
    assert wilson(0, 0) is None
    cases = [_case(5.0, 4.0, 0.8), _case(1.0, 0.1, 0.1), _case(0.0, 0.0, None)]
    det = summarize(cases)["detection"]
    assert det["sensitivity_ci"] == wilson(1, 2) and det["specificity_ci"] == wilson(1, 1)


def _dataset(root: Path) -> Path:
    """An imported dataset's card and splits (3 folds over 6 cases)."""
    (root / "nnunet").mkdir(parents=True)
    (root / "dataset_card.json").write_text(json.dumps({"import_id": "abc", "cases": 6}))
    parts = [["a", "b"], ["c", "d"], ["e", "f"]]
    splits = [
        {"train": sorted(c for j, p in enumerate(parts) if j != i for c in p), "val": part}
        for i, part in enumerate(parts)
    ]
    (root / "nnunet" / "splits_final.json").write_text(json.dumps(splits))
    return root


def test_held_out_cases_are_those_the_model_never_trained_on(tmp_path: Path) -> None:
    dataset = _dataset(tmp_path / "set")
    elsewhere = {"training_data": {"import_id": "other"}, "settings": {"folds": ["all"]}}
    assert held_out(dataset, elsewhere)[0] == ["a", "b", "c", "d", "e", "f"]
    assert held_out(dataset, {})[0] == ["a", "b", "c", "d", "e", "f"]  # no manifest
    on_it = {"training_data": {"import_id": "abc"}, "settings": {"folds": ["all"]}}
    assert held_out(dataset, on_it)[0] == []
    # Fold 0: its validation cases, which the detector (trained outside them) never saw.
    on_it["settings"] = {"folds": ["0"]}
    assert held_out(dataset, on_it)[0] == ["a", "b"]
    # Fold 1 trained on a and b; its own validation cases trained the detector.
    on_it["settings"] = {"folds": ["1"]}
    assert held_out(dataset, on_it)[0] == []
    # Recognised by where it lies when the manifest predates import ids.
    by_path = {"training_data": {"dataset": str(dataset.resolve())}, "settings": {"folds": ["0"]}}
    assert held_out(dataset, by_path)[0] == ["a", "b"]


def test_side_by_side_pairs_cases_and_counts_wins(tmp_path: Path) -> None:
    def rows(scar: list[float]) -> list[CaseResult]:
        return [
            _case(5.0, 5.0, d, case=str(i), dices={"myocardium": 0.9, "scar": d, "mvo": None})
            for i, d in enumerate(scar)
        ]

    a, b = rows([0.5, 0.6, 0.7, 0.8]), rows([0.7, 0.6, 0.8, 0.9])
    runs = {"old": (summarize(a), a), "new": (summarize(b), b)}
    text = compare(runs, tmp_path)
    doc = json.loads((tmp_path / "comparison.json").read_text())
    scar = doc["paired_against_first"]["new"]["scar"]
    assert scar["n"] == 4 and scar["mean_difference"] == pytest.approx(0.1)
    assert (scar["better"], scar["worse"]) == (3, 0)
    assert doc["paired_against_first"]["new"]["myocardium"]["wilcoxon_p"] is None  # all tied
    assert doc["paired_against_first"]["new"]["mvo"]["n"] == 0  # never scored
    assert "| old | new |" in text and "| new | scar | 4 | +0.100 |" in text
    assert (tmp_path / "comparison.png").stat().st_size > 10_000
