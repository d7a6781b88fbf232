"""The installed ``lge-node`` console script, run as a user would."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from pipeline.series import load_series
from tests.dicom_tools import dciodvfy


def lge_node(*args: str, columns: int | None = None) -> subprocess.CompletedProcess:
    exe = shutil.which("lge-node", path=str(Path(sys.executable).parent))
    assert exe, "lge-node console script is not installed in this environment"
    env = {**os.environ, "COLUMNS": str(columns)} if columns else None
    return subprocess.run([exe, *args], capture_output=True, text=True, check=False, env=env)


def test_phantom_seed_7_writes_a_valid_study_with_matching_truth(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = lge_node("phantom", str(out), "--seed", "7")
    assert proc.returncode == 0, proc.stderr
    assert "LV myocardium" in proc.stdout
    files = sorted((out / "dicom").glob("*.dcm"))
    assert 8 <= len(files) <= 14
    for f in files:
        assert dciodvfy(f).errors == []
    truth = json.loads((out / "truth.json").read_text())
    vol = load_series(out / "dicom")
    labels_img = sitk.ReadImage(str(out / "truth_labels.nii.gz"))
    labels = sitk.GetArrayFromImage(labels_img)
    # The truth overlays the series exactly: same grid, same place.
    assert labels.shape == vol.array.shape
    np.testing.assert_allclose(labels_img.GetOrigin(), vol.geometry.origin, atol=1e-4)
    np.testing.assert_allclose(
        np.array(labels_img.GetDirection()).reshape(3, 3), vol.geometry.direction, atol=1e-6
    )
    np.testing.assert_allclose(labels_img.GetSpacing()[::-1], vol.geometry.spacing_zyx, atol=1e-4)
    myo_ml = np.isin(labels, [2, 3, 4]).sum() * vol.geometry.voxel_volume_ml
    assert abs(truth["myocardium_ml"] - myo_ml) < 1e-6 * myo_ml


def test_phantom_rejects_contradictory_options(tmp_path: Path) -> None:
    proc = lge_node("phantom", str(tmp_path / "x"), "--no-scar", "--mvo")
    assert proc.returncode == 2
    assert "MVO lies inside scar" in proc.stderr
    assert not (tmp_path / "x").exists()


def test_inspect_reports_geometry_or_a_named_error(psir_classic, tmp_path: Path) -> None:
    ok = lge_node("inspect", str(psir_classic.out_dir / "dicom"))
    assert ok.returncode == 0, ok.stderr
    info = json.loads(ok.stdout)
    assert info["shape_zyx"] == list(psir_classic.geometry.shape)
    (tmp_path / "junk.dcm").write_bytes(b"\x00" * 50)
    # A narrow terminal must not fold the path: it is what the user copies.
    bad = lge_node("inspect", str(tmp_path), columns=40)
    assert bad.returncode == 1
    assert "NotDicomError" in bad.stderr and str(tmp_path / "junk.dcm") in bad.stderr


def test_check_config_exit_codes(tmp_path: Path) -> None:
    good = tmp_path / "ok.toml"
    good.write_text('[dicom]\nae_title = "MY_NODE"\n')
    assert lge_node("check-config", str(good)).returncode == 0
    bad = tmp_path / "bad.toml"
    bad.write_text("[dicom]\nport = 0\n")
    proc = lge_node("check-config", str(bad))
    assert proc.returncode == 2 and "dicom.port" in proc.stderr


def test_report_writes_seg_sr_and_overlays_from_phantom_truth(psir_classic, tmp_path) -> None:
    out = tmp_path / "results"
    proc = lge_node(
        "report",
        str(psir_classic.out_dir / "dicom"),
        "--labels",
        str(psir_classic.out_dir / "truth_labels.nii.gz"),
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    assert (out / "seg.dcm").is_file() and (out / "sr.dcm").is_file()
    overlays = sorted((out / "overlay").glob("*.dcm"))
    assert len(overlays) == psir_classic.geometry.shape[0]
    assert (out / "summary.dcm").is_file() and (out / "report.dcm").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    truth = json.loads((psir_classic.out_dir / "truth.json").read_text())
    # Same labels, geometry read back from 16-character decimal strings: equal to 1e-9.
    for key in ("myocardium_ml", "scar_ml", "mvo_ml", "scar_percent"):
        assert metrics[key] == pytest.approx(truth[key], rel=1e-9)
    assert not list(out.rglob(".*.tmp")), "no temporary files left behind"


def test_report_refuses_labels_on_another_geometry(psir_classic, phantom_factory, tmp_path):
    other = phantom_factory(seed=11, kind="magnitude", enhanced=True, mvo=True)
    proc = lge_node(
        "report",
        str(psir_classic.out_dir / "dicom"),
        "--labels",
        str(other.out_dir / "truth_labels.nii.gz"),
        "--out",
        str(tmp_path / "r"),
    )
    assert proc.returncode == 1
    assert "not on the series' geometry" in proc.stderr
    assert not (tmp_path / "r").exists()


def test_console_credentials_print_config_entries_that_the_node_accepts(tmp_path: Path) -> None:
    """hash-password and new-token print [[http.users]] / [[http.tokens]] entries; pasted
    into a config they validate, and the password and token they stand for authenticate."""
    import hashlib
    import tomllib

    from node.config import load_config
    from node.http.auth import Authenticator

    exe = shutil.which("lge-node", path=str(Path(sys.executable).parent))
    assert exe
    user = subprocess.run(
        [exe, "hash-password", "ada", "--role", "admin"], input="s3cret-pass\ns3cret-pass\n",
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert user.returncode == 0, user.stderr
    token = lge_node("new-token", "grafana", "--role", "viewer")
    assert token.returncode == 0, token.stderr
    secret = re.search(r"token \(give it to the client; it is not stored\): (\S+)", token.stdout)
    assert secret is not None
    entries = user.stdout[user.stdout.index("[[http.users]]"):] + "\n" + token.stdout[
        token.stdout.index("[[http.tokens]]"):
    ]  # fmt: skip
    assert "s3cret" not in entries
    path = tmp_path / "node.toml"
    path.write_text(entries)
    http = load_config(path).http
    assert (
        tomllib.loads(entries)["http"]["tokens"][0]["sha256"]
        == hashlib.sha256(secret.group(1).encode()).hexdigest()
    )
    auth = Authenticator(http, b"k" * 32)
    assert auth.password("ada", "s3cret-pass").role == "admin"
    assert auth.password("ada", "wrong") is None
    assert auth.token(secret.group(1)).name == "grafana"
    short = subprocess.run(
        [exe, "hash-password", "bob"], input="short\nshort\n", capture_output=True, text=True,
        check=False,
    )  # fmt: skip
    assert short.returncode != 0 and "at least 8 characters" in short.stderr
