"""Scale-out on a shared PostgreSQL index with procrastinate: a receive-only node and
worker processes (`lge-node worker`) on this host, a real PostgreSQL and a real Orthanc.
Studies from two senders are each processed exactly once by whichever worker is free; a
worker killed mid-job loses nothing - another one finishes the job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.node_harness import ROOT, NodeProcess, copy_study, storescu
from tests.orthanc import Orthanc

pytestmark = pytest.mark.timeout(900)


class WorkerProcess:
    """``lge-node worker`` as a child process with its own log."""

    def __init__(self, node: NodeProcess, name: str) -> None:
        self.node, self.name = node, name
        self.log_path = node.workdir / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> WorkerProcess:
        log = self.log_path.open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "node.cli", "worker", "--config", str(self.node.config_path)],
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


@pytest.fixture(scope="module")
def cluster(postgres, tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("scale")
    pg = postgres
    with Orthanc(work / "orthanc") as pacs:
        destination = {"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1",
                       "port": pacs.dicom_port}  # fmt: skip
        node = NodeProcess(
            work / "node", destinations=[destination], wait_models=False,
            storage={"database_url": pg.url}, jobs={"workers": 0, "retry_delay_s": 1.0},
        )  # fmt: skip
        workers = [WorkerProcess(node, f"worker-{i}") for i in (1, 2)]
        with node:
            for w in workers:
                w.start()
            try:
                yield node, workers, pacs
            finally:
                for w in workers:
                    w.stop()


def _done_jobs(node: NodeProcess, series: str) -> list[tuple]:
    return node.query(
        "SELECT j.id, j.attempts FROM jobs j JOIN series s ON j.series_fk = s.id "
        "WHERE s.series_uid = ? AND j.state = 'done'", series,
    )  # fmt: skip


def test_studies_from_two_senders_are_each_processed_once(
    cluster, phantom_factory, tmp_path: Path
) -> None:
    node, workers, pacs = cluster
    case = phantom_factory(seed=7, kind="psir")
    sent = []
    for i, sender in enumerate(["SCANNER_A", "SCANNER_B", "SCANNER_A", "SCANNER_B"]):
        study, series, files = copy_study(case.out_dir / "dicom", tmp_path / f"s{i}")
        storescu(node.port, files, aet=sender)
        sent.append((study, series))
    for _, series in sent:
        node.wait_done(series, timeout=300)
    for study, series in sent:
        assert len(_done_jobs(node, series)) == 1, series  # exactly once
        modalities = {s["MainDicomTags"].get("Modality") for s in pacs.study_series(study)}
        assert {"SEG", "SR"} <= modalities
    started = [j for w in workers for j in w.jobs_started()]
    assert len(started) == len(set(started))  # no job ran twice
    # The receiving node ran none itself (jobs.workers = 0): the workers did.
    assert "job_started" not in node.log()


def test_a_worker_killed_mid_job_is_replaced_by_another(
    cluster, phantom_factory, tmp_path: Path
) -> None:
    node, workers, _ = cluster
    case = phantom_factory(seed=8, kind="psir")
    _, series, files = copy_study(case.out_dir / "dicom", tmp_path / "kill")
    before = {w.name: len(w.jobs_started()) for w in workers}
    storescu(node.port, files)

    def runner() -> WorkerProcess | None:
        return next((w for w in workers if len(w.jobs_started()) > before[w.name]), None)

    victim = node.wait_for(runner, 120, "a worker to start the job")
    victim.kill()
    survivor = next(w for w in workers if w is not victim)
    node.wait_done(series, timeout=300)
    [(job_id, attempts)] = _done_jobs(node, series)
    assert attempts == 2  # the lost attempt counts
    assert job_id in survivor.jobs_started()
    assert "job_stalled" in survivor.log()
    victim.start()  # back for the other tests
    time.sleep(0.1)


def test_a_postgresql_outage_loses_nothing_acknowledged(
    cluster, postgres, phantom_factory, tmp_path: Path
) -> None:
    """The index goes away for 20 s while a scanner sends: every instance is acknowledged
    (files and journal are on disk), and once PostgreSQL is back the study is indexed,
    processed once and delivered, by workers that waited instead of exiting."""
    node, workers, pacs = cluster
    case = phantom_factory(seed=9, kind="psir")
    study, series, files = copy_study(case.out_dir / "dicom", tmp_path / "outage")
    postgres.stop("immediate")
    try:
        storescu(node.port, files)  # raises unless every C-STORE got Success
        time.sleep(20)
    finally:
        postgres.start()
    node.wait_done(series, timeout=300)
    assert len(_done_jobs(node, series)) == 1
    count = node.query(
        "SELECT count(*) FROM instances i JOIN series s ON i.series_fk = s.id "
        "WHERE s.series_uid = ?", series,
    )  # fmt: skip
    assert count == [(len(files),)]
    assert {"SEG", "SR"} <= {s["MainDicomTags"].get("Modality") for s in pacs.study_series(study)}
    # The workers waited it out (procrastinate's pool reconnects) instead of exiting.
    assert all(w.proc is not None and w.proc.poll() is None for w in workers)
    assert any("Connection refused" in w.log() for w in workers)  # they did notice
    assert node.alive()
