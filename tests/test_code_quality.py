"""What CI checks of the code itself: ruff (lint and format), mypy on the shipped
packages, and the layering that lets a reader find a concern in one place."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ("node", "pipeline", "dicom_templates")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


def test_ruff_lint_is_clean() -> None:
    proc = _run("ruff", "check", ".")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_format_is_clean() -> None:
    proc = _run("ruff", "format", "--check", ".")
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.slow
def test_mypy_is_clean_on_the_shipped_packages() -> None:
    proc = _run("mypy")  # files and settings: [tool.mypy] in pyproject.toml
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Success" in proc.stdout


def _imports(package: str) -> dict[str, set[str]]:
    """Module path -> the modules it imports (absolute names), for every module below."""
    out: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        out[str(path.relative_to(ROOT))] = names
    return out


def _offenders(package: str, forbidden: str, allowed_under: str | None = None) -> list[str]:
    return [
        f"{module} imports {name}"
        for module, names in _imports(package).items()
        if allowed_under is None or not module.startswith(allowed_under)
        for name in names
        if name == forbidden or name.startswith(forbidden + ".")
    ]


def test_only_the_store_speaks_sql() -> None:
    offenders = [o for p in SHIPPED for o in _offenders(p, "sqlalchemy", "node/store/")]
    assert offenders == []


def test_inference_does_not_import_research_tooling() -> None:
    assert _offenders("pipeline", "pipeline.research", "pipeline/research/") == []


def test_pipeline_and_outputs_work_without_the_node() -> None:
    assert _offenders("pipeline", "node") == []
    assert _offenders("dicom_templates", "node") == []
    assert _offenders("pipeline", "dicom_templates") == []


def test_the_node_ships_no_test_peers() -> None:
    """Orthanc/DCMTK launchers live with the demo (node/demo) and the tests only."""
    offenders = [
        o
        for o in _offenders("node", "node.demo.peers")
        if not o.startswith(("node/demo/", "node/cli/operator.py"))
    ]
    assert offenders == []
