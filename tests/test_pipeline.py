"""The pipeline with the bundled demo models, loaded through the real ultralytics and
nnU-Net APIs, on held-out phantoms (seeds never used in training)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from pipeline.labels import mvo_mask, myocardium_mask, scar_mask
from pipeline.models import ModelBundle, ModelError
from pipeline.research.evaluate import dice
from pipeline.research.train import TRAIN_SEED_BASE, TrainSettings, model_card, tiny_plans
from pipeline.run import Pipeline, PipelineSettings
from pipeline.series import load_series

HELD_OUT = 6_000  # < TRAIN_SEED_BASE


@pytest.fixture(scope="module")
def pipeline() -> Pipeline:
    return Pipeline(ModelBundle.load())


def test_bundled_weights_load_through_the_real_apis(pipeline: Pipeline) -> None:
    bundle = pipeline.bundle
    assert bundle.synthetic_trained and bundle.folds == ("all",)
    assert pipeline.locator.model.names == {0: "heart"}  # ultralytics YOLO
    labels = pipeline.segmenter.predictor.label_manager.all_labels  # nnU-Net
    assert list(labels) == [0, 1, 2, 3, 4, 5]
    size = sum(p.stat().st_size for p in bundle.yolo_weights.parent.parent.rglob("*"))
    assert size < 30e6, "the demo models together stay under 30 MB"


@pytest.mark.parametrize("mirroring", [False, True])
def test_batched_segmentation_equals_nnunets_own_predictor(phantom_factory, mirroring) -> None:
    """The segmenter sends a crop's slices through the network in batches; nnU-Net's own
    predictor, tile by tile, must give the same labels and probabilities, with test-time
    mirroring as without."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    pipeline = Pipeline(ModelBundle.load(), PipelineSettings(mirroring=mirroring))
    assert pipeline.segmenter.predictor.use_mirroring is mirroring
    own = nnUNetPredictor(
        tile_step_size=0.5, use_gaussian=True, use_mirroring=mirroring,
        perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False,
    )  # fmt: skip
    folder = str(pipeline.bundle.nnunet_folder)
    own.initialize_from_trained_model_folder(folder, ("all",), "checkpoint_final.pth")
    # the same mirrored passes as the pipeline: the model's manifest may restrict them
    own.allowed_mirroring_axes = pipeline.segmenter.predictor.allowed_mirroring_axes
    for seed, style in ((HELD_OUT + 3, "randomized"), (HELD_OUT + 4, "classic")):
        case = phantom_factory(seed=seed, kind="psir", style=style)
        volume = load_series(case.out_dir / "dicom")
        ys, xs = pipeline.locator.locate(volume).roi.slices
        crop = volume.array[:, ys, xs]
        config = pipeline.segmenter.predictor.configuration_manager
        resampled = np.array(crop.shape[1:]) * volume.geometry.pixel_spacing / config.spacing
        assert (np.ceil(resampled) <= config.patch_size).all(), "one tile per slice: batched"
        labels, probabilities = pipeline.segmenter.segment_with_probabilities(
            crop, volume.geometry.spacing_zyx
        )
        ref_labels, ref_probabilities = own.predict_single_npy_array(
            crop[None].astype(np.float32), {"spacing": list(volume.geometry.spacing_zyx)},
            None, None, True,
        )  # fmt: skip
        # nnU-Net accumulates its tiles in half precision: a few boundary voxels may differ
        assert (labels != ref_labels).mean() < 1e-3
        assert np.abs(probabilities - ref_probabilities).max() < 0.01


def test_the_models_manifest_sets_test_time_mirroring(tmp_path) -> None:
    """A model's QC thresholds hold for the inference mode they were calibrated in, so the
    manifest names that mode and the pipeline follows it unless the settings say otherwise."""
    bundled = ModelBundle.load()
    root = bundled.yolo_weights.parent.parent
    copy = tmp_path / "models"
    shutil.copytree(root, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    for mode in (True, False):
        manifest["inference"] = {"test_time_mirroring": mode}
        (copy / "manifest.json").write_text(json.dumps(manifest))
        bundle = ModelBundle.load(copy)
        assert bundle.test_time_mirroring is mode
        assert Pipeline(bundle).segmenter.predictor.use_mirroring is mode
        overridden = Pipeline(bundle, PipelineSettings(mirroring=not mode))
        assert overridden.mirroring is (not mode)
        assert overridden.segmenter.predictor.use_mirroring is (not mode)
    # one mirrored pass instead of three: only the axes the manifest names
    manifest["inference"] = {"test_time_mirroring": True, "mirror_axes": [1]}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert Pipeline(ModelBundle.load(copy)).segmenter.predictor.allowed_mirroring_axes == (1,)
    manifest["inference"]["mirror_axes"] = [2]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="mirror_axes"):
        ModelBundle.load(copy)


@pytest.mark.skipif(
    __import__("torch").cuda.is_available(), reason="shows the device reaches YOLO by failing"
)
def test_the_device_setting_reaches_the_heart_detector(psir_classic) -> None:
    """--device cuda must reach YOLO, not only nnU-Net: on a machine without a GPU the
    detector then refuses, where a hard-coded "cpu" would silently run."""
    from pipeline.localize import HeartLocator

    volume = load_series(psir_classic.out_dir / "dicom")
    locator = HeartLocator(ModelBundle.load().yolo_weights, device="cuda")
    with pytest.raises(ValueError, match=r"(?i)cuda"):
        locator.detect(volume)


@pytest.mark.parametrize(
    ("seed", "kind", "enhanced"),
    [(HELD_OUT + 1, "psir", False), (HELD_OUT + 2, "magnitude", True)],
)
def test_held_out_phantom_end_to_end(pipeline, phantom_factory, seed, kind, enhanced) -> None:
    assert seed < TRAIN_SEED_BASE
    case = phantom_factory(seed=seed, kind=kind, enhanced=enhanced, mvo=True)
    volume = load_series(case.out_dir / "dicom")
    result = pipeline.run(volume)
    assert result.labels.shape == case.labels.shape
    assert dice(myocardium_mask(case.labels), myocardium_mask(result.labels)) >= 0.85
    assert dice(scar_mask(case.labels), scar_mask(result.labels)) >= 0.70
    m, t = result.metrics, case.truth
    assert abs(m.scar_percent - t.scar_percent) <= 5
    assert m.mvo_ml > 0 and t.mvo_ml > 0
    assert dice(mvo_mask(case.labels), mvo_mask(result.labels)) >= 0.5
    assert result.localization.found and result.localization.confidence > 0.3
    assert {r.method for r in m.reference} == {"nSD", "FWHM", "EWA"}
    assert m.composition is not None and m.composition.core_ml > 0
    assert "no_heart_found" not in m.qc.flags and "empty_segmentation" not in m.qc.flags


def test_no_scar_phantom_reports_little_or_no_scar(pipeline, phantom_factory) -> None:
    case = phantom_factory(seed=HELD_OUT + 3, kind="psir", scar=False, slices=10)
    result = pipeline.run(load_series(case.out_dir / "dicom"))
    assert result.metrics.scar_percent < 2.0
    assert result.metrics.myocardium_ml > 0.8 * case.truth.myocardium_ml


def test_empty_volume_gives_flags_not_a_crash(pipeline, psir_classic) -> None:
    volume = load_series(psir_classic.out_dir / "dicom")
    volume.array[:] = 0
    result = pipeline.run(volume)
    assert "no_heart_found" in result.metrics.qc.flags
    assert "empty_segmentation" in result.metrics.qc.flags
    assert result.metrics.myocardium_ml == 0


def test_slice_without_heart_borrows_its_neighbours_box(pipeline, psir_classic) -> None:
    volume = load_series(psir_classic.out_dir / "dicom")
    k = int(np.argmax(myocardium_mask(psir_classic.labels).sum(axis=(1, 2))))
    volume.array[k] = np.random.default_rng(0).normal(0, 20, volume.array[k].shape)
    result = pipeline.run(volume)
    assert k in result.localization.borrowed
    assert result.localization.found
    assert (
        myocardium_mask(result.labels[k]).sum()
        < 0.2 * myocardium_mask(psir_classic.labels[k]).sum()
    )


def _lge_node(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("lge-node", path=str(Path(sys.executable).parent))
    return subprocess.run([exe, *args], capture_output=True, text=True, check=False)


def test_analyze_writes_metrics_and_dicom_outputs(phantom_factory, tmp_path: Path) -> None:
    case = phantom_factory(seed=HELD_OUT + 1, kind="psir", enhanced=False, mvo=True)
    out = tmp_path / "out"
    proc = _lge_node("analyze", str(case.out_dir / "dicom"), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"myocardium_ml", "scar_percent", "segments", "qc", "reference"} <= set(metrics)
    assert metrics["algorithm"]["synthetic_trained"] is True
    assert abs(metrics["scar_percent"] - case.truth.scar_percent) <= 5
    seg = pydicom.dcmread(out / "seg.dcm")
    alg = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert "synthetic-trained demo" in alg.AlgorithmName
    assert len(list((out / "overlay").glob("*.dcm"))) == case.geometry.shape[0]
    assert (out / "summary.dcm").is_file() and (out / "report.pdf").is_file()


def test_analyze_refuses_unusable_input(tmp_path: Path) -> None:
    (tmp_path / "note.txt").write_text("not an image")
    proc = _lge_node("analyze", str(tmp_path), "--out", str(tmp_path / "o"))
    assert proc.returncode == 1
    assert "not a usable LGE series" in proc.stderr and "note.txt" in proc.stderr


def test_train_demo_smoke_run_produces_a_loadable_bundle(phantom_factory, tmp_path: Path) -> None:
    """The documented training command, shrunk to seconds: it must still produce models
    that load and run (their accuracy is not the point here). The restart trains on the
    mixed-style phantoms (randomized and wide), a dataset of its own, from the first run's
    weights, as the shipped models' last restart did."""
    out = tmp_path / "models"
    args = ("train-demo", "--out", str(out), "--work", str(tmp_path / "work"),
            "--cases", "4", "--nnunet-epochs", "1", "--nnunet-iterations", "2",
            "--nnunet-restart-epochs", "1", "--restart-style", "mixed")  # fmt: skip
    proc = _lge_node(*args, "--yolo-epochs", "1")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["synthetic_trained"] is True and manifest["training_data"]["cases"] == 4
    assert manifest["settings"]["restart_epochs"] == [1]
    runs = manifest["training_data"]["runs"]
    assert [r["style"] for r in runs] == ["randomized", "mixed"]
    assert runs[0]["seeds"] != runs[1]["seeds"]  # new cases, not the first run's restyled
    # the restart ran in the mixed dataset's fold_all, from the first run's final weights
    results = tmp_path / "work" / "nnUNet_results"
    first = next(results.glob("Dataset501_*/*__2d")) / "fold_all_stage1" / "checkpoint_final.pth"
    restart = next(results.glob("Dataset504_*/*__2d")) / "fold_all"
    assert first.is_file() and (restart / "checkpoint_final.pth").is_file()
    log = "".join(p.read_text() for p in restart.glob("training_log_*.txt"))
    assert f"warm restart from {first}" in log
    restart_mtime = (restart / "checkpoint_final.pth").stat().st_mtime_ns
    # the restart's data was preprocessed with the first run's plans (same network)
    plans = {
        json.loads(p.read_text())["configurations"]["2d"]["spacing"].__repr__()
        for p in (tmp_path / "work" / "nnUNet_preprocessed").glob("*/nnUNetPlans_tiny.json")
    }
    assert len(plans) == 1
    assert "--restart-style mixed" in (out / "MODEL_CARD.md").read_text()
    # the detector trained on the last run's phantoms
    yolo_runs = tmp_path / "work" / "yolo_runs"
    assert sorted(p.name for p in yolo_runs.iterdir()) == ["heart_mixed"]
    detector = (out / "yolo" / "heart.pt").read_bytes()
    # --resume keeps finished work, but a detector of other epochs is trained again, not
    # taken for the one asked for
    proc = _lge_node(*args, "--resume", "--yolo-epochs", "2")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (yolo_runs / "heart_mixed" / "finished").read_text().strip() == "2"
    assert json.loads((out / "manifest.json").read_text())["settings"]["yolo_epochs"] == 2
    assert (out / "yolo" / "heart.pt").read_bytes() != detector
    assert (restart / "checkpoint_final.pth").stat().st_mtime_ns == restart_mtime
    bundle = ModelBundle.load(out)
    case = phantom_factory(seed=7, kind="psir")
    result = Pipeline(bundle).run(load_series(case.out_dir / "dicom"))
    assert result.labels.shape == case.labels.shape


def test_the_detector_can_train_on_another_style_than_the_last_run(tmp_path: Path) -> None:
    """A restart on irregular hearts need not retrain the detector on them: --detector-style
    picks its phantoms, and the model card's command repeats the choice (or the card could
    not reproduce the models); an unknown style is refused before anything trains."""
    last_run = TrainSettings(restart_epochs=(100,), restart_styles=("varied",))
    assert last_run.detector_style() == "varied"
    chosen = TrainSettings(restart_epochs=(100,), restart_styles=("varied",), detector_data="mixed")
    assert chosen.detector_style() == "mixed" and chosen.stage_styles() == ("randomized", "varied")
    card = model_card(chosen)
    assert "--restart-style varied --detector-style mixed" in card
    assert "the mixed-style training phantoms, seeds 40000-40239" in card
    assert "--detector-style" not in model_card(last_run)
    proc = _lge_node("train-demo", "--out", str(tmp_path / "m"), "--work", str(tmp_path / "w"),
                     "--detector-style", "sideways")  # fmt: skip
    assert proc.returncode != 0 and "--detector-style must be one of" in proc.stderr
    assert not (tmp_path / "w").exists()


def test_tiny_plans_can_resample_finer_and_the_patch_follows() -> None:
    planned = {
        "plans_name": "nnUNetPlans",
        "configurations": {
            "2d": {"spacing": [1.68, 1.68], "patch_size": [64, 64], "batch_size": 40,
                   "architecture": {"arch_kwargs": {}}},
            "3d_fullres": {},
        },
    }  # fmt: skip
    default = tiny_plans(planned)["configurations"]
    assert list(default) == ["2d"]
    assert default["2d"]["spacing"] == [1.68, 1.68] and default["2d"]["patch_size"] == [80, 80]
    fine = tiny_plans(planned, 1.25)["configurations"]["2d"]
    assert fine["spacing"] == [1.25, 1.25] and fine["patch_size"] == [96, 96]
    assert planned["configurations"]["2d"]["patch_size"] == [64, 64]  # input left alone


def test_mixed_restart_data_holds_both_later_styles_with_both_contrasts() -> None:
    """The mixed style's training cases: the classic share as in every style, the rest
    randomized and wide in equal parts, each with PSIR and magnitude and with forced MVO,
    from seeds of its own."""
    from collections import Counter

    from pipeline.research.train import PHANTOM_DATASETS, _phantom_specs

    specs = _phantom_specs(48, classic_every=3, style="mixed")
    seeds = [s.seed for s in specs]
    assert seeds[0] == PHANTOM_DATASETS["mixed"].first_seed
    assert all(seeds[0] > PHANTOM_DATASETS[s].first_seed + 240 for s in ("randomized", "wide"))
    styles = Counter(s.style for s in specs)
    assert styles == {"classic": 16, "randomized": 16, "wide": 16}
    kinds = Counter((s.style, s.kind) for s in specs)
    assert set(kinds.values()) == {8}  # every style has both contrasts, equally
    assert {s.style for s in specs if s.mvo} == {"classic", "randomized", "wide"}
