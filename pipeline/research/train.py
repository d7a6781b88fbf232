"""``lge-node train-demo``: the bundled demo models, reproducible from one command.

Phantoms (fixed seeds; a third classic, two thirds domain-randomized) -> a YOLOv8n heart
detector trained from its yaml (nothing pretrained, nothing downloaded) and a reduced
nnU-Net v2 2D model (5 stages, 16->128 features, patch 80, batch 16) with the robust
trainer (heavy appearance augmentation + KL to soft labels), written in the standard
nnU-Net results layout so that models trained elsewhere drop in the same way.

Long runs resume: ``--resume`` keeps the generated data and preprocessing and continues
nnU-Net from its latest checkpoint (saved every 10 epochs).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline import __version__, runtime
from pipeline.research.dataset import (
    export_nnunet_case,
    export_yolo_case,
    write_nnunet_dataset_json,
    write_yolo_yaml,
)

DATASET_ID = 501
DATASET_NAME = f"Dataset{DATASET_ID}_LGEPhantom"
PLANS = "nnUNetPlans_tiny"
TRAINERS = {"robust": "nnUNetTrainer_LGERobust", "default": "nnUNetTrainer_LGEDemo"}
TRAINER = TRAINERS["robust"]
CONFIGURATION = "2d"


def model_subdir(trainer: str = TRAINER) -> str:
    return f"{trainer}__{PLANS}__{CONFIGURATION}"


MODEL_SUBDIR = model_subdir()
TRAIN_SEED_BASE = 10_000  # evaluation uses seeds below 10_000: never seen in training
DEFAULT_MODEL_DIR = runtime.BUNDLED_MODELS  # train-demo regenerates what ships


@dataclass
class TrainSettings:
    out_dir: Path = DEFAULT_MODEL_DIR
    work_dir: Path = Path("models-work")  # scratch, under the current folder
    cases: int = 240
    nnunet_epochs: int = 200
    nnunet_iterations: int = 50
    yolo_epochs: int = 12
    small_infarct_every: int = 0  # 0: none forced (the shipped models)
    spacing_mm: float | None = None  # in-plane resampling; None: nnU-Net's plan (median)
    classic_every: int = 3  # every k-th phantom classic, the rest randomized (1: all classic)
    trainer: str = "robust"  # key of TRAINERS
    workers: int = 2  # processes generating phantoms
    resume: bool = False
    seed: int = 0
    timings: dict[str, float] = field(default_factory=dict)


def _phantom_specs(n: int, small_infarct_every: int = 0, classic_every: int = 1):
    from pipeline.research.phantom import PhantomSpec

    specs = []
    for i in range(n):
        seed = TRAIN_SEED_BASE + i
        kind = "psir" if i % 2 == 0 else "magnitude"
        # A third of the cases carry MVO, so the rare class is seen often enough.
        # Optionally small thin infarcts (~1 ml), the ones a segmenter misses, are
        # over-represented (every k-th case without forced MVO).
        mvo = True if i % 3 == 0 else None
        k = small_infarct_every
        small = bool(k) and i % k == min(2, k - 1) and mvo is None
        # i % 3 == 0 carries MVO: offset the classic/randomized split so both styles
        # get MVO cases.
        style = "classic" if (i // 2) % classic_every == 0 else "randomized"
        specs.append(PhantomSpec(seed=seed, kind=kind, mvo=mvo, small_infarct=small, style=style))
    return specs


def _render(args: tuple) -> tuple[int, str]:
    """One training case (a worker process): phantom -> nnU-Net and YOLO files."""
    i, spec, work, raw, yolo, split, margin_seed = args
    from pipeline.research.phantom import make_phantom

    case = make_phantom(work / "phantoms" / f"{spec.seed}", spec)
    cid = f"LGE_{spec.seed}"
    rng = np.random.default_rng([margin_seed, i])
    export_nnunet_case(case.image, case.labels, case.geometry, cid, raw, rng)
    export_yolo_case(case.image, case.labels, cid, yolo / "images" / split, yolo / "labels" / split)
    shutil.rmtree(work / "phantoms" / f"{spec.seed}", ignore_errors=True)  # DICOM not needed
    return i, cid


def generate_data(settings: TrainSettings) -> tuple[Path, Path]:
    """Phantoms -> nnU-Net raw dataset and YOLO dataset under ``work_dir``."""
    from concurrent.futures import ProcessPoolExecutor

    work = settings.work_dir
    raw = work / "nnUNet_raw" / DATASET_NAME
    yolo = work / "yolo"
    specs = _phantom_specs(settings.cases, settings.small_infarct_every, settings.classic_every)
    if settings.resume and (raw / "dataset.json").is_file():
        return raw, yolo  # written last: the data is complete
    for path in (raw, yolo):
        shutil.rmtree(path, ignore_errors=True)
    n_val = max(1, len(specs) // 7)
    jobs = [
        (i, spec, work, raw, yolo, "val" if i >= len(specs) - n_val else "train", settings.seed)
        for i, spec in enumerate(specs)
    ]
    # Each case is a pure function of its spec and index, so the order of completion
    # does not change the data.
    with ProcessPoolExecutor(max_workers=max(1, settings.workers)) as pool:
        for _ in tqdm(pool.map(_render, jobs), total=len(jobs), desc="phantoms", unit="case"):
            pass
    write_yolo_yaml(yolo)
    write_nnunet_dataset_json(raw, len(specs))
    return raw, yolo


def tiny_plans(plans: dict, spacing_mm: float | None = None) -> dict:
    """The default nnU-Net plans, reduced so CPU inference stays well under 0.05 s/slice.
    ``spacing_mm`` overrides the planned in-plane spacing (finer: no image is downsampled,
    thin structures survive, at the cost of more pixels per crop)."""
    plans = json.loads(json.dumps(plans))
    plans["plans_name"] = PLANS
    cfg = plans["configurations"][CONFIGURATION]
    arch = cfg["architecture"]["arch_kwargs"]
    arch["n_stages"] = 5
    arch["features_per_stage"] = [16, 32, 64, 128, 128]
    arch["kernel_sizes"] = [[3, 3]] * 5
    arch["strides"] = [[1, 1]] + [[2, 2]] * 4
    arch["n_conv_per_stage"] = [2] * 5
    arch["n_conv_per_stage_decoder"] = [2] * 4
    # Heart crops are at most ~64 x 71 voxels at the planned spacing: an 80^2 patch holds
    # every crop whole (128^2 would be ~75 % padding), so a bigger batch costs less.
    cfg["patch_size"] = [80, 80]
    cfg["batch_size"] = 16
    if spacing_mm is not None:
        cfg["spacing"] = [spacing_mm, spacing_mm]
        # The largest crops (~107 x 119 mm) whole, in multiples of 16 for 4 poolings.
        side = 16 * int(np.ceil(120.0 / spacing_mm / 16))
        cfg["patch_size"] = [side, side]
    plans["configurations"] = {CONFIGURATION: cfg}
    return plans


def train_nnunet(settings: TrainSettings) -> Path:
    work = settings.work_dir
    os.environ["nnUNet_raw"] = str(work / "nnUNet_raw")
    os.environ["nnUNet_preprocessed"] = str(work / "nnUNet_preprocessed")
    os.environ["nnUNet_results"] = str(work / "nnUNet_results")
    os.environ["LGE_NODE_NNUNET_EPOCHS"] = str(settings.nnunet_epochs)
    os.environ["LGE_NODE_NNUNET_ITERS"] = str(settings.nnunet_iterations)
    runtime.prepare()
    import torch
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        plan_experiments,
        preprocess,
    )

    pre = work / "nnUNet_preprocessed" / DATASET_NAME
    done = pre / f"{PLANS}_{CONFIGURATION}.done"
    if not (settings.resume and done.is_file()):
        shutil.rmtree(pre, ignore_errors=True)
        extract_fingerprints([DATASET_ID], num_processes=1, check_dataset_integrity=True)
        plan_experiments([DATASET_ID])
        plans = json.loads((pre / "nnUNetPlans.json").read_text())
        tiny = tiny_plans(plans, settings.spacing_mm)
        (pre / f"{PLANS}.json").write_text(json.dumps(tiny, indent=2))
        preprocess([DATASET_ID], PLANS, configurations=[CONFIGURATION], num_processes=[1])
        done.touch()

    # After planning, which crashes with 0. In-process augmentation measured faster on
    # 2 cores than one augmentation worker (which competes with the network's threads).
    os.environ["nnUNet_n_proc_DA"] = os.environ.get("LGE_NODE_DA_PROCS", "0")
    from nnunetv2.run.run_training import run_training

    runtime.set_threads()
    torch.manual_seed(settings.seed)
    np.random.seed(settings.seed)
    trainer = TRAINERS[settings.trainer]
    results = work / "nnUNet_results" / DATASET_NAME / model_subdir(trainer)
    if settings.resume and (results / "fold_all" / "checkpoint_final.pth").is_file():
        return results  # finished (and validated) in an earlier run
    resume = settings.resume and (results / "fold_all" / "checkpoint_latest.pth").is_file()
    run_training(
        str(DATASET_ID),
        CONFIGURATION,
        "all",
        trainer,
        PLANS,
        device=torch.device("cpu"),
        continue_training=resume,
    )
    return results


def train_yolo(settings: TrainSettings, data_yaml: Path) -> Path:
    runtime.prepare()
    from ultralytics import YOLO

    runtime.set_threads()
    model = YOLO("yolov8n.yaml")  # architecture only: random init, nothing downloaded
    model.train(
        data=str(data_yaml),
        epochs=settings.yolo_epochs,
        imgsz=256,
        batch=16,
        device="cpu",
        workers=0,
        # decoded, resized images in memory (~0.6 GB for 240 phantoms): re-reading 512-px
        # PNGs every epoch made an epoch 4x slower
        cache="ram",
        pretrained=False,
        amp=False,
        plots=False,
        seed=settings.seed,
        deterministic=True,
        # absolute: ultralytics puts a relative project under ./runs/detect/
        project=str((settings.work_dir / "yolo_runs").resolve()),
        name="heart",
        exist_ok=True,
        verbose=False,
        mosaic=0.5,
        fliplr=0.5,
        degrees=30.0,
        close_mosaic=3,
    )
    return (settings.work_dir / "yolo_runs").resolve() / "heart" / "weights" / "best.pt"


def _strip_checkpoint(src: Path, dst: Path) -> None:
    """Keep what inference needs; the optimizer state would double the file."""
    import torch

    ckpt = torch.load(src, map_location="cpu", weights_only=False)
    keep = {
        k: ckpt[k]
        for k in (
            "network_weights",
            "init_args",
            "trainer_name",
            "inference_allowed_mirroring_axes",
        )
        if k in ckpt
    }
    keep["current_epoch"] = ckpt.get("current_epoch")
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save(keep, dst)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def package(settings: TrainSettings, nnunet_dir: Path, yolo_weights: Path) -> Path:
    out = settings.out_dir
    shutil.rmtree(out, ignore_errors=True)
    dst = out / "nnunet" / DATASET_NAME / model_subdir(TRAINERS[settings.trainer])
    for name in ("plans.json", "dataset.json", "dataset_fingerprint.json"):
        dst.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(nnunet_dir / name, dst / name)
    _strip_checkpoint(
        nnunet_dir / "fold_all" / "checkpoint_final.pth",
        dst / "fold_all" / "checkpoint_final.pth",
    )
    (out / "yolo").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(yolo_weights, out / "yolo" / "heart.pt")
    manifest = {
        "name": "lge-node demo models",
        "version": __version__,
        "synthetic_trained": True,
        "intended_use": "demonstration and testing only - not for clinical use",
        "training_data": {
            "generator": "lge-node phantom",
            "seeds": [TRAIN_SEED_BASE, TRAIN_SEED_BASE + settings.cases - 1],
            "cases": settings.cases,
        },
        "settings": {k: v for k, v in asdict(settings).items() if k not in ("out_dir", "work_dir")},
        "files": {
            str(p.relative_to(out)): _sha256(p) for p in sorted(out.rglob("*")) if p.is_file()
        },
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    (out / "MODEL_CARD.md").write_text(model_card(settings))
    return out


def model_card(settings: TrainSettings) -> str:
    t = settings.timings
    template = (Path(__file__).parent / "model_card.md.in").read_text()
    return template.format(
        version=__version__,
        yolo_epochs=settings.yolo_epochs,
        plans=PLANS,
        trainer=TRAINERS[settings.trainer],
        nnunet_epochs=settings.nnunet_epochs,
        nnunet_iterations=settings.nnunet_iterations,
        dataset=DATASET_NAME,
        model_subdir=model_subdir(TRAINERS[settings.trainer]),
        cases=settings.cases,
        first_seed=TRAIN_SEED_BASE,
        last_seed=TRAIN_SEED_BASE + settings.cases - 1,
        data_s=t.get("data_s", 0.0),
        nnunet_s=t.get("nnunet_s", 0.0),
        yolo_s=t.get("yolo_s", 0.0),
    )


def train_demo(settings: TrainSettings) -> Path:
    t0 = time.perf_counter()
    _, yolo = generate_data(settings)
    settings.timings["data_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    nnunet_dir = train_nnunet(settings)
    settings.timings["nnunet_s"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    weights = train_yolo(settings, yolo / "data.yaml")
    settings.timings["yolo_s"] = time.perf_counter() - t2
    return package(settings, nnunet_dir, weights)
