"""Processing throughput (studies per minute) with 1, 2 and 4 workers, on the embedded
default (SQLite, worker threads in the node) and on PostgreSQL with procrastinate
(a receive-only node and `lge-node worker` processes, sharing its data folder, or with
folders of their own, fetching each series over WADO-RS and handing results back), in
one run on this machine.

    uv run python bench/scale.py [--studies 8] [--workers 1 2 4]

Each configuration gets the same N phantom studies (fresh UIDs) in one storescu
association; the clock runs from the last instance acknowledged to the last series
done (results written and handed to the outbox), minus ``stable_age``. On a machine with
fewer cores than workers the numbers say how much the engine costs, not how far it
scales; a GPU host gets one worker per GPU.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from node.demo.peers import system_tool  # noqa: E402
from tests.cluster_harness import WorkerProcess, receiver  # noqa: E402
from tests.node_harness import NodeProcess, copy_study  # noqa: E402
from tests.postgres import Postgres  # noqa: E402

STABLE_AGE = 2.0


def send(port: int, folder: Path) -> None:
    subprocess.run(
        [system_tool("storescu"), "-aet", "SCANNER", "-aec", "LGE_NODE", "+sd", "+r",
         "127.0.0.1", str(port), str(folder)],
        check=True, capture_output=True,
    )  # fmt: skip


def worker_processes(node: NodeProcess, n: int) -> list[subprocess.Popen]:
    procs = []
    cmd = [sys.executable, "-m", "node.cli", "worker", "--config", str(node.config_path)]
    for i in range(n):
        log = (node.workdir / f"worker-{i}.log").open("w")
        procs.append(subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
    for i in range(n):
        path = node.workdir / f"worker-{i}.log"
        node.wait_for(lambda p=path: "models_loaded" in p.read_text(), 300, f"worker {i}")
    return procs


def run_once(work: Path, src: Path, studies: int, node: NodeProcess) -> float:
    series = []
    for i in range(studies):
        _, uid, _ = copy_study(src, work / "in" / f"s{i:02d}")
        series.append(uid)
    send(node.port, work / "in")
    t_last = time.perf_counter()
    for uid in series:
        node.wait_for(
            lambda u=uid: (node.series_state(u) or ("",))[0] == "done", 1800, f"series {uid}"
        )
    return time.perf_counter() - t_last - STABLE_AGE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    console = Console()

    from pipeline.research.phantom import PhantomSpec, make_phantom

    work = Path(tempfile.mkdtemp(prefix="lge-bench-scale-"))
    src = make_phantom(work / "phantom", PhantomSpec(seed=7, kind="psir")).out_dir / "dicom"
    results: dict[tuple[str, int], float] = {}
    for n in args.workers:
        label = "embedded (SQLite, threads)"
        node = NodeProcess(work / f"emb{n}", stable_age_s=STABLE_AGE, jobs={"workers": n})
        with node:
            seconds = run_once(work / f"emb{n}", src, args.studies, node)
        results[(label, n)] = seconds
        console.print(f"{label}, {n} worker(s): {seconds:.1f} s")

        label = "PostgreSQL + procrastinate (processes)"
        with Postgres(work / f"pg{n}") as pg:
            node = NodeProcess(
                work / f"pgn{n}", stable_age_s=STABLE_AGE, wait_models=False,
                storage={"database_url": pg.url}, jobs={"workers": 0},
            )  # fmt: skip
            with node:
                procs = worker_processes(node, n)
                try:
                    seconds = run_once(work / f"pgn{n}", src, args.studies, node)
                finally:
                    for p in procs:
                        p.terminate()
                    for p in procs:
                        p.wait(timeout=120)
        results[(label, n)] = seconds
        console.print(f"{label}, {n} worker(s): {seconds:.1f} s")

        label = "PostgreSQL + procrastinate, no shared folder (WADO-RS fetch, hand-back)"
        with Postgres(work / f"pgw{n}") as pg:
            # The receiver's destination is never reached: the clock stops at "done".
            nowhere = {"name": "none", "ae_title": "NONE", "host": "127.0.0.1", "port": 9}
            node = receiver(work, f"recv{n}", pg.url, nowhere, stable_age_s=STABLE_AGE)
            with node:
                remote = [WorkerProcess(node, work / f"rw{n}-{i}", f"w{i}") for i in range(n)]
                for w in remote:
                    w.start()
                try:
                    seconds = run_once(work / f"pgw{n}", src, args.studies, node)
                finally:
                    for w in remote:
                        w.stop()
        results[(label, n)] = seconds
        console.print(f"{label}, {n} worker(s): {seconds:.1f} s")

    table = Table(title=f"{args.studies} studies of 14 slices, this machine")
    table.add_column("engine")
    table.add_column("workers", justify="right")
    table.add_column("seconds", justify="right")
    table.add_column("studies / min", justify="right")
    for (label, n), seconds in results.items():
        table.add_row(label, str(n), f"{seconds:.1f}", f"{args.studies / seconds * 60:.1f}")
    console.print(table)


if __name__ == "__main__":
    main()
