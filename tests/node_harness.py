"""The node as its users run it: ``lge-node serve`` in its own process, on loopback.

Tests talk to it only over DICOM (DCMTK tools, Orthanc, pynetdicom as a peer) and read
its index read-only, as ``lge-node status`` does; SIGKILL is a real kill.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import generate_uid

from tests.dicom_tools import require_tool
from tests.orthanc import free_port

ROOT = Path(__file__).resolve().parents[1]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(str(value))


def write_toml(path: Path, doc: dict[str, Any]) -> None:
    lines = []
    for section, body in doc.items():
        if isinstance(body, list):  # array of tables
            for item in body:
                lines.append(f"[[{section}]]")
                lines += [f"{k} = {_toml_value(v)}" for k, v in item.items()]
        else:
            lines.append(f"[{section}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in body.items()]
    path.write_text("\n".join(lines) + "\n")


class NodeProcess:
    """``with NodeProcess(workdir, destinations=[...]) as node:`` starts and stops it."""

    def __init__(
        self,
        workdir: Path,
        destinations: list[dict[str, Any]] | None = None,
        allowed_peers: list[dict[str, str]] | None = None,
        stable_age_s: float = 1.0,
        ae_title: str = "LGE_NODE",
        port: int | None = None,
        wait_models: bool = True,  # False: tests of the DICOM side need no loaded models
        **sections: dict[str, Any],
    ) -> None:
        self.workdir = workdir
        self.wait_models = wait_models
        self.ae_title = ae_title
        self.port = port or free_port()
        self.data_dir = workdir / "data"
        self.config_path = workdir / "node.toml"
        doc: dict[str, Any] = {
            "dicom": {"ae_title": ae_title, "bind_address": "127.0.0.1", "port": self.port,
                      "network_timeout_s": 20},
            "storage": {"data_dir": str(self.data_dir), "stable_age_s": stable_age_s,
                        "fsync": False},
            "jobs": {"retry_delay_s": 1.0},
            "http": {"port": free_port()},
            "dispatch": {"retry_initial_s": 0.5, "retry_max_s": 2.0},
        }  # fmt: skip
        if allowed_peers is not None:
            doc["access"] = {"allowed_peers": allowed_peers}
        for name, values in sections.items():
            if isinstance(values, list):  # an array of tables, e.g. [[pacs]]
                doc[name] = values
            else:
                doc.setdefault(name, {}).update(values)
        if destinations:
            doc["destinations"] = destinations
        self.http_url = f"http://127.0.0.1:{doc['http']['port']}"
        self.database_url: str | None = doc["storage"].get("database_url")
        workdir.mkdir(parents=True, exist_ok=True)
        write_toml(self.config_path, doc)
        self.log_path = workdir / "node.log"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    # -- process -----------------------------------------------------------------------

    def start(self, wait_models: bool = True, timeout: float = 180.0) -> NodeProcess:
        self.starts += 1
        log = self.log_path.open("a")
        log.write(f"----- start {self.starts} -----\n")
        log.flush()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "node.cli", "serve", "--config", str(self.config_path)],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        marker = "models_loaded" if wait_models else "listening"
        self.wait_for(
            lambda: self.log().split(f"----- start {self.starts} -----")[-1].count(marker) > 0,
            timeout, f"node log to show {marker}",
        )  # fmt: skip
        return self

    def kill(self) -> None:
        """SIGKILL: no clean-up at all, like a power cut of the process."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> NodeProcess:
        return self.start(wait_models=self.wait_models)

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # -- observing -----------------------------------------------------------------------

    def query(self, sql: str, *args: Any) -> list[tuple]:
        """Read the index (SQLite file, or the PostgreSQL of storage.database_url)."""
        if self.database_url:
            import psycopg

            dsn = self.database_url.replace("postgresql+psycopg://", "postgresql://")
            with psycopg.connect(dsn) as con:
                return con.execute(sql.replace("?", "%s"), args).fetchall()  # type: ignore[arg-type]
        db = self.data_dir / "index.db"
        if not db.exists():
            return []
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
        try:
            return con.execute(sql, args).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []
            raise
        finally:
            con.close()

    def series_state(self, series_uid: str) -> tuple[str, str] | None:
        rows = self.query("SELECT state, reason FROM series WHERE series_uid = ?", series_uid)
        return rows[0] if rows else None

    def jobs(self, series_uid: str) -> list[tuple]:
        return self.query(
            "SELECT j.id, j.state, j.attempts, j.error FROM jobs j JOIN series s"
            " ON s.id = j.series_fk WHERE s.series_uid = ? ORDER BY j.id",
            series_uid,
        )

    def unsent(self, series_uid: str | None = None) -> int:
        """Results not yet delivered (of one series' jobs)."""
        if series_uid is None:
            return self.query("SELECT count(*) FROM outbox WHERE state != 'sent'")[0][0]
        return self.query(
            "SELECT count(*) FROM outbox o JOIN jobs j ON o.job_fk = j.id "
            "JOIN series s ON j.series_fk = s.id WHERE s.series_uid = ? AND o.state != 'sent'",
            series_uid,
        )[0][0]

    def events(self, kind: str) -> list[tuple]:
        return self.query("SELECT message, peer_ae, peer_address FROM events WHERE kind = ?", kind)

    def wait_for(self, condition: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"node exited ({self.proc.returncode}):\n{self.log()[-4000:]}")
            time.sleep(0.2)
        tail = self.log()[-4000:]
        raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{tail}")

    def wait_done(self, series_uid: str, timeout: float = 120.0) -> None:
        """Until the series is processed and every result of it was delivered."""

        def done() -> bool:
            state = self.series_state(series_uid)
            return bool(state and state[0] == "done" and self.unsent(series_uid) == 0)

        self.wait_for(done, timeout, f"series {series_uid} processed and delivered")


def storescu(
    port: int,
    paths: list[Path] | Path,
    aet: str = "SCANNER",
    aec: str = "LGE_NODE",
    extra: list[str] | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess:
    """DCMTK storescu as the scanner."""
    files = [paths] if isinstance(paths, Path) else paths
    proc = subprocess.run(
        [require_tool("storescu"), "-aet", aet, "-aec", aec, *(extra or []), "+sd", "+r",
         "127.0.0.1", str(port), *[str(p) for p in files]],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    if check and proc.returncode != 0:
        raise AssertionError(f"storescu failed ({proc.returncode}): {proc.stderr}")
    return proc


def echoscu(
    port: int, aet: str = "SCANNER", aec: str = "LGE_NODE", extra: list[str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [require_tool("echoscu"), "-aet", aet, "-aec", aec, *(extra or []), "127.0.0.1",
         str(port)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def copy_study(src_dir: Path, dst_dir: Path, **overrides: Any) -> tuple[str, str, list[Path]]:
    """A copy of a phantom series under new Study/Series/SOP UIDs (a different patient
    visit as far as DICOM is concerned); ``overrides`` set further attributes.
    Returns (study UID, series UID, files)."""
    study, series = generate_uid(), generate_uid()
    dst_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for i, path in enumerate(sorted(Path(src_dir).glob("*.dcm"))):
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        for key, value in overrides.items():
            setattr(ds, key, copy.deepcopy(value))
        out = dst_dir / f"{i:03d}.dcm"
        ds.save_as(out, enforce_file_format=True)
        files.append(out)
    return study, series, files


def reports_for(pacs: Any, study_uid: str, series_uid: str) -> list[pydicom.Dataset]:
    """SRs in the PACS study whose evidence is ``series_uid`` (read through REST)."""
    import io

    found = []
    for series in pacs.study_series(study_uid):
        if series["MainDicomTags"].get("Modality") != "SR":
            continue
        for inst in series["Instances"]:
            ds = pydicom.dcmread(io.BytesIO(pacs.file(inst)))
            evidence = {
                s.SeriesInstanceUID
                for study in ds.get("CurrentRequestedProcedureEvidenceSequence", [])
                for s in study.ReferencedSeriesSequence
            }
            if series_uid in evidence:
                found.append(ds)
    return found
