"""``lge-node``: the one command-line entry point (verbs per DESIGN.md)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from node import __version__

app = typer.Typer(
    name="lge-node",
    help="DICOM node for LGE cardiac MR: scar and MVO quantification. "
    "Research software, not a medical device.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
err = Console(stderr=True)


def _load_series_or_exit(folder: Path, series: str | None = None, what: str = ""):
    """Load a series for a command, or print why it is unusable and exit 1."""
    from pipeline.errors import SeriesLoadError
    from pipeline.series import load_series

    try:
        return load_series(folder, series_instance_uid=series)
    except SeriesLoadError as exc:
        err.print(f"[red]{what}{type(exc).__name__}:[/red] {exc}")
        raise typer.Exit(1) from exc


@app.command()
def version() -> None:
    """Print the version."""
    console.print(f"lge-node {__version__}")


@app.command()
def phantom(
    out: Annotated[Path, typer.Argument(help="Output folder (DICOM under OUT/dicom/).")],
    seed: Annotated[int, typer.Option(help="Random seed; same seed, same study.")] = 0,
    kind: Annotated[str, typer.Option(help="magnitude or psir")] = "psir",
    enhanced: Annotated[
        bool, typer.Option("--enhanced", help="One Enhanced MR multi-frame file.")
    ] = False,
    slices: Annotated[int | None, typer.Option(help="8..14; default drawn by seed.")] = None,
    scar: Annotated[
        bool | None, typer.Option("--scar/--no-scar", help="Force an infarct or none.")
    ] = None,
    mvo: Annotated[bool | None, typer.Option("--mvo/--no-mvo", help="Force MVO or none.")] = None,
    territory: Annotated[str | None, typer.Option(help="LAD, LCx or RCA.")] = None,
    small_infarct: Annotated[
        bool, typer.Option("--small-infarct", help="A narrow, thin infarct (~1-2 ml), no MVO.")
    ] = False,
) -> None:
    """Write a synthetic LGE study with ground truth (truth.json, truth_labels.nii.gz)."""
    from pipeline.phantom import PhantomSpec, make_phantom

    try:
        spec = PhantomSpec(
            seed=seed, kind=kind, enhanced=enhanced, slices=slices, scar=scar, mvo=mvo,
            territory=territory, small_infarct=small_infarct,
        )  # fmt: skip
    except ValueError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    case = make_phantom(out, spec, progress=sys.stderr.isatty())
    t = case.truth
    table = Table(title=f"phantom seed {seed} ({kind}{', enhanced' if enhanced else ''})")
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
    vol = _load_series_or_exit(folder, series)
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
    mirroring: Annotated[bool, typer.Option("--mirroring", help="Test-time mirroring.")] = False,
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
        volume = _load_series_or_exit(in_dir, series, "not a usable LGE series: ")
        modality = str(volume.datasets[0].get("Modality", ""))
        if modality != "MR":
            err.print(f"[red]not a usable LGE series:[/red] modality is {modality!r}, not MR")
            raise typer.Exit(1)
        status.update("loading models")
        try:
            bundle = ModelBundle.load(model_dir, nnunet_model)
        except ModelError as exc:
            err.print(f"[red]model error:[/red] {exc}")
            raise typer.Exit(2) from exc
        pipeline = Pipeline(bundle, PipelineSettings(device=device, mirroring=mirroring, nsd=nsd))
        result = pipeline.run(volume, progress=lambda s: status.update(s))
        algorithm = Algorithm(
            name="lge-node YOLOv8+nnU-Net",
            version=bundle.version,
            synthetic_trained=bundle.synthetic_trained,
        )
        if dicom:
            status.update("writing SEG, SR and overlays")
            write_outputs(out, volume, result.labels, result.metrics, algorithm)
        else:
            write_metrics(out, volume, result.metrics, algorithm)
    _print_metrics(result.metrics, result.timings, volume.array.shape[0])
    console.print(f"outputs in {out}")


def _print_metrics(m, timings: dict[str, float], n_slices: int) -> None:
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
    out: Annotated[Path, typer.Option(help="Where the table, JSON and plot go.")],
    cases: Annotated[int, typer.Option(help="Held-out phantoms (>= 20 for the README).")] = 24,
    model_dir: Annotated[Path | None, typer.Option(help="Model bundle folder.")] = None,
) -> None:
    """Accuracy on held-out phantoms: Dice, HD95, volume agreement, Bland-Altman plot."""
    from pipeline.evaluate import evaluate as run_evaluation
    from pipeline.evaluate import markdown_table
    from pipeline.models import ModelBundle
    from pipeline.run import Pipeline

    pipeline = Pipeline(ModelBundle.load(model_dir))
    summary = run_evaluation(pipeline, cases, out)
    console.print(markdown_table(summary))
    console.print(f"details in {out}")


@app.command("train-demo")
def train_demo(
    out: Annotated[Path | None, typer.Option(help="Where the models go.")] = None,
    cases: Annotated[int, typer.Option(help="Training phantoms.")] = 100,
    nnunet_epochs: Annotated[int, typer.Option(help="nnU-Net epochs.")] = 200,
    nnunet_iterations: Annotated[int, typer.Option(help="Iterations per epoch.")] = 50,
    yolo_epochs: Annotated[int, typer.Option(help="YOLO epochs.")] = 10,
    work: Annotated[Path | None, typer.Option(help="Scratch folder.")] = None,
    small_infarct_every: Annotated[
        int, typer.Option(help="Make every k-th phantom a ~1 ml infarct (0: none).")
    ] = 0,
    spacing_mm: Annotated[
        float | None,
        typer.Option(min=0.3, max=5.0, help="nnU-Net in-plane spacing, mm (default: its plan)."),
    ] = None,
) -> None:
    """Train the bundled demo models on phantoms (fixed seeds; CPU; see README for time)."""
    from pipeline.train import TrainSettings
    from pipeline.train import train_demo as run

    settings = TrainSettings(
        cases=cases,
        nnunet_epochs=nnunet_epochs,
        nnunet_iterations=nnunet_iterations,
        yolo_epochs=yolo_epochs,
        small_infarct_every=small_infarct_every,
        spacing_mm=spacing_mm,
    )
    if out is not None:
        settings.out_dir = out
    if work is not None:
        settings.work_dir = work
    path = run(settings)
    timings = ", ".join(f"{k} {v:.0f}" for k, v in settings.timings.items())
    console.print(f"models written to {path} ({timings})")


@app.command()
def report(
    series_dir: Annotated[Path, typer.Argument(help="Folder of the source LGE series.")],
    labels: Annotated[
        Path, typer.Option(help="Label map (NIfTI, DESIGN.md labels) on the series' geometry.")
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

    volume = _load_series_or_exit(series_dir)
    try:
        image = sitk.ReadImage(str(labels))
    except RuntimeError as exc:
        err.print(f"[red]error:[/red] cannot read {labels}: {exc}")
        raise typer.Exit(1) from exc
    why = volume.geometry.mismatch(Geometry.from_sitk(image))
    if why:
        err.print(f"[red]error:[/red] {labels} is not on the series' geometry: {why}")
        raise typer.Exit(1)
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


@app.command("check-config")
def check_config(
    config: Annotated[Path | None, typer.Argument(help="TOML file; none: defaults.")] = None,
) -> None:
    """Validate a config file (plus LGE_NODE_* environment) and print the result."""
    from node.config import ConfigError, load_config

    try:
        cfg = load_config(config)
    except ConfigError as exc:
        err.print(f"[red]config error:[/red] {exc}")
        raise typer.Exit(2) from exc
    console.print_json(cfg.model_dump_json())


def _config_or_exit(path: Path | None):
    from node.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        err.print(f"[red]config error:[/red] {exc}")
        raise typer.Exit(2) from exc


@app.command()
def serve(
    config: Annotated[Path | None, typer.Option(help="TOML config; none: defaults.")] = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING")] = "INFO",
    log_json: Annotated[bool, typer.Option("--log-json", help="JSON log lines.")] = False,
) -> None:
    """Run the node: receive, select, process, send back (until SIGTERM / Ctrl-C)."""
    from node import logs
    from node.server import run

    cfg = _config_or_exit(config)
    logs.configure(log_level.upper(), log_json)
    run(cfg)


def _when(t: float | None) -> str:
    import time as _time

    if t is None:
        return "-"
    return _time.strftime("%Y-%m-%d %H:%M:%S", _time.localtime(t))


@app.command()
def status(
    config: Annotated[Path | None, typer.Option(help="TOML config; none: defaults.")] = None,
    limit: Annotated[int, typer.Option(help="Rows per table.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Recent series, jobs, sends and events of a node (reads its index)."""
    from dataclasses import asdict

    from node.index import Index
    from node.status import snapshot

    cfg = _config_or_exit(config)
    db = cfg.storage.data_dir / "index.db"
    if cfg.storage.database_url is None and not db.exists():
        err.print(f"[red]no node data:[/red] {db} does not exist (has the node run?)")
        raise typer.Exit(1)
    index = Index(cfg.database_url)
    snap = snapshot(index, limit)
    index.close()
    if as_json:
        console.print_json(json.dumps(asdict(snap)))
        return
    t = Table(title="series (newest first)")
    for col in ("received", "series", "description", "n", "state", "from", "reason"):
        t.add_column(col)
    for r in snap.series:
        t.add_row(_when(r.last_received), r.series_uid[-20:], r.description, str(r.instances),
                  r.state, r.calling_ae, r.reason)  # fmt: skip
    console.print(t)
    t = Table(title="jobs")
    for col in ("id", "series", "state", "tries", "s", "scar %", "error"):
        t.add_column(col)
    for j in snap.jobs:
        seconds = f"{j.seconds:.1f}" if j.seconds else "-"
        scar = f"{j.scar_percent:.1f}" if j.scar_percent is not None else "-"
        tries = f"{j.attempts}/{j.max_attempts}"
        t.add_row(str(j.id), j.series_uid[-20:], j.state, tries, seconds, scar, j.error)
    console.print(t)
    t = Table(title="sends")
    for col in ("destination", "pending", "sent", "next try", "last error"):
        t.add_column(col)
    for d in snap.sends:
        t.add_row(d.destination, str(d.pending), str(d.sent),
                  _when(d.next_attempt_at) if d.pending else "-", d.last_error)  # fmt: skip
    console.print(t)
    t = Table(title="events (newest first)")
    for col in ("time", "level", "kind", "peer", "message"):
        t.add_column(col)
    for e in snap.events:
        t.add_row(_when(e.time), e.level, e.kind, e.peer, e.message)
    console.print(t)


@app.command()
def retrieve(
    pacs: Annotated[str, typer.Option(help="Name of a [[pacs]] entry in the config.")],
    config: Annotated[Path | None, typer.Option(help="TOML config; none: defaults.")] = None,
    study: Annotated[str | None, typer.Option(help="StudyInstanceUID.")] = None,
    accession: Annotated[str | None, typer.Option(help="Accession number.")] = None,
    patient: Annotated[str | None, typer.Option(help="Patient ID.")] = None,
    since: Annotated[str | None, typer.Option(help="Studies from YYYYMMDD on.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only show the plan.")] = False,
) -> None:
    """Find a study on a PACS, choose its LGE series by the selection rules, and move
    them to the running node (which processes them like a pushed study)."""
    from node import logs
    from node.index import Index
    from node.retrieve import (
        RetrieveError,
        SeriesPlan,
        fetch,
        pacs_named,
        plan,
        record_outcome,
    )

    if sum(x is not None for x in (study, accession, patient)) != 1:
        err.print("[red]give exactly one of --study, --accession, --patient[/red]")
        raise typer.Exit(2)
    cfg = _config_or_exit(config)
    logs.configure("WARNING")
    try:
        peer = pacs_named(cfg, pacs)
        with console.status(f"C-FIND on {peer.name}"):
            plans = plan(cfg, peer, study, accession, patient, since)
        for st in plans:
            t = Table(title=f"study {st.study_uid} ({st.study_date})")
            for col in ("series", "description", "modality", "images", "fetch", "reason"):
                t.add_column(col)
            for sp in st.series:
                fetch_it = "yes" if sp.process else "no"
                images = str(sp.instances or "?")
                t.add_row(sp.series_uid[-24:], sp.description, sp.modality, images, fetch_it,
                          sp.reason)  # fmt: skip
            console.print(t)
        if dry_run:
            return
        chosen = [sp for st in plans for sp in st.series if sp.process]
        if not chosen:
            err.print("[yellow]no LGE series in the matching studies; nothing moved[/yellow]")
            raise typer.Exit(1)

        def attempted(sp: SeriesPlan) -> None:
            console.print(f"{sp.description}: {sp.history[-1]}")
            if sp.failed and sp.attempts < peer.max_attempts:
                again = (f"the {len(sp.failed_uids)} failed instance(s)" if sp.failed_uids
                         else "the series")  # fmt: skip
                console.print(f"  retrying {again} in {peer.retry_delay_s:g} s")

        with console.status("retrieving") as state:
            fetch(cfg, peer, plans, lambda sp, left: state.update(
                f"{peer.method.upper()} {sp.description}: {sp.completed} done, {sp.failed} "
                f"failed, {left} left"), attempted)  # fmt: skip
    except RetrieveError as exc:
        err.print(f"[red]retrieve failed:[/red] {exc}")
        if (cfg.storage.data_dir / "index.db").exists() or cfg.storage.database_url:
            Index(cfg.database_url).record_event("retrieve_failed", f"{pacs}: {exc}", "ERROR")
        raise typer.Exit(1) from exc
    for sp in chosen:
        console.print(f"{sp.description}: {sp.completed} received, {sp.failed} failed, "
                      f"{sp.warning} warnings ({sp.attempts} attempt(s))")  # fmt: skip
    has_index = (cfg.storage.data_dir / "index.db").exists() or cfg.storage.database_url
    incomplete = record_outcome(Index(cfg.database_url), peer, plans) if has_index else [
        sp for sp in chosen if sp.failed]  # fmt: skip
    if incomplete:
        err.print("[red]some images could not be retrieved; see lge-node status[/red]")
        raise typer.Exit(1)
    console.print("moved to the node; it processes them once they are quiet (stable age)")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Demo folder (study, node data, peer).")] = Path(
        "lge-node-demo"
    ),
    seed: Annotated[int, typer.Option(help="Phantom seed.")] = 7,
    orthanc: Annotated[
        bool | None,
        typer.Option("--orthanc/--no-orthanc", help="Peer; default: Orthanc if installed."),
    ] = None,
    keep: Annotated[
        bool, typer.Option("--keep", help="Keep node and peer running to browse the results.")
    ] = False,
) -> None:
    """Make a synthetic study, start the node and a PACS, send the study over DICOM,
    and show what came back."""
    from node import logs
    from node.demo import run_demo

    logs.configure("WARNING")

    def hold(peer: str) -> None:
        console.print(f"[green]results are in the peer:[/green] {peer}")
        console.print("node and peer keep running; press Ctrl-C to stop")
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            pass

    with console.status("lge-node demo") as state:
        try:
            result = run_demo(
                out, seed, lambda m: state.update(m), orthanc, hold=hold if keep else None
            )
        except RuntimeError as exc:
            err.print(f"[red]demo failed:[/red] {exc}")
            raise typer.Exit(1) from exc
    m, t = result.metrics, result.truth
    table = Table(title="LGE quantification via DICOM (research only, not for clinical use)")
    table.add_column("quantity")
    table.add_column("node", justify="right")
    table.add_column("phantom truth", justify="right")
    for name, key, fmt in (
        ("LV myocardium (ml)", "myocardium_ml", "{:.1f}"),
        ("LV myocardial mass (g)", "myocardium_mass_g", "{:.1f}"),
        ("scar (ml)", "scar_ml", "{:.2f}"),
        ("scar (% of LV)", "scar_percent", "{:.1f}"),
        ("MVO (ml)", "mvo_ml", "{:.2f}"),
    ):
        table.add_row(name, fmt.format(m[key]), fmt.format(t[key]))
    transmural = [s["id"] for s in m["segments"] if s["transmurality_percent"] > 50]
    table.add_row("segments > 50 % transmural", ", ".join(map(str, transmural)) or "none",
                  ", ".join(str(s["id"]) for s in t["segments"]
                            if s["transmurality_percent"] > 50) or "none")  # fmt: skip
    table.add_row("QC flags", ", ".join(m["qc"]["flags"]) or "none", "")
    console.print(table)
    r = result.results_dir
    console.print(f"study sent by {result.sender}; results confirmed stored by the peer.")
    console.print(f"  SEG       {r / 'seg.dcm'}")
    console.print(f"  SR        {r / 'sr.dcm'}")
    n_overlays = len(list((r / "overlay").glob("*.dcm")))
    console.print(f"  overlays  {r / 'overlay'}/ ({n_overlays} images)")
    console.print(f"  metrics   {r / 'metrics.json'}")
    stopped = "" if keep else " - stopped with the demo (--keep keeps it running)"
    console.print(f"  peer      {result.peer}{stopped}")
    s = result.seconds
    console.print(
        f"time: {s['total']:.0f} s in all (phantom {s['phantom']:.0f} s, node start "
        f"{s['start']:.0f} s, send -> results stored at the peer "
        f"{s['send_to_results_delivered']:.1f} s, of which 2 s stable age)"
    )


if __name__ == "__main__":
    app()
