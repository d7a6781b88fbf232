"""``lge-node``: the one command-line entry point (verbs per DESIGN.md)."""

from __future__ import annotations

import json
import sys
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
) -> None:
    """Write a synthetic LGE study with ground truth (truth.json, truth_labels.nii.gz)."""
    from pipeline.phantom import PhantomSpec, make_phantom

    try:
        spec = PhantomSpec(
            seed=seed, kind=kind, enhanced=enhanced, slices=slices, scar=scar, mvo=mvo,
            territory=territory,
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
    from pipeline.errors import SeriesLoadError
    from pipeline.series import load_series

    try:
        vol = load_series(folder, series_instance_uid=series)
    except SeriesLoadError as exc:
        err.print(f"[red]{type(exc).__name__}:[/red] {exc}")
        raise typer.Exit(1) from exc
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
    from pipeline.errors import SeriesLoadError
    from pipeline.quantify import quantify
    from pipeline.series import load_series
    from pipeline.volume import Geometry

    try:
        volume = load_series(series_dir)
    except SeriesLoadError as exc:
        err.print(f"[red]{type(exc).__name__}:[/red] {exc}")
        raise typer.Exit(1) from exc
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


if __name__ == "__main__":
    app()
