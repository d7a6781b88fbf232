"""Helpers that run the real DICOM tools (dicom3tools, DCMTK) the tests validate against."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from node.demo.peers import system_tool


def require_tool(name: str) -> str:
    path = system_tool(name)
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


def dsrdump(path: Path) -> str:
    """DCMTK's rendering of an SR, converted to UTF-8 from its declared character set."""
    return subprocess.run(
        [require_tool("dsrdump"), "+U8", "+Pc", "+Pl", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def dsr_numbers(path: Path) -> dict[str, dict[str, float]]:
    """{tracking identifier: {concept code: value}} from DCMTK's dsrdump."""
    out = dsrdump(path)
    groups: dict[str, dict[str, float]] = {}
    current = None
    for line in out.splitlines():
        m = re.search(r'"Tracking Identifier"\)="([^"]+)"', line)
        if m:
            current = m.group(1)
            groups.setdefault(current, {})
        m = re.search(r'NUM:\(([^,]+),([^,]+),"[^"]*"\)="([^"]+)"', line)
        if m and current:
            groups[current][m.group(1)] = float(m.group(3))
        m = re.search(r'"Finding Site"\)=\(([^,]+),SCT', line)
        if m and current:
            groups[current]["site"] = m.group(1)
    return groups
