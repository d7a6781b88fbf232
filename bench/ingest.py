"""Ingest rate of the node against Orthanc and a bare pynetdicom storage SCP, end-to-end
latency, and the node's peak memory: all in one run, on this machine.

    uv run python bench/ingest.py [--studies 10] [--repeats 3]

* ingest: one DCMTK storescu association sends the same N phantom studies to each
  receiver; images/s = images / storescu wall time. The bare SCP only writes each
  dataset to a file (no index, no checks): the ceiling of our Python/pynetdicom stack.
  The ratios are against it as pynetdicom ships; a second bare SCP with Nagle's
  algorithm off, as the node has it, shows what that setting alone is worth.
* latency: from the moment the last instance was acknowledged to the moment Orthanc
  confirmed every result (SEG, SR, overlays) stored: minus ``stable_age`` for a series
  that must wait for it, and as measured for one whose size its headers give.
* peak RSS: the node process's high-water mark (VmHWM) with models loaded, after jobs.
"""

from __future__ import annotations

import argparse
import calendar
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from node.demo.peers import Orthanc, free_port, system_tool  # noqa: E402
from tests.node_harness import NodeProcess, copy_study  # noqa: E402

BARE_SCP = """
import socket
import sys
from pathlib import Path
from pynetdicom import AE, AllStoragePresentationContexts, evt
out = Path(sys.argv[1])
def on_store(event):
    (out / (event.request.AffectedSOPInstanceUID + ".dcm")).write_bytes(event.encoded_dataset())
    return 0
def no_delay(event):
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
handlers = [(evt.EVT_C_STORE, on_store)]
if sys.argv[3:] == ["nodelay"]:  # Nagle off, as the node (and DCMTK) have it
    handlers.append((evt.EVT_CONN_OPEN, no_delay))
ae = AE("BARE")
ae.maximum_pdu_size = 0
ae.supported_contexts = AllStoragePresentationContexts
ae.start_server(("127.0.0.1", int(sys.argv[2])), evt_handlers=handlers)
"""


def _when(line: str) -> float:
    stamp = line.split(" ", 1)[0]  # 2026-11-24T10:00:00.123Z, UTC
    return calendar.timegm(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")) + float(stamp[19:-1])


def timeline(log: str, series_uid: str, t_last: float) -> tuple[float, float, float]:
    """(last instance -> job started, the job, job done -> every result acknowledged by
    Orthanc), from the node's log: the last ``results_sent`` that completes the job's
    ``objects`` (with several associations, each logs its own share)."""
    lines = log.splitlines()
    started = next(_when(x) for x in lines if " job_started " in x and series_uid in x)
    done_line = next(x for x in lines if " job_done " in x and series_uid in x)
    done, left = _when(done_line), int(done_line.split(" objects=")[1].split()[0])
    sent = done
    for x in lines:
        if " results_sent " in x and _when(x) >= done and left > 0:
            left -= int(x.split(" objects=")[1].split()[0])
            sent = _when(x)
    return started - t_last, done - started, sent - done


def send(port: int, aec: str, folder: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        [system_tool("storescu"), "-aet", "SCANNER", "-aec", aec, "+sd", "+r", "127.0.0.1",
         str(port), str(folder)],
        check=True, capture_output=True,
    )  # fmt: skip
    return time.perf_counter() - t0


def fresh_copies(src: Path, dst: Path, n: int) -> tuple[Path, list[str], int]:
    """N copies of a phantom study under new UIDs (so every receiver sees new data)."""
    series, images = [], 0
    for i in range(n):
        _, uid, files = copy_study(src, dst / f"s{i:02d}")
        series.append(uid)
        images += len(files)
    return dst, series, images


def vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


HINT = {"ImagesInAcquisition": 14, "AcquisitionNumber": 1}
Timeline = tuple[float, float, float]


def measure_latency(
    node: NodeProcess, src: Path, work: Path, studies: int, stable_age: float
) -> tuple[dict[str, list[float]], list[Timeline]]:
    """Last instance acknowledged -> every result confirmed stored in Orthanc, per kind
    (waits stable_age / size known), and the size-known studies' timelines."""
    latencies: dict[str, list[float]] = {"waits stable_age": [], "size known": []}
    parts: list[Timeline] = []
    kinds = [("waits stable_age", {}), ("size known", HINT)]
    for i in range(studies + 1):  # the first warms the models up
        for how, hint in kinds:
            _, uid, files = copy_study(src, work / f"lat{i}{how[0]}", **hint)
            send(node.port, "LGE_NODE", files[0].parent)
            wall_last = time.time()
            node.wait_done(uid, timeout=300)
            if i:  # timed from the log: the harness polls the index every 0.2 s
                waited = stable_age if how == "waits stable_age" else 0.0
                part = timeline(node.log(), uid, wall_last)
                latencies[how].append(sum(part) - waited)
                if how == "size known":
                    parts.append(part)
    return latencies, parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latency-studies", type=int, default=3)
    parser.add_argument("--no-ingest", action="store_true", help="latency and memory only")
    parser.add_argument("--no-latency", action="store_true", help="ingest rates only")
    args = parser.parse_args()
    console = Console()

    from pipeline.research.phantom import PhantomSpec, make_phantom

    work = Path(tempfile.mkdtemp(prefix="lge-bench-ingest-"))
    case = make_phantom(work / "phantom", PhantomSpec(seed=7, kind="psir"))
    src = case.out_dir / "dicom"
    rates: dict[str, list[float]] = {}
    stable_age = 2.0

    with Orthanc(work / "orthanc", stable_age_s=2) as pacs:
        dest = {"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1",
                "port": pacs.dicom_port}  # fmt: skip
        # The bare SCP binds first: a port picked for a node is free only until it binds.
        bare_port, bare_nodelay_port = free_port(), free_port()
        (work / "bare").mkdir()
        bare = subprocess.Popen(
            [sys.executable, "-c", BARE_SCP, str(work / "bare"), str(bare_port)]
        )
        bare_nodelay = subprocess.Popen(
            [sys.executable, "-c", BARE_SCP, str(work / "bare"), str(bare_nodelay_port),
             "nodelay"]
        )  # fmt: skip
        time.sleep(2.0)
        # Ingest nodes never reach stable_age during the run, so no job competes for the
        # CPU; a third node, with the demo's stable_age, measures latency afterwards.
        nodes = {
            "lge-node (fsync, default)": NodeProcess(
                work / "node_fsync", stable_age_s=600.0, storage={"fsync": True}
            ),
            "lge-node (no fsync)": NodeProcess(work / "node_nofsync", stable_age_s=600.0),
        }
        for node in nodes.values():
            node.start()
        receivers = {
            "bare pynetdicom SCP (files only)": (bare_port, "BARE"),
            "bare pynetdicom SCP, Nagle off": (bare_nodelay_port, "BARE"),
            "Orthanc": (pacs.dicom_port, "ORTHANC"),
            **{name: (n.port, "LGE_NODE") for name, n in nodes.items()},
        }
        # The fsync node also processes what it receives: ingest is measured while its
        # worker is idle (studies are sent before the stable age elapses).
        n_images = 0
        # Each round sends to every receiver, in a rotated order, and each send starts
        # with the disk flushed: the writeback a receiver that does not fsync leaves
        # behind would otherwise land on whoever comes next.
        order = list(receivers)
        for r in range(0 if args.no_ingest else args.repeats):
            for name in order[r % len(order) :] + order[: r % len(order)]:
                port, aec = receivers[name]
                target = work / f"in_{r}_{port}"
                folder, _, n_images = fresh_copies(src, target, args.studies)
                os.sync()
                rates.setdefault(name, []).append(n_images / send(port, aec, folder))
            console.print(f"round {r + 1}/{args.repeats} done")

        for n in nodes.values():
            n.stop()
        # Latency: last instance acknowledged -> every result confirmed stored in Orthanc;
        # with the default one association to it, and with four.
        runs: dict[int, tuple[dict[str, list[float]], list[Timeline]]] = {}
        rss = rss_drawing = 0.0
        for associations in () if args.no_latency else (1, 4):
            node = NodeProcess(
                work / f"node_latency{associations}", stable_age_s=stable_age,
                destinations=[{**dest, "associations": associations}], storage={"fsync": True},
            ).start()  # fmt: skip
            runs[associations] = measure_latency(
                node, src, work / f"a{associations}", args.latency_studies, stable_age
            )
            assert node.proc is not None
            rss = max(rss, vm_hwm_mb(node.proc.pid))
            rss_drawing = max([rss_drawing, *(vm_hwm_mb(c) for c in children(node.proc.pid))])
            node.stop()
        bare.terminate()
        bare_nodelay.terminate()

    if args.no_ingest:
        rates = {}
    table = Table(title=f"Ingest: {args.studies} studies ({n_images} images) per send, "
                        f"one association, median of {args.repeats}")  # fmt: skip
    table.add_column("receiver")
    table.add_column("images/s", justify="right")
    table.add_column("vs bare SCP", justify="right")
    table.add_column("vs bare SCP, same round: median (min-max)", justify="right")
    bare = rates.get("bare pynetdicom SCP (files only)", [1.0])
    for name, values in rates.items():
        rate = statistics.median(values)
        paired = [v / b for v, b in zip(values, bare, strict=True)]
        table.add_row(
            name, f"{rate:.0f}", f"{100 * rate / statistics.median(bare):.0f} %",
            f"{100 * statistics.median(paired):.0f} % ({100 * min(paired):.0f}-"
            f"{100 * max(paired):.0f})",
        )  # fmt: skip
    if rates:
        console.print(table)
    t2 = Table(title="lge-node end to end (2-core CPU, demo models)")
    t2.add_column("measure")
    t2.add_column("value", justify="right")
    for associations, (latencies, parts) in runs.items():
        to = f"{associations} association{'s' * (associations > 1)} to Orthanc"
        for how, what in (
            ("waits stable_age", "minus stable_age (no size hint)"),
            ("size known", "size known (ImagesInAcquisition; a C-MOVE/C-GET count alike)"),
        ):
            got = latencies[how]
            if got:
                t2.add_row(
                    f"latency, last instance -> results stored in Orthanc, {what}; {to}",
                    f"median {statistics.median(got):.1f} s "
                    f"(min {min(got):.1f}, max {max(got):.1f}, n={len(got)})",
                )
        for k, what in enumerate(("last instance -> job started",
                                  "the job: load, segment, quantify, write SEG/SR/PDF/overlays",
                                  "job done -> results sent and acknowledged")):  # fmt: skip
            got = [p[k] for p in parts]
            t2.add_row(f"  {what} ({to})", f"median {statistics.median(got):.2f} s")
    if runs:
        t2.add_row("peak RSS of the node process (models loaded, after all jobs)", f"{rss:.0f} MB")
        t2.add_row("peak RSS of its drawing process (overlays, PDF)", f"{rss_drawing:.0f} MB")
        console.print(t2)


if __name__ == "__main__":
    main()
