"""Hostile peers and a failing machine, against ``lge-node serve`` on loopback: each test
reproduces a failure found by trying (issue: hardening) and asserts what a PACS
administrator relies on instead. Real processes, real sockets, DCMTK as the peer."""

from __future__ import annotations

import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from tests.dicom_tools import require_tool
from tests.node_harness import NodeProcess, echoscu

pytestmark = pytest.mark.timeout(300)

ALLOWED = [{"ae_title": "SCANNER"}, {"ae_title": "ECHOSCU"}, {"ae_title": "FINDSCU"}]


def findscu(port: int, aet: str, timeout_s: int = 90) -> subprocess.CompletedProcess:
    """A C-FIND at STUDY level for every patient name (what a snooping peer would ask)."""
    return subprocess.run(
        [require_tool("findscu"), "-aet", aet, "-aec", "LGE_NODE", "-S", "-to", "5",
         "-ta", str(timeout_s), "-td", str(timeout_s),
         "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientName=*", "-k", "StudyInstanceUID",
         "127.0.0.1", str(port)],
        capture_output=True, text=True, timeout=timeout_s + 30, check=False,
    )  # fmt: skip


def test_access_control_holds_while_the_index_is_locked_and_the_rejection_is_recorded_later(
    tmp_path: Path, psir_classic
) -> None:
    """The index held under an exclusive lock by another process for longer than the
    node's busy timeout once let an unknown AE associate, echo and C-FIND patient names.
    Access decisions must not wait for the database: the stranger is rejected at once,
    allowed peers keep being answered, and the rejection reaches the index when it is
    free again."""
    node = NodeProcess(tmp_path / "node", allowed_peers=ALLOWED)
    with node:
        from tests.node_harness import storescu

        storescu(node.port, sorted((psir_classic.out_dir / "dicom").glob("*.dcm"))[:2])
        node.wait_for(lambda: node.query("SELECT COUNT(*) FROM instances") == [(2,)], 60,
                      "instances indexed")  # fmt: skip
        lock = sqlite3.connect(node.data_dir / "index.db", timeout=1, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            t0 = time.monotonic()
            stranger = echoscu(node.port, aet="STRANGER", extra=["-ta", "90"])
            elapsed = time.monotonic() - t0
            assert stranger.returncode != 0
            assert "reject" in stranger.stderr.lower()
            assert elapsed < 10, f"the rejection waited {elapsed:.0f} s for the index"
            snoop = findscu(node.port, "SNOOPER")
            assert snoop.returncode != 0 and "reject" in snoop.stderr.lower()
            assert "Phantom" not in snoop.stdout + snoop.stderr  # no patient name leaked
            assert echoscu(node.port, aet="ECHOSCU").returncode == 0  # allowed: answered
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        node.wait_for(
            lambda: {m.split("'")[1] for m, _, _ in node.events("association_rejected")}
            >= {"STRANGER", "SNOOPER"},
            60, "the rejections recorded once the index is free",
        )  # fmt: skip
        assert node.alive()
