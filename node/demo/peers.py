"""Local DICOM peers for the demo and the tests: a real Orthanc (Debian package) on
loopback with a generated config, DCMTK tools found outside the virtual environment."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


def system_tool(name: str) -> str | None:
    """``name`` on PATH, skipping the virtual environment: pynetdicom installs Python
    look-alikes named storescu, echoscu, findscu... there, and we want DCMTK's."""
    venv_bin = (Path(sys.prefix) / "bin").resolve()
    dirs = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d]
    dirs = [d for d in dirs if Path(d).resolve() != venv_bin] + ["/usr/bin", "/usr/sbin"]
    return shutil.which(name, path=os.pathsep.join(dirs))


def orthanc_binary() -> str | None:
    return system_tool("Orthanc")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orthanc:
    """Start with ``with Orthanc(workdir) as pacs:``; REST through ``get``/``post``."""

    # Loopback only, no authentication: a local peer for demos and tests, not a PACS.

    def __init__(
        self,
        workdir: Path,
        aet: str = "ORTHANC",
        modalities: dict[str, list[Any]] | None = None,
        stable_age_s: int = 2,
        dicom_port: int | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.workdir = workdir
        self.aet = aet
        self.http_port = free_port()
        self.dicom_port = dicom_port or free_port()
        self.modalities = modalities or {}
        self.stable_age_s = stable_age_s
        self.extra = extra or {}
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def _binary(self) -> str:
        path = orthanc_binary()
        if path is None:
            raise RuntimeError("Orthanc is not installed; run scripts/setup-system")
        return path

    def __enter__(self) -> Orthanc:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "lge-node-test",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": True,
            "DicomModalities": self.modalities,
            "StableAge": self.stable_age_s,
            "Plugins": [],
            "HttpDescribeErrors": True,
            "DefaultEncoding": "Latin1",
            **self.extra,
        }
        path = self.workdir / "orthanc.json"
        path.write_text(json.dumps(config, indent=2))
        log = (self.workdir / "orthanc.log").open("w")
        self._proc = subprocess.Popen([self._binary(), str(path)], stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited: {(self.workdir / 'orthanc.log').read_text()}")
            try:
                self.get("/system")
                return self
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.2)
        raise RuntimeError("Orthanc did not answer within 30 s")

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=10) as r:
            return json.loads(r.read())

    def post(self, path: str, body: Any) -> Any:
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), method="POST")
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read() or b"null")

    def upload(self, paths: list[Path]) -> list[str]:
        """POST files to /instances (as a modality would store them); returns instance ids."""
        ids = []
        for path in paths:
            req = urllib.request.Request(
                self.url + "/instances", data=Path(path).read_bytes(), method="POST"
            )
            with urllib.request.urlopen(req, timeout=60) as r:
                ids.append(json.loads(r.read())["ID"])
        return ids

    def file(self, instance_id: str) -> bytes:
        with urllib.request.urlopen(f"{self.url}/instances/{instance_id}/file", timeout=30) as r:
            return r.read()

    def study_series(self, study_uid: str) -> list[dict[str, Any]]:
        """Series of one study (MainDicomTags + Instances), found by StudyInstanceUID."""
        found = self.post(
            "/tools/find", {"Level": "Study", "Query": {"StudyInstanceUID": study_uid}}
        )
        if not found:
            return []
        return self.get(f"/studies/{found[0]}/series")

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None
