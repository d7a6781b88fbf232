"""Helpers that run the real DICOM tools (dicom3tools, DCMTK) the tests validate against."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from node.demo.peers import system_tool

if TYPE_CHECKING:
    import numpy as np
    import pydicom

    from pipeline.volume import Volume


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
    """{group key: {concept code: value, "site": code}} of the measurement groups with
    numbers, from DCMTK's dsrdump. The first such group of a tracked finding is keyed by
    its tracking identifier ("Infarct (scar)"); further groups of the same finding by
    "identifier / finding[ by method][ @ site]" ("Infarct (scar) / Infarct core by Full
    width at half maximum")."""
    parsed: list[dict] = []
    for line in dsrdump(path).splitlines():
        if '"Measurement Group")' in line:
            parsed.append({"nums": {}, "finding": "", "method": "", "site": None})
            continue
        if not parsed:
            continue
        g = parsed[-1]
        if m := re.search(r'"Tracking Identifier"\)="([^"]+)"', line):
            g["id"] = m.group(1)
        elif m := re.search(r'NUM:\(([^,]+),([^,]+),"[^"]*"\)="([^"]+)"', line):
            g["nums"][m.group(1)] = float(m.group(3))
        elif m := re.search(r'"Finding"\)=\([^,]+,[^,]+,"([^"]+)"\)', line):
            g["finding"] = m.group(1)
        elif m := re.search(r'"Measurement Method"\)=\([^,]+,[^,]+,"([^"]+)"\)', line):
            g["method"] = m.group(1)
        elif (m := re.search(r'"Finding Site"\)=\(([^,]+),SCT,"([^"]+)"\)', line)) and (
            m.group(1) != "80891009"  # the heart: every group's site
        ):
            g["site"] = (m.group(1), m.group(2))
    groups: dict[str, dict[str, float]] = {}
    for g in parsed:
        if not g["nums"]:
            continue  # an outline-only group; its numbers are in a sibling group
        key = g["id"]
        if key in groups:
            key += f" / {g['finding']}"
            key += f" by {g['method']}" if g["method"] else ""
            key += f" @ {g['site'][1]}" if g["site"] else ""
        groups[key] = dict(g["nums"])
        if g["site"]:
            groups[key]["site"] = g["site"][0]
    return groups


def reader_seg(volume: Volume, labels: np.ndarray) -> pydicom.Dataset:
    """A SEG as a viewer stores a reader's edit: a new series by another manufacturer, the
    segments renumbered (MVO, infarct, myocardium) and relabelled, the codes kept."""
    import highdicom as hd
    import numpy as np
    from pydicom.uid import generate_uid

    from dicom_templates import codes
    from pipeline.labels import Label, myocardium_mask, scar_mask

    segments = [
        (labels == Label.MVO, "MVO (edited)", codes.MORPHOLOGICALLY_ABNORMAL, codes.MVO),
        (scar_mask(labels), "Scar (edited)", codes.MORPHOLOGICALLY_ABNORMAL, codes.INFARCT),
        (myocardium_mask(labels), "Myocardium (edited)", codes.ANATOMICAL_STRUCTURE,
         codes.LV_MYOCARDIUM),
    ]  # fmt: skip
    manual = hd.seg.SegmentAlgorithmTypeValues.MANUAL
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=n,
            segment_label=label,
            segmented_property_category=category,
            segmented_property_type=kind,
            algorithm_type=manual,
        )
        for n, (_, label, category, kind) in enumerate(segments, start=1)
    ]
    seg = hd.seg.Segmentation(
        source_images=volume.datasets,
        pixel_array=np.stack([m for m, *_ in segments], axis=-1).astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=300,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="OHIF",
        manufacturer_model_name="OHIF Viewer",
        software_versions="3.13.2",
        device_serial_number="1",
        series_description="Segmentation (edited)",
    )
    return seg
