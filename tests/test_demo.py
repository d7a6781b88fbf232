"""``lge-node demo``, the README's first command, end to end."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from node.demo import run_demo
from tests.dicom_tools import dciodvfy
from tests.node_harness import ROOT

pytestmark = pytest.mark.timeout(300)


def test_demo_command_round_trips_through_orthanc(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "node.cli", "demo", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=280, check=False,
        env=dict(os.environ, COLUMNS="200"),  # rich wraps at 80 columns when piped
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = " ".join(proc.stdout.split())  # rich wraps titles to the table's width
    assert "research only, not for clinical use" in text
    assert "DCMTK storescu" in text and "Orthanc http://127.0.0.1:" in text
    assert re.search(r"console http://127\.0\.0\.1:\d+/ \(user demo, password \S+\)", text)
    assert re.search(r"DICOMweb http://127\.0\.0\.1:\d+/dicom-web ", text)
    seg = next(out.glob("node/results/*/job*/seg.dcm"))
    metrics = json.loads((seg.parent / "metrics.json").read_text())
    truth = json.loads((out / "study" / "truth.json").read_text())
    assert metrics["scar_ml"] == pytest.approx(truth["scar_ml"], rel=0.3, abs=1.0)
    assert f"{metrics['scar_percent']:.1f}" in text
    # The PACS stored what the node sent: the SEG is in Orthanc's storage, valid.
    stored = []
    for path in (out / "orthanc" / "storage").rglob("*"):
        if path.is_file():
            try:
                stored.append(pydicom.dcmread(path, stop_before_pixels=True))
            except pydicom.errors.InvalidDicomError:
                continue  # Orthanc's own attachments
    assert {"SEG", "SR"} <= {str(d.get("Modality", "")) for d in stored}
    assert not dciodvfy(seg).errors


def test_demo_without_orthanc_uses_a_storage_scp(tmp_path: Path) -> None:
    """Also what ``--keep`` holds open: the console answers with the printed demo login
    and lists the demo's study as done."""
    import httpx

    seen: dict[str, object] = {}

    def hold(peer: str, console: str) -> None:
        found = re.match(r"(http://127\.0\.0\.1:\d+)/ \(user demo, password (\S+)\)", console)
        assert found, console
        url, password = found.groups()
        with httpx.Client(base_url=url, auth=("demo", password), timeout=30) as api:
            seen["series"] = api.get("/api/v1/series").json()["items"]
            seen["me"] = api.get("/api/v1/me").json()
            seen["qido"] = api.get("/dicom-web/series").json()
        seen["anonymous"] = httpx.get(url + "/api/v1/series", timeout=30).status_code

    result = run_demo(tmp_path / "demo", seed=11, use_orthanc=False, hold=hold)
    assert seen["me"] == {"name": "demo", "role": "admin", "via": "password"}
    assert [(s["series_uid"], s["state"]) for s in seen["series"]] == [(result.series_uid, "done")]
    assert seen["anonymous"] == 401
    # The node's own DICOMweb lists the study it was sent (OHIF could read it from there).
    listed = {s["0020000E"]["Value"][0]: s["00080060"]["Value"][0] for s in seen["qido"]}
    assert listed[result.series_uid] == "MR"
    assert {"SEG", "SR", "DOC"} <= set(listed.values())
    received = list((tmp_path / "demo" / "received").glob("*.dcm"))
    # SEG, SR, PDF report, summary page and one overlay per slice
    sent = 4 + len(list((result.results_dir / "overlay").glob("*.dcm")))
    assert len(received) == sent
    assert result.metrics["source_series_instance_uid"] == result.series_uid
    assert result.seconds["total"] < 120
