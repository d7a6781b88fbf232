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
IMPORTED_ID = 502  # a dataset from `lge-node dataset import`
IMPORTED_NAME = f"Dataset{IMPORTED_ID}_LGEImported"
TRAIN_SEED_BASE = 10_000  # evaluation uses seeds below 10_000: never seen in training


@dataclass(frozen=True)
class PhantomDataset:
    """The training phantoms of one style (a ``--restart-style``): its nnU-Net dataset,
    its own seeds (a later run sees new cases, not restyled old ones) and the phantom
    styles its non-classic cases take in turn."""

    dataset_id: int
    name: str
    first_seed: int
    case_styles: tuple[str, ...]  # `PhantomSpec.style` values, alternating in pairs
    described_as: str  # for the model card: "the same mix with <this> instead"


PHANTOM_DATASETS = {
    "randomized": PhantomDataset(
        DATASET_ID, DATASET_NAME, TRAIN_SEED_BASE, ("randomized",), "the randomized style"
    ),
    "wide": PhantomDataset(503, "Dataset503_LGEPhantomWide", 30_000, ("wide",), "the wide style"),
    # randomized and wide cases in one dataset: a restart on wide alone learned the wide
    # appearances but thinned the classic myocardium (README, model history)
    "mixed": PhantomDataset(
        504,
        "Dataset504_LGEPhantomMixed",
        40_000,
        ("randomized", "wide"),
        "the randomized and the wide style alternating",
    ),
    # the mixed restart's recipe with hearts of irregular shape in place of the wide ones
    "varied": PhantomDataset(
        505,
        "Dataset505_LGEPhantomVaried",
        50_000,
        ("randomized", "varied"),
        "the randomized and the varied (wide, irregular hearts) style alternating",
    ),
}
PLANS = "nnUNetPlans_tiny"
FULL_PLANS = "nnUNetPlans"  # nnU-Net's own plan, unchanged (--size full)
TRAINERS = {"robust": "nnUNetTrainer_LGERobust", "default": "nnUNetTrainer_LGEDemo"}
TRAINER = TRAINERS["robust"]
CONFIGURATION = "2d"
SIZES = {"demo": PLANS, "full": FULL_PLANS}


def model_subdir(trainer: str = TRAINER, plans: str = PLANS) -> str:
    return f"{trainer}__{plans}__{CONFIGURATION}"


MODEL_SUBDIR = model_subdir()
DEFAULT_MODEL_DIR = runtime.BUNDLED_MODELS  # train-demo regenerates what ships


@dataclass
class TrainSettings:
    out_dir: Path = DEFAULT_MODEL_DIR
    work_dir: Path = Path("models-work")  # scratch, under the current folder
    cases: int = 240
    nnunet_epochs: int = 200
    nnunet_iterations: int = 50
    # further runs of the learning-rate schedule, each starting from the previous run's
    # weights (warm restarts); () trains once
    restart_epochs: tuple[int, ...] = ()
    # phantom style of each restart's non-classic cases (a key of PHANTOM_DATASETS);
    # restarts beyond this tuple use "randomized", as the first run does
    restart_styles: tuple[str, ...] = ()
    yolo_epochs: int = 12
    # phantom style the detector trains on (a key of PHANTOM_DATASETS); None: the last run's
    detector_data: str | None = None
    small_infarct_every: int = 0  # 0: none forced (the shipped models)
    spacing_mm: float | None = None  # in-plane resampling; None: nnU-Net's plan (median)
    classic_every: int = 3  # every k-th phantom classic, the rest randomized (1: all classic)
    trainer: str = "robust"  # key of TRAINERS
    workers: int = 2  # processes generating phantoms
    resume: bool = False
    seed: int = 0
    dataset: Path | None = None  # an imported dataset (`lge-node dataset import`); None: phantoms
    size: str = "demo"  # key of SIZES: the reduced plan, or nnU-Net's own
    folds: tuple[str, ...] = ("all",)  # "all" (every case) or cross-validation fold numbers
    device: str = "cpu"
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def dataset_id(self) -> int:
        return DATASET_ID if self.dataset is None else IMPORTED_ID

    @property
    def dataset_name(self) -> str:
        return DATASET_NAME if self.dataset is None else IMPORTED_NAME

    @property
    def plans(self) -> str:
        return SIZES[self.size]

    def stage_styles(self) -> tuple[str, ...]:
        """Phantom style of every nnU-Net run: the first, then each restart."""
        if self.dataset is not None:
            return ("imported",) * (1 + len(self.restart_epochs))
        styles = self.restart_styles + ("randomized",) * len(self.restart_epochs)
        return ("randomized", *styles[: len(self.restart_epochs)])

    def stage_dataset(self, k: int) -> tuple[int, str]:
        """nnU-Net dataset (id, name) that run ``k`` trains on."""
        if self.dataset is not None:
            return IMPORTED_ID, IMPORTED_NAME
        data = PHANTOM_DATASETS[self.stage_styles()[k]]
        return data.dataset_id, data.name

    def detector_style(self) -> str:
        """Phantom style the detector trains on: the one chosen, else the last run's (the
        widest), since a heart it cannot find is lost whatever the segmenter learned."""
        if self.dataset is None and self.detector_data is not None:
            return self.detector_data
        return self.stage_styles()[-1]

    def seeds(self, style: str) -> tuple[int, int]:
        """First and last seed of a phantom style's training cases."""
        first = PHANTOM_DATASETS[style].first_seed
        return first, first + self.cases - 1


def _phantom_specs(
    n: int, small_infarct_every: int = 0, classic_every: int = 1, style: str = "randomized"
):
    from pipeline.research.phantom import PhantomSpec

    data = PHANTOM_DATASETS[style]
    specs = []
    for i in range(n):
        seed = data.first_seed + i
        kind = "psir" if i % 2 == 0 else "magnitude"
        # A third of the cases carry MVO, so the rare class is seen often enough.
        # Optionally small thin infarcts (~1 ml), the ones a segmenter misses, are
        # over-represented (every k-th case without forced MVO).
        mvo = True if i % 3 == 0 else None
        k = small_infarct_every
        small = bool(k) and i % k == min(2, k - 1) and mvo is None
        # i % 3 == 0 carries MVO: offset the classic/non-classic split (in pairs) so both
        # get MVO cases; pairs alternate between the dataset's styles, so each style gets
        # both kinds.
        styles = data.case_styles
        case_style = "classic" if (i // 2) % classic_every == 0 else styles[(i // 2) % len(styles)]
        specs.append(
            PhantomSpec(seed=seed, kind=kind, mvo=mvo, small_infarct=small, style=case_style)
        )
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
    """Phantoms -> nnU-Net raw dataset(s) and YOLO dataset under ``work_dir``; returns the
    detector's style's (a detector of the randomized style alone missed the heart under
    motion ghosts and low SNR)."""
    if settings.dataset is not None:
        return _link_imported(settings)
    # each style once, in order
    styles = dict.fromkeys((*settings.stage_styles(), settings.detector_style()))
    paths = {s: _generate_phantoms(settings, s) for s in styles}
    return paths[settings.detector_style()]


def _generate_phantoms(settings: TrainSettings, style: str) -> tuple[Path, Path]:
    from concurrent.futures import ProcessPoolExecutor

    work = settings.work_dir
    name = PHANTOM_DATASETS[style].name
    raw = work / "nnUNet_raw" / name
    yolo = work / ("yolo" if style == "randomized" else f"yolo_{style}")
    specs = _phantom_specs(
        settings.cases, settings.small_infarct_every, settings.classic_every, style
    )
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


def _link_imported(settings: TrainSettings) -> tuple[Path, Path]:
    """The imported dataset where nnU-Net looks for it (a link: nothing is copied)."""
    assert settings.dataset is not None
    source = settings.dataset.resolve()
    if not (source / "nnunet" / "dataset.json").is_file():
        raise ValueError(f"{source}: not a dataset from `lge-node dataset import` (nnunet/)")
    raw = settings.work_dir / "nnUNet_raw" / IMPORTED_NAME
    raw.parent.mkdir(parents=True, exist_ok=True)
    if raw.is_symlink() or raw.exists():
        raw.unlink() if raw.is_symlink() else shutil.rmtree(raw)
    raw.symlink_to(source / "nnunet", target_is_directory=True)
    yolo = settings.work_dir / "yolo_imported"  # data.yaml here, the images stay there
    write_yolo_yaml(source / "yolo", at=yolo)
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
    os.environ["LGE_NODE_NNUNET_ITERS"] = str(settings.nnunet_iterations)
    runtime.prepare()
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        plan_experiments,
        preprocess,
    )

    plans_name = settings.plans
    stages = (settings.nnunet_epochs, *settings.restart_epochs)
    datasets = list(dict.fromkeys(settings.stage_dataset(k) for k in range(len(stages))))
    first_pre = work / "nnUNet_preprocessed" / datasets[0][1]
    for k, (dataset_id, name) in enumerate(datasets):
        pre = work / "nnUNet_preprocessed" / name
        done = pre / f"{plans_name}_{CONFIGURATION}.done"
        if settings.resume and done.is_file():
            continue
        shutil.rmtree(pre, ignore_errors=True)
        extract_fingerprints([dataset_id], num_processes=1, check_dataset_integrity=True)
        if k == 0:
            plan_experiments([dataset_id])
            if settings.size == "demo":
                plans = json.loads((pre / "nnUNetPlans.json").read_text())
                tiny = tiny_plans(plans, settings.spacing_mm)
                (pre / f"{PLANS}.json").write_text(json.dumps(tiny, indent=2))
        else:
            # A later run continues the first run's network: same architecture, spacing
            # and normalization, so its data is preprocessed with the first run's plans.
            plans = json.loads((first_pre / f"{plans_name}.json").read_text())
            plans["dataset_name"] = name
            (pre / f"{plans_name}.json").write_text(json.dumps(plans, indent=2))
            shutil.copyfile(work / "nnUNet_raw" / name / "dataset.json", pre / "dataset.json")
        preprocess([dataset_id], plans_name, configurations=[CONFIGURATION], num_processes=[1])
        splits = work / "nnUNet_raw" / name / "splits_final.json"
        if splits.is_file():  # the import's folds, not nnU-Net's own draw
            shutil.copyfile(splits, pre / "splits_final.json")
        done.touch()

    # After planning, which crashes with 0. In-process augmentation measured faster on
    # 2 cores than one augmentation worker (which competes with the network's threads).
    os.environ["nnUNet_n_proc_DA"] = os.environ.get("LGE_NODE_DA_PROCS", "0")
    runtime.set_threads()
    trainer = TRAINERS[settings.trainer]
    subdir = model_subdir(trainer, plans_name)
    for fold in settings.folds:
        init: Path | None = None
        for k, epochs in enumerate(stages):
            dataset_id, name = settings.stage_dataset(k)
            results = work / "nnUNet_results" / name / subdir
            folder = results / f"fold_{fold}"
            # nnU-Net always trains into fold_<fold>; a finished earlier stage moves aside
            done_as = folder if k == len(stages) - 1 else results / f"fold_{fold}_stage{k + 1}"
            if settings.resume and (done_as / "checkpoint_final.pth").is_file():
                init = done_as / "checkpoint_final.pth"
                continue  # finished (and validated) in an earlier run
            if not (settings.resume and (folder / "checkpoint_final.pth").is_file()):
                _train_stage(settings, dataset_id, trainer, plans_name, fold, folder, epochs, init)
            if done_as != folder:
                shutil.rmtree(done_as, ignore_errors=True)
                folder.rename(done_as)
            init = done_as / "checkpoint_final.pth"
    _, last = settings.stage_dataset(len(stages) - 1)
    return work / "nnUNet_results" / last / subdir


def _train_stage(
    settings: TrainSettings,
    dataset_id: int,
    trainer: str,
    plans: str,
    fold: str,
    folder: Path,
    epochs: int,
    init: Path | None,
) -> None:
    """One run of nnU-Net's schedule in ``fold_<fold>``: continued from its latest
    checkpoint when resuming, else started from ``init``'s weights (or from scratch)."""
    import torch
    from nnunetv2.run.run_training import run_training

    os.environ["LGE_NODE_NNUNET_EPOCHS"] = str(epochs)
    os.environ.pop("LGE_NODE_NNUNET_INIT", None)
    if init is not None:
        os.environ["LGE_NODE_NNUNET_INIT"] = str(init)
    torch.manual_seed(settings.seed)
    np.random.seed(settings.seed)
    run_training(
        str(dataset_id),
        CONFIGURATION,
        fold,
        trainer,
        plans,
        device=torch.device(settings.device),
        continue_training=settings.resume and (folder / "checkpoint_latest.pth").is_file(),
    )


def train_yolo(settings: TrainSettings, data_yaml: Path) -> Path:
    # one run folder per dataset: a resumed run never takes a detector trained on other data
    name = "heart" + data_yaml.parent.name.removeprefix("yolo")
    run = (settings.work_dir / "yolo_runs").resolve() / name
    best = run / "weights" / "best.pt"
    finished = run / "finished"  # holds the epochs it ran: a resume with others retrains
    if (
        settings.resume
        and best.is_file()
        and finished.is_file()
        and finished.read_text().strip() == str(settings.yolo_epochs)
    ):
        return best
    runtime.prepare()
    from ultralytics import YOLO

    runtime.set_threads()
    model = YOLO("yolov8n.yaml")  # architecture only: random init, nothing downloaded
    model.train(
        data=str(data_yaml),
        epochs=settings.yolo_epochs,
        imgsz=256,
        batch=16,
        device=settings.device if settings.device != "cuda" else 0,
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
        name=name,
        exist_ok=True,
        verbose=False,
        mosaic=0.5,
        fliplr=0.5,
        degrees=30.0,
        close_mosaic=3,
    )
    finished.write_text(f"{settings.yolo_epochs}\n")
    return best


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
    trainer = TRAINERS[settings.trainer]
    _, name = settings.stage_dataset(len(settings.restart_epochs))  # the last run's data
    dst = out / "nnunet" / name / model_subdir(trainer, settings.plans)
    for name in ("plans.json", "dataset.json", "dataset_fingerprint.json"):
        dst.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(nnunet_dir / name, dst / name)
    for fold in settings.folds:
        _strip_checkpoint(
            nnunet_dir / f"fold_{fold}" / "checkpoint_final.pth",
            dst / f"fold_{fold}" / "checkpoint_final.pth",
        )
    (out / "yolo").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(yolo_weights, out / "yolo" / "heart.pt")
    if settings.dataset is None:
        name, synthetic = "lge-node demo models", True
        intended = "demonstration and testing only - not for clinical use"
        data: dict = {
            "generator": "lge-node phantom",
            "seeds": [TRAIN_SEED_BASE, TRAIN_SEED_BASE + settings.cases - 1],
            "cases": settings.cases,
            # non-classic style and seeds of each nnU-Net run (the first, then restarts)
            "runs": [
                {"style": style, "seeds": list(settings.seeds(style))}
                for style in settings.stage_styles()
            ],
        }
    else:
        card = json.loads((settings.dataset / "dataset_card.json").read_text())
        name, synthetic = f"lge-node model ({settings.dataset.name}, {settings.size})", False
        intended = "research only - not a medical device"
        data = {**card, "dataset": str(settings.dataset.resolve())}
    manifest = {
        "name": name,
        "version": __version__,
        "synthetic_trained": synthetic,
        "intended_use": intended,
        "training_data": data,
        "settings": {k: v for k, v in asdict(settings).items() if k not in ("out_dir", "work_dir")},
        "files": {
            str(p.relative_to(out)): _sha256(p) for p in sorted(out.rglob("*")) if p.is_file()
        },
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    card_text = model_card(settings) if settings.dataset is None else imported_card(manifest)
    (out / "MODEL_CARD.md").write_text(card_text)
    return out


def imported_card(manifest: dict) -> str:
    """The model card of a model trained on an imported dataset."""
    data, s = manifest["training_data"], manifest["settings"]
    labels = ", ".join(f"{v} {k}" for k, v in data.get("labels", {}).items())
    return (
        f"# {manifest['name']}\n\n"
        f"lge-node {manifest['version']}. **{manifest['intended_use']}.**\n\n"
        "## Training data\n\n"
        f"- source: {data.get('source')} ({data.get('format')} layout), {data.get('cases')} cases\n"
        f"- licence of the data: {data.get('licence')}\n"
        f"- labels: {labels}\n\n"
        "## Training\n\n"
        f"- nnU-Net v2 2D, plan `{SIZES[s['size']]}` ({s['size']}), trainer "
        f"`{TRAINERS[s['trainer']]}`, folds {', '.join(s['folds'])}, "
        f"{s['nnunet_epochs']} epochs x {s['nnunet_iterations']} iterations, device {s['device']}\n"
        f"- YOLOv8n heart detector from the dataset's boxes, {s['yolo_epochs']} epochs\n"
        + "".join(f"- {k}: {v:.0f} s\n" for k, v in s.get("timings", {}).items())
    )


def _restarts_text(epochs: tuple[int, ...], styles: tuple[str, ...] = ()) -> str:
    if not epochs:
        return ""
    named = [
        f"{n}{'' if style == 'randomized' else f' ({style} phantoms)'}"
        for n, style in zip(epochs, (*styles, *("randomized",) * len(epochs)), strict=False)
    ]
    if len(epochs) == 1:
        return f", then a warm restart of {named[0]} epochs from those weights"
    runs = ", ".join(named[:-1]) + f" and {named[-1]}"
    return f", then warm restarts of {runs} epochs, each from the previous run's weights"


def _later_data_text(settings: TrainSettings) -> str:
    styles = [s for s in dict.fromkeys(settings.stage_styles()) if s != "randomized"]
    text = "".join(
        f"; the restarts marked {style}: {settings.cases} further phantoms, seeds "
        f"{first}-{last}, the same mix with {PHANTOM_DATASETS[style].described_as} instead"
        for style in styles
        for first, last in (settings.seeds(style),)
    )
    if styles:
        text += (
            " (wide: also dilated thin-walled and thicker ventricles, SNR down to 5, grey "
            "blood, motion ghosts, reduced phase resolution, multi-coil noise, "
            "parallel-imaging g-factor)"
        )
    return text


def _detector_data_text(settings: TrainSettings) -> str:
    style = settings.detector_style()
    first, last = settings.seeds(style)
    return f"the {style}-style training phantoms, seeds {first}-{last}"


def _restart_options(settings: TrainSettings) -> str:
    options = "".join(f" --nnunet-restart-epochs {n}" for n in settings.restart_epochs)
    styles = settings.stage_styles()[1:]
    if any(style != "randomized" for style in styles):
        options += "".join(f" --restart-style {style}" for style in styles)
    if settings.detector_data is not None:
        options += f" --detector-style {settings.detector_data}"
    return options


def model_card(settings: TrainSettings) -> str:
    t = settings.timings
    template = (Path(__file__).parent / "model_card.md.in").read_text()
    return template.format(
        version=__version__,
        yolo_epochs=settings.yolo_epochs,
        detector_data=_detector_data_text(settings),
        plans=PLANS,
        trainer=TRAINERS[settings.trainer],
        nnunet_epochs=settings.nnunet_epochs,
        nnunet_iterations=settings.nnunet_iterations,
        restarts=_restarts_text(settings.restart_epochs, settings.restart_styles),
        restart_options=_restart_options(settings),
        later_data=_later_data_text(settings),
        dataset=settings.stage_dataset(len(settings.restart_epochs))[1],
        model_subdir=model_subdir(TRAINERS[settings.trainer]),
        cases=settings.cases,
        first_seed=TRAIN_SEED_BASE,
        last_seed=TRAIN_SEED_BASE + settings.cases - 1,
        data_s=t.get("data_s", 0.0),
        nnunet_s=t.get("nnunet_s", 0.0),
        yolo_s=t.get("yolo_s", 0.0),
    )


def train_demo(settings: TrainSettings) -> Path:
    """Data (phantoms, or an imported dataset), nnU-Net, YOLO, then the model folder."""
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
