"""Soak: N senders for M minutes while the node is SIGKILLed and restarted at random
(seeded) moments; Orthanc takes the same load without kills as the peer.

    uv run python bench/soak.py [--senders 3] [--minutes 3] [--kills 3] [--seed 1]

Each sender sends fresh copies of a phantom study, instance by instance (pynetdicom, so
every acknowledgement is known). Reported per receiver: instances acknowledged, held
(acknowledged and in the receiver's index), lost (acknowledged, not held), studies fully
acknowledged, and for the node: series processed (a done job), series processed more
than once, and RSS over time (sampled every 5 s; a restart starts a new process).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from node.demo.peers import Orthanc  # noqa: E402
from tests.node_harness import NodeProcess, copy_study  # noqa: E402


def rss_mb(pid: int | None) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, TypeError):
        return None
    return None


class Sender(threading.Thread):
    """Sends study copies until ``stop``; records each acknowledged SOP Instance UID."""

    def __init__(self, name: str, port_of, aec: str, src: Path, work: Path, stop) -> None:  # type: ignore[no-untyped-def]
        super().__init__(name=name, daemon=True)
        self.port_of, self.aec, self.src, self.work, self.stop = port_of, aec, src, work, stop
        self.acknowledged: set[str] = set()
        self.studies: dict[str, tuple[str, int]] = {}  # study -> (series, instances)
        self.complete: set[str] = set()  # studies whose every instance was acknowledged

    def run(self) -> None:
        import pydicom
        from pynetdicom import AE
        from pynetdicom.sop_class import MRImageStorage

        i = 0
        while not self.stop.is_set():
            study, series, files = copy_study(self.src, self.work / f"{self.name}_{i}")
            i += 1
            self.studies[study] = (series, len(files))
            pending = list(files)
            while pending and not self.stop.is_set():
                ae = AE(ae_title="SCANNER")
                ae.add_requested_context(MRImageStorage)
                ae.acse_timeout = ae.network_timeout = 10
                assoc = ae.associate("127.0.0.1", self.port_of(), ae_title=self.aec)
                if not assoc.is_established:
                    time.sleep(1.0)  # the node is restarting: retry, like a scanner
                    continue
                for f in list(pending):
                    ds = pydicom.dcmread(f)
                    status = assoc.send_c_store(ds)
                    if "Status" in status and int(status.Status) == 0:
                        self.acknowledged.add(str(ds.SOPInstanceUID))
                        pending.remove(f)
                    elif not assoc.is_established:
                        break
                if assoc.is_established:
                    assoc.release()
            if not pending:
                self.complete.add(study)


def soak(receiver: str, args: argparse.Namespace, src: Path, work: Path) -> dict:
    stop = threading.Event()
    rng = random.Random(args.seed)
    samples: list[tuple[float, float | None]] = []
    if receiver == "node":
        node = NodeProcess(work / "node", stable_age_s=3.0)
        node.start()
        port_of, aec = (lambda: node.port), "LGE_NODE"
    else:
        pacs = Orthanc(work / "orthanc")
        pacs.__enter__()
        port_of, aec = (lambda: pacs.dicom_port), pacs.aet
    senders = [
        Sender(f"s{k}", port_of, aec, src, work / receiver, stop) for k in range(args.senders)
    ]
    duration = args.minutes * 60
    kill_at = sorted(rng.uniform(0.1, 0.9) * duration for _ in range(args.kills))
    t0 = time.monotonic()
    for s in senders:
        s.start()
    kills = 0
    while (elapsed := time.monotonic() - t0) < duration:
        pid = node.proc.pid if receiver == "node" and node.proc else None
        samples.append((elapsed, rss_mb(pid) if receiver == "node" else None))
        if receiver == "node" and kill_at and elapsed >= kill_at[0]:
            kill_at.pop(0)
            node.kill()
            kills += 1
            time.sleep(rng.uniform(0.5, 3.0))
            node.start(wait_models=False)
        time.sleep(5.0)
    stop.set()
    for s in senders:
        s.join(timeout=120)
    acknowledged = set().union(*(s.acknowledged for s in senders))
    studies = {k: v for s in senders for k, v in s.studies.items()}
    complete = set().union(*(s.complete for s in senders))
    result = {"receiver": receiver, "acknowledged": len(acknowledged), "kills": kills,
              "complete_studies": len(complete), "samples": samples}  # fmt: skip
    if receiver == "node":
        series_done = [studies[st][0] for st in complete]
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:  # let the queue drain
            done = sum(bool(node.jobs(s)) and node.jobs(s)[-1][1] == "done" for s in series_done)
            if done == len(series_done):
                break
            time.sleep(3)
        held = {r[0] for r in node.query("SELECT sop_uid FROM instances")}
        result["held"] = len(acknowledged & held)
        result["processed"] = done
        result["processed_twice"] = sum(
            sum(j[1] == "done" for j in node.jobs(s)) > 1 for s in series_done
        )
        result["rss_max_mb"] = max((r for _, r in samples if r), default=float("nan"))
        node.stop()
    else:
        held = set()
        for iid in pacs.get("/instances"):
            held.add(pacs.get(f"/instances/{iid}/simplified-tags")["SOPInstanceUID"])
        result["held"] = len(acknowledged & held)
        pacs.__exit__(None, None, None)
    result["lost"] = result["acknowledged"] - result["held"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--senders", type=int, default=3)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    console = Console(width=160)
    from pipeline.research.phantom import PhantomSpec, make_phantom

    work = Path(tempfile.mkdtemp(prefix="lge-bench-soak-"))
    src = make_phantom(work / "phantom", PhantomSpec(seed=7, kind="psir")).out_dir / "dicom"
    results = [soak(r, args, src, work) for r in ("node", "Orthanc")]

    t = Table(title=f"soak: {args.senders} senders, {args.minutes:g} min, seed {args.seed}")
    for col in ("receiver", "SIGKILLs", "acknowledged", "held", "lost", "complete studies",
                "processed", "processed twice", "max RSS (MB)"):  # fmt: skip
        t.add_column(col, justify="right")
    for r in results:
        t.add_row(
            r["receiver"], str(r["kills"]), str(r["acknowledged"]), str(r["held"]),
            str(r["lost"]), str(r["complete_studies"]), str(r.get("processed", "-")),
            str(r.get("processed_twice", "-")),
            f"{r['rss_max_mb']:.0f}" if "rss_max_mb" in r else "-",
        )  # fmt: skip
    console.print(t)
    rss = Table(title="node RSS over time (MB; a restart starts a new process)")
    rss.add_column("t (s)", justify="right")
    rss.add_column("RSS", justify="right")
    for elapsed, value in results[0]["samples"][::3]:
        rss.add_row(f"{elapsed:.0f}", f"{value:.0f}" if value else "restarting")
    console.print(rss)


if __name__ == "__main__":
    main()
