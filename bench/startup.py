"""Start-up: seconds from launching a receiver to its first accepted association
(a C-ECHO that succeeds), for lge-node against a bare pynetdicom SCP and Orthanc, in
one run on this machine; for lge-node also until ``/readyz`` says the models are loaded.

    uv run python bench/startup.py [--repeats 5]

The node opens its DICOM port before its workers load their models (they load in the
background; ``/readyz`` answers 503 until they are done): a scanner can send at once.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from node.demo.peers import Orthanc, free_port, system_tool  # noqa: E402
from tests.node_harness import NodeProcess  # noqa: E402

BARE_SCP = """
import sys
from pynetdicom import AE, AllStoragePresentationContexts
from pynetdicom.sop_class import Verification
ae = AE("BARE")
ae.supported_contexts = AllStoragePresentationContexts
ae.add_supported_context(Verification)
ae.start_server(("127.0.0.1", int(sys.argv[1])))
"""


def echo_ok(port: int, aec: str) -> bool:
    proc = subprocess.run(
        [system_tool("echoscu"), "-to", "2", "-aet", "BENCH", "-aec", aec, "127.0.0.1",
         str(port)],
        capture_output=True, check=False,
    )  # fmt: skip
    return proc.returncode == 0


def until(check, *args: object, timeout: float = 300.0, step: float = 0.05) -> float:
    """Seconds until ``check(*args)`` is true (polled)."""
    t0 = time.perf_counter()
    while not check(*args):
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError("never came up")
        time.sleep(step)
    return time.perf_counter() - t0


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    console = Console()
    work = Path(tempfile.mkdtemp(prefix="lge-bench-startup-"))
    times: dict[str, list[float]] = {}
    for r in range(args.repeats):
        # bare pynetdicom: the floor of a Python DICOM service (interpreter + imports)
        port = free_port()
        t0 = time.perf_counter()
        bare = subprocess.Popen([sys.executable, "-c", BARE_SCP, str(port)])
        until(echo_ok, port, "BARE")
        times.setdefault("bare pynetdicom SCP: first C-ECHO", []).append(time.perf_counter() - t0)
        bare.terminate()
        bare.wait()

        t0 = time.perf_counter()
        with Orthanc(work / f"orthanc{r}") as pacs:
            until(echo_ok, pacs.dicom_port, "ORTHANC")
            times.setdefault("Orthanc: first C-ECHO", []).append(time.perf_counter() - t0)

        node = NodeProcess(work / f"node{r}", wait_models=False)
        t0 = time.perf_counter()
        node.proc = subprocess.Popen(
            [sys.executable, "-m", "node.cli", "serve", "--config", str(node.config_path)],
            cwd=ROOT, stdout=node.log_path.open("a"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        until(echo_ok, node.port, "LGE_NODE")
        times.setdefault("lge-node: first C-ECHO", []).append(time.perf_counter() - t0)
        until(ready, node.http_url)
        times.setdefault("lge-node: /readyz 200 (models loaded)", []).append(
            time.perf_counter() - t0
        )
        node.stop()
        console.print(f"round {r + 1}/{args.repeats} done")

    table = Table(title=f"Start-up to the first accepted association, {args.repeats} starts")
    for col in ("receiver", "median s", "min s", "max s"):
        table.add_column(col, justify="left" if col == "receiver" else "right")
    for name, values in times.items():
        table.add_row(
            name, f"{statistics.median(values):.2f}", f"{min(values):.2f}", f"{max(values):.2f}"
        )
    console.print(table)


if __name__ == "__main__":
    main()
