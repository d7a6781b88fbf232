"""Verbs for the researcher: phantoms, the pipeline on a folder, quantifying a label map,
training the demo models and evaluating them."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from node.cli.common import console, exit_on, fail, load_series_or_exit

if TYPE_CHECKING:
    from pipeline.quantify import Metrics

app = typer.Typer(rich_markup_mode="rich")


@app.command()
def phantom(
    out: Annotated[Path, typer.Argument(help="Output folder (DICOM under OUT/dicom/).")],
    seed: Annotated[int, typer.Option(help="Random seed; same seed, same study.")] = 0,
    kind: Annotated[str, typer.Option(help="magnitude or psir")] = "psir",
    enhanced: Annotated[
        bool, typer.Option("--enhanced", help="One Enhanced MR multi-frame file.")
    ] = False,
    slices: Annotated[
        int | None,
        typer.Option(
            help="8..14 (classic), 5..20 (randomized, wide, varied, holdout); default: by seed."
        ),
    ] = None,
    scar: Annotated[
        bool | None, typer.Option("--scar/--no-scar", help="Force an infarct or none.")
    ] = None,
    mvo: Annotated[bool | None, typer.Option("--mvo/--no-mvo", help="Force MVO or none.")] = None,
    territory: Annotated[str | None, typer.Option(help="LAD, LCx or RCA.")] = None,
    small_infarct: Annotated[
        bool, typer.Option("--small-infarct", help="A narrow, thin infarct (~1-2 ml), no MVO.")
    ] = False,
    border_zone: Annotated[
        bool,
        typer.Option("--border-zone", help="A peri-infarct grey zone (its volume in truth.json)."),
    ] = False,
    style: Annotated[
        str,
        typer.Option(
            help="classic, randomized (wide anatomy/appearance/geometry ranges), wide "
            "(randomized plus dilated/thick ventricles, lower SNR, grey blood, motion ghosts, "
            "reduced phase resolution, multi-coil noise), varied (wide with hearts of "
            "irregular shape and thinned infarcts) or holdout (two axes beyond the wide "
            "ranges)."
        ),
    ] = "classic",
) -> None:
    """Write a synthetic LGE study with ground truth (truth.json, truth_labels.nii.gz)."""
    from pipeline.research.phantom import PhantomSpec, make_phantom

    with exit_on(ValueError, code=2):
        spec = PhantomSpec(
            seed=seed, kind=kind, enhanced=enhanced, slices=slices, scar=scar, mvo=mvo,
            territory=territory, small_infarct=small_infarct, style=style,
            border_zone=border_zone,
        )  # fmt: skip
    case = make_phantom(out, spec, progress=sys.stderr.isatty())
    t = case.truth
    extra = f"{', enhanced' if enhanced else ''}{'' if style == 'classic' else ', ' + style}"
    table = Table(title=f"phantom seed {seed} ({kind}{extra})")
    table.add_column("quantity")
    table.add_column("truth", justify="right")
    for name, value, unit in (
        ("LV myocardium", t.myocardium_ml, "ml"),
        ("LV myocardial mass", t.myocardium_mass_g, "g"),
        ("scar", t.scar_ml, "ml"),
        ("scar", t.scar_percent, "% LV"),
        ("MVO", t.mvo_ml, "ml"),
        ("MVO", t.mvo_percent, "% LV"),
    ):
        table.add_row(name, f"{value:.2f} {unit}")
    if border_zone:
        truth_doc = json.loads((out / "truth.json").read_text())["phantom"]
        table.add_row("grey zone (border zone)", f"{truth_doc['grey_zone_ml']:.2f} ml")
    console.print(table)
    console.print(
        f"{len(case.files)} file(s) in {out / 'dicom'}; truth in {out / 'truth.json'} "
        f"({case.seconds:.1f} s)"
    )


@app.command()
def inspect(
    folder: Annotated[Path, typer.Argument(help="Folder or file(s) of one DICOM series.")],
    series: Annotated[str | None, typer.Option(help="SeriesInstanceUID to pick.")] = None,
) -> None:
    """Load a series as the pipeline would and print its geometry, or why it is unusable."""
    vol = load_series_or_exit(folder, series)
    g = vol.geometry
    ds = vol.datasets[0]
    console.print_json(
        json.dumps(
            {
                "series_instance_uid": vol.series_instance_uid,
                "series_description": str(ds.get("SeriesDescription", "")),
                "sop_class": ds.SOPClassUID.name,
                "shape_zyx": list(g.shape),
                "spacing_zyx_mm": [round(v, 4) for v in g.spacing_zyx],
                "slice_thickness_mm": g.slice_thickness,
                "origin": [round(v, 4) for v in g.origin],
                "slice_direction": [round(v, 5) for v in g.slice_direction],
                "value_range": [float(vol.array.min()), float(vol.array.max())],
            }
        )
    )


@app.command()
def analyze(
    in_dir: Annotated[Path, typer.Argument(help="Folder with one LGE series (DICOM).")],
    out: Annotated[Path, typer.Option(help="Output folder.")],
    series: Annotated[str | None, typer.Option(help="SeriesInstanceUID to pick.")] = None,
    model_dir: Annotated[Path | None, typer.Option(help="Model bundle folder.")] = None,
    nnunet_model: Annotated[
        Path | None, typer.Option(help="An nnU-Net trainer folder (overrides the bundle's).")
    ] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    mirroring: Annotated[
        bool | None,
        typer.Option(
            "--mirroring/--no-mirroring",
            help="Test-time mirroring on or off (default: as the model's manifest says).",
        ),
    ] = None,
    nsd: Annotated[float, typer.Option(help="n for the n-SD reference threshold.")] = 5.0,
    dicom: Annotated[
        bool, typer.Option("--dicom/--no-dicom", help="Write SEG, SR and overlays.")
    ] = True,
) -> None:
    """Run the pipeline on a folder of DICOM files; write metrics.json (+ SEG/SR/overlays)."""
    from dicom_templates.identity import Algorithm
    from dicom_templates.outputs import write_metrics, write_outputs
    from pipeline.models import ModelBundle, ModelError
    from pipeline.run import Pipeline, PipelineSettings

    with console.status("loading series") as status:
        volume = load_series_or_exit(in_dir, series, "not a usable LGE series")
        modality = str(volume.datasets[0].get("Modality", ""))
        if modality != "MR":
            raise fail(f"not a usable LGE series: modality is {modality!r}, not MR")
        status.update("loading models")
        with exit_on(ModelError, code=2, what="model error"):
            bundle = ModelBundle.load(model_dir, nnunet_model)
        pipeline = Pipeline(bundle, PipelineSettings(device=device, mirroring=mirroring, nsd=nsd))
        result = pipeline.run(volume, progress=lambda s: status.update(s))
        algorithm = Algorithm.of_models(bundle)
        if dicom:
            status.update("writing SEG, SR and overlays")
            write_outputs(out, volume, result.labels, result.metrics, algorithm)
        else:
            write_metrics(out, volume, result.metrics, algorithm)
    _print_metrics(result.metrics, result.timings, volume.array.shape[0])
    console.print(f"outputs in {out}")


def _print_metrics(m: Metrics, timings: dict[str, float], n_slices: int) -> None:
    table = Table(title="LGE quantification (research only, not for clinical use)")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    for name, value in (
        ("LV myocardium", f"{m.myocardium_ml:.1f} ml / {m.myocardium_mass_g:.1f} g"),
        ("scar", f"{m.scar_ml:.1f} ml / {m.scar_mass_g:.1f} g / {m.scar_percent:.1f} %"),
        ("MVO", f"{m.mvo_ml:.2f} ml / {m.mvo_percent:.1f} %"),
        *((f"reference {r.method}", f"{r.scar_percent:.1f} %") for r in m.reference),
        (
            "transmural > 50 %",
            ", ".join(str(s.id) for s in m.segments if s.transmurality_percent > 50) or "none",
        ),
        ("QC flags", ", ".join(m.qc.flags) or "none"),
        ("time", f"{timings['total']:.2f} s ({timings['total'] / n_slices:.3f} s/image)"),
    ):
        table.add_row(name, value)
    console.print(table)


@app.command()
def evaluate(
    out: Annotated[Path, typer.Option(help="Where the tables, JSON and plots go.")],
    cases: Annotated[int, typer.Option(help="Held-out phantoms per set (>= 20).")] = 24,
    model_dir: Annotated[
        Path | None, typer.Option(help="Model folder (one; default: the bundled models).")
    ] = None,
    model: Annotated[
        list[Path] | None,
        typer.Option(
            help="A model folder; repeat to compare several side by side (the first is the "
            "baseline of the paired comparison)."
        ),
    ] = None,
    dataset: Annotated[
        Path | None,
        typer.Option(help="A labelled set from `lge-node dataset import` instead of phantoms."),
    ] = None,
    include_training_cases: Annotated[
        bool,
        typer.Option(
            "--include-training-cases",
            help="With --dataset: also the cases the model trained on (optimistic figures).",
        ),
    ] = False,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="classic, randomized, wide, varied (irregular hearts), holdout (style never "
            "trained on), calibration; "
            "repeat for several (default: classic, randomized, holdout).",
        ),
    ] = None,
) -> None:
    """Accuracy per set: Dice, HD95, detection, volume agreement, targets met, QC catch
    rate, Bland-Altman plot and worst cases (OUT/<set>/; with several models
    OUT/<set>/<model>/ and OUT/<set>/comparison.md). --dataset: an imported labelled set
    instead of phantoms, on the cases the model never trained on."""
    from pipeline.models import ModelBundle, ModelError
    from pipeline.research.evaluate import (
        EVAL_SETS,
        compare,
        evaluate_dataset,
        held_out,
        markdown_table,
    )
    from pipeline.research.evaluate import evaluate as run_evaluation
    from pipeline.run import Pipeline

    if model_dir is not None and model:
        raise fail("give --model (one or several) or --model-dir, not both", code=2)
    folders: list[Path | None] = list(model) if model else [model_dir]
    if dataset is not None:
        if set_:
            raise fail("--set chooses phantoms; with --dataset the set is the dataset", code=2)
        if not (dataset / "dataset_card.json").is_file():
            raise fail(f"{dataset}: not a dataset from `lge-node dataset import`", code=2)
        if not (dataset / "volumes").is_dir():
            raise fail(f"{dataset}: no volumes/ (imported by an older version; import again)", 2)
        sets = [dataset.name]
    else:
        sets = set_ or ["classic", "randomized", "holdout"]
        unknown = [s for s in sets if s not in EVAL_SETS]
        if unknown:
            raise fail(f"unknown --set {', '.join(unknown)}; choose from {', '.join(EVAL_SETS)}")
    names = _model_names(folders)
    pipelines = {}
    with exit_on(ModelError, code=2, what="model error"):
        for name, folder in zip(names, folders, strict=True):
            pipelines[name] = Pipeline(ModelBundle.load(folder))
    for set_name in sets:
        runs = {}
        for name, pipeline in pipelines.items():
            where = out / set_name / name if len(pipelines) > 1 else out / set_name
            if dataset is None:
                runs[name] = run_evaluation(pipeline, cases, where, set_name)
                summary = runs[name][0]
                console.print(f"\n## {set_name}, {name} (seeds {EVAL_SETS[set_name][0]}+)\n")
            else:
                ids, why = held_out(dataset, pipeline.bundle.manifest)
                if include_training_cases:
                    ids, why = held_out(dataset, {})[0], "every case (--include-training-cases)"
                if not ids:
                    raise fail(
                        f"model {name}: {why}, none is left to evaluate on; evaluate on another "
                        "dataset, or give --include-training-cases (optimistic figures)", code=2,
                    )  # fmt: skip
                console.print(f"\n## {set_name}, {name}: {len(ids)} cases ({why})\n")
                runs[name] = evaluate_dataset(pipeline, dataset, where, ids)
                summary = runs[name][0]
            console.print(markdown_table(summary))
        if len(runs) > 1:
            if dataset is not None and len({tuple(sorted(r.case for r in rows))
                                             for _, rows in runs.values()}) > 1:  # fmt: skip
                console.print("[yellow]the models were scored on different held-out cases; "
                              "the paired comparison uses the cases both scored[/]")  # fmt: skip
            console.print(f"\n## {set_name}: side by side\n")
            console.print(compare(runs, out / set_name))
    console.print(f"details in {out}")


def _model_names(folders: list[Path | None]) -> list[str]:
    """Short distinct names for the models compared (their folder names)."""
    names: list[str] = []
    for folder in folders:
        base = folder.resolve().name if folder is not None else "bundled"
        name, k = base, 2
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names.append(name)
    return names


@app.command("calibrate-qc")
def calibrate_qc(
    model_dir: Annotated[
        Path, typer.Option(help="Model bundle folder (its manifest.json gets the thresholds).")
    ],
    out: Annotated[Path, typer.Option(help="Where the calibration tables and JSON go.")],
    cases: Annotated[int, typer.Option(min=20, help="Calibration phantoms.")] = 60,
    mirroring: Annotated[
        bool | None,
        typer.Option(
            "--mirroring/--no-mirroring",
            help="Calibrate for inference with or without test-time mirroring and make that "
            "the model's mode (default: the mode its manifest names).",
        ),
    ] = None,
    mirror_axis: Annotated[
        list[int] | None,
        typer.Option(
            min=0,
            max=1,
            help="With --mirroring: mirror only this in-plane axis (0 rows, 1 columns; "
            "repeatable; default: every axis the checkpoint allows, a network pass each).",
        ),
    ] = None,
) -> None:
    """Set the QC thresholds of a model from the calibration set (seeds kept apart from
    training and evaluation) and write them into its manifest.json, with the inference
    mode they hold for."""
    from pipeline.models import ModelBundle
    from pipeline.research.evaluate import calibrate_qc as run_calibration
    from pipeline.research.evaluate import markdown_table
    from pipeline.run import Pipeline

    bundle = ModelBundle.load(model_dir)
    if mirroring is not None:
        bundle = replace(bundle, test_time_mirroring=mirroring)
    if mirror_axis:
        if not bundle.test_time_mirroring:
            raise fail("--mirror-axis chooses the axes of test-time mirroring: give --mirroring")
        bundle = replace(bundle, mirror_axes=tuple(sorted(set(mirror_axis))))
    pipeline = Pipeline(bundle)
    summary = run_calibration(pipeline, cases, out, model_dir / "manifest.json")
    console.print(markdown_table(summary))
    table = Table(title="QC thresholds (flag at / typical)")
    for col in ("measure", "flag at", "typical"):
        table.add_column(col)
    for name, t in summary["qc_calibration"]["thresholds"].items():
        table.add_row(name, f"{t['flag_at']:.4g}", f"{t['typical']:.4g}")
    console.print(table)
    console.print(f"thresholds written to {model_dir / 'manifest.json'}; details in {out}")


@app.command("train-demo")
def train_demo(
    out: Annotated[Path | None, typer.Option(help="Where the models go.")] = None,
    cases: Annotated[int, typer.Option(help="Training phantoms.")] = 240,
    nnunet_epochs: Annotated[int, typer.Option(help="nnU-Net epochs.")] = 200,
    nnunet_iterations: Annotated[int, typer.Option(help="Iterations per epoch.")] = 50,
    nnunet_restart_epochs: Annotated[
        list[int] | None,
        typer.Option(
            help="Then run nnU-Net's schedule again for this many epochs from the weights "
            "reached (a warm restart); repeat for several."
        ),
    ] = None,
    restart_style: Annotated[
        list[str] | None,
        typer.Option(
            help="Phantom style of each restart's non-classic cases, in order: randomized "
            "(as the first run), wide (wider anatomy, lower SNR, acquisition artifacts) or "
            "mixed (randomized and wide alternating) or varied (randomized and wide with "
            "irregular hearts alternating); wide, mixed and varied draw new seeds; repeat "
            "per restart, missing ones are randomized."
        ),
    ] = None,
    yolo_epochs: Annotated[int, typer.Option(help="YOLO epochs.")] = 6,
    work: Annotated[Path | None, typer.Option(help="Scratch folder.")] = None,
    small_infarct_every: Annotated[
        int, typer.Option(help="Make every k-th phantom a ~1 ml infarct (0: none).")
    ] = 0,
    spacing_mm: Annotated[
        float | None,
        typer.Option(min=0.3, max=5.0, help="nnU-Net in-plane spacing, mm (default: its plan)."),
    ] = None,
    classic_every: Annotated[
        int,
        typer.Option(
            min=1, help="Every k-th pair of phantoms classic, the rest randomized (1: classic)."
        ),
    ] = 3,
    trainer: Annotated[
        str, typer.Option(help="robust (heavy augmentation + soft-label KL) or default.")
    ] = "robust",
    workers: Annotated[int, typer.Option(min=1, help="Processes generating phantoms.")] = 2,
    resume: Annotated[
        bool, typer.Option(help="Keep generated data and continue nnU-Net from its checkpoint.")
    ] = False,
    detector_style: Annotated[
        str | None,
        typer.Option(
            help="Phantom style the detector trains on (as --restart-style); default: the "
            "last run's."
        ),
    ] = None,
) -> None:
    """Train the bundled demo models on phantoms (fixed seeds; CPU; see README for time)."""
    from pipeline.research.train import PHANTOM_DATASETS, TRAINERS, TrainSettings
    from pipeline.research.train import train_demo as run

    if trainer not in TRAINERS:
        raise fail(f"--trainer must be one of {', '.join(TRAINERS)}")
    styles = tuple(restart_style or ())
    if unknown := [s for s in styles if s not in PHANTOM_DATASETS]:
        raise fail(f"--restart-style must be one of {', '.join(PHANTOM_DATASETS)}: {unknown}")
    if len(styles) > len(nnunet_restart_epochs or ()):
        raise fail("--restart-style given more often than --nnunet-restart-epochs")
    if detector_style is not None and detector_style not in PHANTOM_DATASETS:
        raise fail(f"--detector-style must be one of {', '.join(PHANTOM_DATASETS)}")
    settings = TrainSettings(
        cases=cases,
        nnunet_epochs=nnunet_epochs,
        nnunet_iterations=nnunet_iterations,
        restart_epochs=tuple(nnunet_restart_epochs or ()),
        restart_styles=styles,
        yolo_epochs=yolo_epochs,
        detector_data=detector_style,
        small_infarct_every=small_infarct_every,
        spacing_mm=spacing_mm,
        classic_every=classic_every,
        trainer=trainer,
        workers=workers,
        resume=resume,
    )
    if out is not None:
        settings.out_dir = out
    if work is not None:
        settings.work_dir = work
    path = run(settings)
    timings = ", ".join(f"{k} {v:.0f}" for k, v in settings.timings.items())
    console.print(f"models written to {path} ({timings})")


@app.command()
def train(
    dataset: Annotated[Path, typer.Option(help="A dataset from `lge-node dataset import`.")],
    out: Annotated[
        Path, typer.Option(help="The model folder to write (point pipeline.model_dir at it).")
    ],
    size: Annotated[
        str,
        typer.Option(
            help="demo (a reduced 2D U-Net, ~0.02 s/slice on a CPU) or full (nnU-Net's own "
            "2D plan)."
        ),
    ] = "demo",
    folds: Annotated[
        str,
        typer.Option(
            help="all (one model on every case), k (a k-fold ensemble from the import's "
            "splits) or 0,2,..."
        ),
    ] = "all",
    trainer: Annotated[
        str, typer.Option(help="robust (heavy augmentation + soft-label KL) or default.")
    ] = "robust",
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    epochs: Annotated[
        int | None, typer.Option(help="nnU-Net epochs (demo 100, full 1000).")
    ] = None,
    iterations: Annotated[
        int | None, typer.Option(help="Iterations per epoch (demo 50, full 250).")
    ] = None,
    yolo_epochs: Annotated[int, typer.Option(help="YOLO epochs.")] = 30,
    work: Annotated[Path | None, typer.Option(help="Scratch folder (resumable).")] = None,
    resume: Annotated[
        bool, typer.Option(help="Keep preprocessing and continue from the checkpoints.")
    ] = False,
) -> None:
    """Train the heart detector and the segmenter on your own imported data; writes a
    model folder in the standard nnU-Net layout with a model card (data, licence)."""
    from pipeline.research.train import SIZES, TRAINERS, TrainSettings
    from pipeline.research.train import train_demo as run

    if size not in SIZES or trainer not in TRAINERS or device not in ("cpu", "cuda"):
        raise fail("--size demo|full, --trainer robust|default, --device cpu|cuda", code=2)
    card = dataset / "dataset_card.json"
    if not card.is_file():
        raise fail(f"{dataset}: no dataset_card.json (make it with `lge-node dataset import`)", 2)
    splits = json.loads((dataset / "nnunet" / "splits_final.json").read_text())
    if folds == "all":
        chosen: tuple[str, ...] = ("all",)
    elif folds.isdigit() and "," not in folds and int(folds) > 1:
        chosen = tuple(str(i) for i in range(int(folds)))
    else:
        chosen = tuple(f.strip() for f in folds.split(","))
    if chosen != ("all",) and not all(f.isdigit() and int(f) < len(splits) for f in chosen):
        raise fail(f"--folds {folds}: the dataset has {len(splits)} folds (0-{len(splits) - 1})", 2)
    settings = TrainSettings(
        out_dir=out, dataset=dataset, size=size, folds=chosen, trainer=trainer, device=device,
        nnunet_epochs=epochs or (100 if size == "demo" else 1000),
        nnunet_iterations=iterations or (50 if size == "demo" else 250),
        yolo_epochs=yolo_epochs, resume=resume,
        work_dir=work or Path("models-work") / dataset.resolve().name,
    )  # fmt: skip
    with exit_on(ValueError, code=2):
        path = run(settings)
    timings = ", ".join(f"{k} {v:.0f}" for k, v in settings.timings.items())
    console.print(f"model written to {path} ({timings}); see {path / 'MODEL_CARD.md'}")


@app.command()
def report(
    series_dir: Annotated[Path, typer.Argument(help="Folder of the source LGE series.")],
    labels: Annotated[
        Path,
        typer.Option(
            help="Label map (NIfTI, labels 0-5 as in the README) on the series' geometry."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Output folder.")],
    predecessor: Annotated[
        Path | None, typer.Option(help="Earlier sr.dcm this report supersedes.")
    ] = None,
    blood_pools: Annotated[
        bool, typer.Option("--blood-pools", help="Add LV/RV blood pool SEG segments.")
    ] = False,
    algorithm_name: Annotated[
        str, typer.Option(help="Who made the labels (SEG/SR algorithm name).")
    ] = "supplied labels",
) -> None:
    """Quantify a label map and write metrics.json, seg.dcm, sr.dcm and overlay/*.dcm."""
    import SimpleITK as sitk

    from dicom_templates.identity import Algorithm
    from dicom_templates.outputs import write_outputs
    from pipeline.quantify import quantify
    from pipeline.volume import Geometry

    volume = load_series_or_exit(series_dir)
    with exit_on(RuntimeError, what=f"cannot read {labels}"):
        image = sitk.ReadImage(str(labels))
    why = volume.geometry.mismatch(Geometry.from_sitk(image))
    if why:
        raise fail(f"error: {labels} is not on the series' geometry: {why}")
    label_array = sitk.GetArrayFromImage(image).astype("uint8")
    metrics = quantify(label_array, volume.geometry)
    algorithm = Algorithm(name=algorithm_name, kind="MANUAL", synthetic_trained=False)
    files = write_outputs(
        out, volume, label_array, metrics, algorithm, predecessor, include_blood_pools=blood_pools
    )
    console.print(
        f"metrics: {files.metrics}\nSEG: {files.seg}\nSR: {files.sr}\n"
        f"overlays: {len(files.overlays)} in {files.overlays[0].parent}"
    )


dataset_app = typer.Typer(rich_markup_mode="rich", no_args_is_help=True,
                          help="Bring your own labelled data: import it for training.")  # fmt: skip

FORMATS = ("emidec", "nifti", "dicom")


@dataset_app.command("import")
def dataset_import(
    source: Annotated[
        Path,
        typer.Argument(
            help="The data: an EMIDEC folder, a folder of NIfTI images, or a folder of DICOM + SEG "
            "(a PACS export, or a node's <data_dir>/instances with readers' edited SEGs)."
        ),
    ],
    out: Annotated[Path, typer.Argument(help="The dataset folder to write (replaced whole).")],
    format: Annotated[str, typer.Option("--format", help="emidec, nifti or dicom")] = "emidec",
    labels: Annotated[
        Path | None, typer.Option(help="nifti: the folder of label files (same names).")
    ] = None,
    label_map: Annotated[
        str | None,
        typer.Option(
            help="nifti: VALUE:NAME,... with NAME one of background, lv_blood_pool, "
            "myocardium, scar, mvo, rv_blood_pool, ignore (default: EMIDEC's 0-4)."
        ),
    ] = None,
    licence: Annotated[
        str,
        typer.Option(
            help="The data's licence, kept in the dataset card and every model card trained on it."
        ),
    ] = "unknown",
    folds: Annotated[int, typer.Option(min=2, max=10, help="Cross-validation folds.")] = 5,
    seed: Annotated[int, typer.Option(help="Splits and crop margins; same seed, same set.")] = 0,
    skip_invalid: Annotated[
        bool, typer.Option("--skip-invalid", help="Leave unusable cases out (listed).")
    ] = False,
    accept_automatic: Annotated[
        bool,
        typer.Option(
            "--accept-automatic",
            help="dicom: learn from SEGs whose segments are all AUTOMATIC too (a model's "
            "output; left out by default).",
        ),
    ] = False,
) -> None:
    """Check every case and write an nnU-Net raw dataset (heart-region crops, 5-fold
    splits), a YOLO detection set, summary.json and a dataset card. Nothing is written
    when a case is unusable (its reason is listed), unless --skip-invalid."""
    from tqdm import tqdm

    from pipeline.research import importer as imp

    if format not in FORMATS:
        raise fail(f"--format {format!r}: one of {', '.join(FORMATS)}", code=2)
    if not source.is_dir():
        raise fail(f"{source} is not a folder", code=2)
    ignored: dict[str, str] = {}
    with exit_on(imp.DatasetImportError, code=2, what="import refused"):
        mapping = imp.parse_label_map(label_map) if label_map else dict(imp.EMIDEC_MAP)
        if format == "emidec":
            sources = imp.emidec_cases(source)
        elif format == "nifti":
            if labels is None or not labels.is_dir():
                raise imp.DatasetImportError("--format nifti needs --labels FOLDER")
            sources = imp.nifti_cases(source, labels, mapping)
        else:
            from dicom_templates.seg import read_seg_masks

            sources, ignored = imp.dicom_seg_cases(
                source,
                lambda seg, volume: read_seg_masks(seg, volume, include_blood_pools=True),
                accept_automatic,
            )
            mapping = {}  # segments are matched by their codes, not values
        result = imp.import_dataset(
            sources, out, format=format, source=str(source), licence=licence,
            label_map=mapping, folds=folds, seed=seed, skip_invalid=skip_invalid,
            ignored=ignored,
            progress=lambda it: tqdm(it, total=len(sources), desc="cases", unit="case"),
        )  # fmt: skip
    table = Table(title=f"{len(result.cases)} cases imported into {out}")
    for column in ("case", "split", "slices", "matrix", "pixel mm", "slice mm",
                   "intensity p1-p99", "myocardium ml", "scar ml", "MVO ml"):  # fmt: skip
        table.add_column(column, justify="left" if column in ("case", "split") else "right")
    for c in result.cases:
        table.add_row(
            c.case_id, c.split, str(c.slices), f"{c.matrix[0]}x{c.matrix[1]}",
            f"{c.pixel_spacing_mm[0]:g}x{c.pixel_spacing_mm[1]:g}", f"{c.slice_spacing_mm:g}",
            f"{c.intensity_p1_p99[0]:g} - {c.intensity_p1_p99[1]:g}",
            f"{c.label_ml['myocardium'] + c.label_ml['scar'] + c.label_ml['mvo']:.1f}",
            f"{c.label_ml['scar'] + c.label_ml['mvo']:.1f}", f"{c.label_ml['mvo']:.2f}",
        )  # fmt: skip
    console.print(table)
    for case, why in result.skipped.items():
        console.print(f"[yellow]skipped[/yellow] {case}: {why}")
    notes = sorted({n for c in result.cases for n in c.notes})
    for note in notes:
        console.print(f"note: {note}")
