"""A cluster on a shared PostgreSQL index: receive-only nodes and `lge-node worker`
processes with data folders of their own, fetching over WADO-RS (tests and bench)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.node_harness import ROOT, NodeProcess, free_port, write_toml

TOKEN = "worker-token-for-the-scale-out-test"
TOKEN_SHA = hashlib.sha256(TOKEN.encode()).hexdigest()


class WorkerProcess:
    """``lge-node worker`` as a child process with its own data folder, config and log."""

    def __init__(self, node: NodeProcess, workdir: Path, name: str) -> None:
        self.node, self.name = node, name
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.config_path = workdir / "worker.toml"
        self.log_path = workdir / "worker.log"
        self.proc: subprocess.Popen | None = None
        doc = tomllib.loads(node.config_path.read_text())
        doc["storage"]["data_dir"] = str(self.data_dir)
        doc.pop("destinations", None)  # results go out from the node that holds them
        doc["cluster"] = {"fetch": "dicomweb", "token": TOKEN}
        doc["jobs"]["workers"] = 1
        workdir.mkdir(parents=True, exist_ok=True)
        write_toml(self.config_path, doc)

    def start(self) -> WorkerProcess:
        log = self.log_path.open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "node.cli", "worker", "--config", str(self.config_path)],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )  # fmt: skip
        self.node.wait_for(lambda: "models_loaded" in self.log(), 180, f"{self.name} models")
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def jobs_started(self) -> list[int]:
        return [
            int(line.split("job=")[1].split()[0])
            for line in self.log().splitlines() if "job_started" in line
        ]  # fmt: skip

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def receiver(
    work: Path, name: str, pg_url: str, destination: dict, stable_age_s: float = 1.0
) -> NodeProcess:
    """A receive-only node (jobs.workers = 0) on the shared index, reachable by workers
    with the operator token."""
    port = free_port()
    return NodeProcess(
        work / name, destinations=[destination], wait_models=False, stable_age_s=stable_age_s,
        storage={"database_url": pg_url}, jobs={"workers": 0, "retry_delay_s": 1.0},
        http={"port": port, "tokens": [{"name": "worker", "role": "operator",
                                        "sha256": TOKEN_SHA}]},
        cluster={"node_name": name, "url": f"http://127.0.0.1:{port}"},
    )  # fmt: skip
