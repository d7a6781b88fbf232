"""Helpers that run the real DICOM tools (dicom3tools, DCMTK) the tests validate against."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(
            f"{name} is not installed; run scripts/setup-system (Debian dcmtk, dicom3tools)"
        )
    return path


@dataclass
class Verdict:
    errors: list[str]
    warnings: list[str]
    output: str


def dciodvfy(path: Path) -> Verdict:
    """Validate one object against its IOD with dicom3tools' dciodvfy."""
    proc = subprocess.run(
        [require_tool("dciodvfy"), "-new", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    lines = (proc.stdout + proc.stderr).splitlines()
    return Verdict(
        errors=[line for line in lines if line.startswith("Error")],
        warnings=[line for line in lines if line.startswith("Warning")],
        output="\n".join(lines),
    )


def run_tool(*args: str) -> None:
    proc = subprocess.run(
        [require_tool(args[0]), *args[1:]], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
