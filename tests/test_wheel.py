"""The built wheel works on its own: installed into a fresh virtual environment (the
pinned dependencies from uv.lock, then the wheel), `lge-node` makes a phantom and
analyses it from a folder outside the source tree, with the bundled models found
inside the installed package and nothing written next to it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _uv() -> str:
    uv = shutil.which("uv")
    assert uv, "uv is needed to build and install the wheel (scripts/setup-system installs it)"
    return uv


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 600) -> str:
    proc = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, f"{args[:3]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.mark.slow
def test_the_installed_wheel_analyses_a_phantom(tmp_path: Path) -> None:
    uv = _uv()
    dist = tmp_path / "dist"
    _run([uv, "build", "--wheel", "--out-dir", str(dist)], ROOT)
    (wheel,) = dist.glob("lge_node-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    assert any(n.startswith("pipeline/demo_models/yolo/heart.pt") for n in names)
    assert any(n.endswith("fold_all/checkpoint_final.pth") for n in names)
    assert not any("/tests/" in n or n.startswith("tests/") for n in names)

    # A fresh environment with exactly the locked dependencies (no dev tools, not the
    # project), made by uv from uv.lock; --offline: `uv sync` put every wheel in uv's cache.
    venv = tmp_path / "venv"
    env = dict(os.environ, UV_PROJECT_ENVIRONMENT=str(venv))
    env.pop("VIRTUAL_ENV", None)
    _run([uv, "sync", "--frozen", "--offline", "--no-dev", "--no-install-project",
          "--python", sys.executable], ROOT, env)  # fmt: skip
    python = venv / "bin" / "python"
    _run([uv, "pip", "install", "--offline", "--no-deps", "--python", str(python), str(wheel)],
         tmp_path)  # fmt: skip

    site = Path(
        _run([str(python), "-c", "import pipeline, pathlib; "
              "print(pathlib.Path(pipeline.__file__).parent.parent)"], tmp_path).strip()
    )  # fmt: skip
    assert site != ROOT and ROOT not in site.parents, "the venv must import the installed copy"
    before = _tree(site)

    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "UV_"))}
    env.update(HOME=str(tmp_path / "home"), XDG_CACHE_HOME=str(tmp_path / "cache"))
    env.pop("LGE_NODE_CACHE_DIR", None)
    env.pop("YOLO_CONFIG_DIR", None)
    lge = str(venv / "bin" / "lge-node")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert f"lge-node {project['version']}" in _run([lge, "version"], work, env)
    _run([lge, "phantom", "case", "--seed", "3", "--slices", "8"], work, env)
    _run([lge, "analyze", "case/dicom", "--out", "out"], work, env)

    metrics = json.loads((work / "out" / "metrics.json").read_text())
    truth = json.loads((work / "case" / "truth.json").read_text())
    assert metrics["myocardium_ml"] == pytest.approx(truth["myocardium_ml"], rel=0.2)
    assert metrics["algorithm"]["synthetic_trained"] is True  # the bundled demo models
    assert (work / "out" / "seg.dcm").is_file() and (work / "out" / "sr.dcm").is_file()
    added = {p for p in _tree(site) - before if "__pycache__" not in p}
    assert added == set(), f"the run wrote next to the installed package: {sorted(added)[:5]}"
    assert (tmp_path / "cache" / "lge-node" / "ultralytics" / "Arial.ttf").is_file()
