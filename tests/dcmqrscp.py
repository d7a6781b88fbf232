"""DCMTK's ``dcmqrscp`` as a second, independent PACS for tests.

Unlike Orthanc, which stops a C-MOVE at the first failed sub-operation, dcmqrscp goes on
and ends with 0xB000 and a Failed SOP Instance UID List: the peer for partial moves.
Files are registered in place with ``dcmqridx``; a test can hide one to make its
sub-operation fail and put it back.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from node.demo.peers import free_port
from tests.dicom_tools import require_tool


class DcmQrScp:
    """``with DcmQrScp(workdir, files, move_destinations={"NODE": ("127.0.0.1", 104)})``."""

    def __init__(
        self,
        workdir: Path,
        files: list[Path],
        move_destinations: dict[str, tuple[str, int]],
        ae_title: str = "DCMQR",
    ) -> None:
        self.workdir = workdir
        self.ae_title = ae_title
        self.port = free_port()
        self.files = files
        self.db = workdir / "db"
        self.db.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "dcmqrscp.log"
        hosts = "\n".join(
            f"peer{i} = ({ae}, {host}, {port})"
            for i, (ae, (host, port)) in enumerate(move_destinations.items())
        )
        self.config = workdir / "dcmqrscp.cfg"
        self.config.write_text(
            f"NetworkTCPPort = {self.port}\nMaxPDUSize = 16384\nMaxAssociations = 16\n"
            f"HostTable BEGIN\n{hosts}\nHostTable END\n"
            "VendorTable BEGIN\nVendorTable END\n"
            f"AETable BEGIN\n{ae_title} {self.db} RW (200, 1024mb) ANY\nAETable END\n"
        )
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> DcmQrScp:
        subprocess.run(
            [require_tool("dcmqridx"), str(self.db), *map(str, self.files)],
            check=True, capture_output=True,
        )  # fmt: skip
        log = self.log_path.open("w")
        # -v logs each request identifier and sub-operation. The default mode forks a child
        # per association (--single-process served only one here).
        self.proc = subprocess.Popen(
            [require_tool("dcmqrscp"), "-v", "-c", str(self.config)], stdout=log, stderr=log
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.1)
        self.__exit__()
        raise RuntimeError(f"dcmqrscp did not start: {self.log_path.read_text()[-2000:]}")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")
