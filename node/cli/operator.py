"""Verbs for the PACS administrator: run the node, check its config, see its state,
pull studies from a PACS, and the demo."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from node import __version__
from node.cli.common import console, fail, load_config_or_exit
from node.events import Event, notify
from node.store.records import EventView, JobRow, SendRow, SeriesRow, Snapshot

ConfigOption = Annotated[Path | None, typer.Option(help="TOML config; none: defaults.")]
LogLevel = Annotated[str, typer.Option(help="DEBUG, INFO, WARNING")]
LogJson = Annotated[bool, typer.Option("--log-json", help="JSON log lines.")]

if TYPE_CHECKING:
    from node.config import Config
    from node.store.repository import Repository

app = typer.Typer(rich_markup_mode="rich")


def _repository(cfg: Config) -> Repository | None:
    """The node's index, if the node has one (it has run, or a database URL is set)."""
    from node.store.repository import Repository

    if cfg.storage.database_url is None and not (cfg.storage.data_dir / "index.db").exists():
        return None
    return Repository(cfg.database_url)


@app.command()
def version() -> None:
    """Print the version."""
    console.print(f"lge-node {__version__}")


@app.command("check-config")
def check_config(
    config: Annotated[Path | None, typer.Argument(help="TOML file; none: defaults.")] = None,
) -> None:
    """Validate a config file (plus LGE_NODE_* environment) and print the result."""
    cfg = load_config_or_exit(config)
    console.print_json(cfg.model_dump_json())


@app.command()
def serve(
    config: ConfigOption = None,
    log_level: LogLevel = "INFO",
    log_json: LogJson = False,
) -> None:
    """Run the node: receive, select, process, send back (until SIGTERM / Ctrl-C)."""
    from node import logs
    from node.server import run
    from node.store.repository import NodeNameTaken

    cfg = load_config_or_exit(config)
    logs.configure(log_level.upper(), log_json)
    try:
        run(cfg)
    except NodeNameTaken as exc:
        raise fail(str(exc)) from None


@app.command()
def worker(
    config: ConfigOption = None,
    log_level: LogLevel = "INFO",
    log_json: LogJson = False,
) -> None:
    """Process jobs of a shared PostgreSQL index on this host (``jobs.workers`` workers,
    models loaded once each), until SIGTERM / Ctrl-C."""
    from node import logs
    from node.server import WorkerHost

    cfg = load_config_or_exit(config)
    logs.configure(log_level.upper(), log_json)
    try:
        host = WorkerHost(cfg)
    except ValueError as exc:
        raise fail(str(exc)) from None
    host.serve_forever()


def _when(t: float | None) -> str:
    import time as _time

    if t is None:
        return "-"
    return _time.strftime("%Y-%m-%d %H:%M:%S", _time.localtime(t))


def _status_from_api(url: str, token: str | None, limit: int) -> dict[str, Any]:
    """``GET /api/v1/status`` of a running node (any host), with a Bearer token."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"{url.rstrip('/')}/api/v1/status?limit={limit}")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            doc: dict[str, Any] = json.loads(response.read())
            return doc
    except urllib.error.HTTPError as exc:
        hint = " (set LGE_NODE_TOKEN or --token)" if exc.code == 401 else ""
        raise fail(f"{url}: HTTP {exc.code} {exc.reason}{hint}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise fail(f"{url}: {exc}") from None


@app.command()
def status(
    config: ConfigOption = None,
    limit: Annotated[int, typer.Option(help="Rows per table.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    url: Annotated[
        str | None, typer.Option(help="Ask a running node's API (e.g. http://host:8044).")
    ] = None,
    token: Annotated[
        str | None, typer.Option(envvar="LGE_NODE_TOKEN", help="API token for --url.")
    ] = None,
) -> None:
    """Recent series, jobs, sends and events of a node: from its REST API (--url), else
    from its index (works while the node is stopped)."""
    from dataclasses import asdict

    from node.dimse.scp import access_warning

    if url:
        doc = _status_from_api(url, token, limit)
    else:
        cfg = load_config_or_exit(config)
        repository = _repository(cfg)
        if repository is None:
            db = cfg.storage.data_dir / "index.db"
            raise fail(f"no node data: {db} does not exist (has the node run?)")
        warning = access_warning(cfg)
        doc = {**asdict(repository.snapshot(limit)), "warnings": [warning] if warning else []}
        repository.close()
    if as_json:
        console.print_json(json.dumps(doc))
        return
    snap = Snapshot(
        series=[SeriesRow(**r) for r in doc["series"]], jobs=[JobRow(**j) for j in doc["jobs"]],
        sends=[SendRow(**d) for d in doc["sends"]], events=[EventView(**e) for e in doc["events"]],
        taken_at=doc["taken_at"],
    )  # fmt: skip
    for warning in doc["warnings"]:
        console.print(f"[bold yellow]warning:[/] {warning}")
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
    config: ConfigOption = None,
    study: Annotated[str | None, typer.Option(help="StudyInstanceUID.")] = None,
    accession: Annotated[str | None, typer.Option(help="Accession number.")] = None,
    patient: Annotated[str | None, typer.Option(help="Patient ID.")] = None,
    since: Annotated[str | None, typer.Option(help="Studies from YYYYMMDD on.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only show the plan.")] = False,
) -> None:
    """Find a study on a PACS, choose its LGE series by the selection rules, and move
    them to the running node (which processes them like a pushed study)."""
    from node import logs
    from node.dimse.retrieve import (
        RetrieveError,
        SeriesPlan,
        fetch,
        pacs_named,
        plan,
        record_outcome,
    )

    if sum(x is not None for x in (study, accession, patient)) != 1:
        raise fail("give exactly one of --study, --accession, --patient", 2)
    cfg = load_config_or_exit(config)
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
            raise fail("no LGE series in the matching studies; nothing moved")

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
        notify(_repository(cfg), Event.RETRIEVE_FAILED, f"{pacs}: {exc}")
        raise fail(f"retrieve failed: {exc}") from exc
    for sp in chosen:
        console.print(f"{sp.description}: {sp.completed} received, {sp.failed} failed, "
                      f"{sp.warning} warnings ({sp.attempts} attempt(s))")  # fmt: skip
    if record_outcome(_repository(cfg), peer, plans):
        raise fail("some images could not be retrieved; see lge-node status")
    console.print("moved to the node; it processes them now (the count is known) or once quiet")


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

    def hold(peer: str, operator_console: str) -> None:
        console.print(f"[green]results are in the peer:[/green] {peer}", soft_wrap=True)
        console.print(f"[green]operator console:[/green] {operator_console}", soft_wrap=True)
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
            raise fail(f"demo failed: {exc}") from exc
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
    console.print(f"  console   {result.console}{stopped}", soft_wrap=True)
    web = result.console.split(" ", 1)[0].rstrip("/") + "/dicom-web"
    console.print(f"  DICOMweb  {web} (QIDO/WADO/STOW-RS, same login){stopped}", soft_wrap=True)
    s = result.seconds
    console.print(
        f"time: {s['total']:.0f} s in all (phantom {s['phantom']:.0f} s, node start "
        f"{s['start']:.0f} s, send -> results stored at the peer "
        f"{s['send_to_results_delivered']:.1f} s, of which 2 s stable age)"
    )


@app.command("hash-password")
def hash_password(
    name: Annotated[str, typer.Argument(help="The console user's name.")],
    role: Annotated[str, typer.Option(help="viewer, operator or admin.")] = "viewer",
) -> None:
    """Ask for a password and print the [[http.users]] entry for node.toml (argon2id)."""
    from node.http.auth import RANK, hash_password

    if role not in RANK:
        raise fail(f"role must be one of {', '.join(RANK)}, not {role!r}")
    password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    if len(password) < 8:
        raise fail("a console password needs at least 8 characters")
    console.print(
        f'[[http.users]]\nname = "{name}"\nrole = "{role}"\n'
        f'password_hash = "{hash_password(password)}"', soft_wrap=True, markup=False,
    )  # fmt: skip


@app.command("new-token")
def new_token(
    name: Annotated[str, typer.Argument(help="What the token is for (e.g. grafana).")],
    role: Annotated[str, typer.Option(help="viewer, operator or admin.")] = "viewer",
) -> None:
    """Make an API token: prints the token (once) and the [[http.tokens]] entry."""
    from node.http.auth import RANK, new_token

    if role not in RANK:
        raise fail(f"role must be one of {', '.join(RANK)}, not {role!r}")
    token, digest = new_token()
    console.print(
        f"token (give it to the client; it is not stored): {token}", markup=False, soft_wrap=True
    )
    console.print(
        f'[[http.tokens]]\nname = "{name}"\nrole = "{role}"\nsha256 = "{digest}"',
        soft_wrap=True, markup=False,
    )  # fmt: skip
