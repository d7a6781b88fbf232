"""Write the full result of one analysed series: ``metrics.json``, ``labels.nii.gz`` (the
label map on the source geometry: what a reader's correction is merged into),
``seg.dcm``, ``sr.dcm``, ``report.dcm`` (Encapsulated PDF; the same PDF as ``report.pdf``),
``summary.dcm`` and ``overlay/*.dcm``.
Files are written to a temporary name and renamed, so a reader
(the node's dispatcher, a user) never sees half a file."""

from __future__ import annotations

import json
import os
from concurrent.futures import BrokenExecutor, Executor, wait
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset

from dicom_templates.identity import Algorithm
from dicom_templates.overlay import overlay_objects, render_overlays
from dicom_templates.pdf import build_pdf, render_report
from dicom_templates.seg import build_seg
from dicom_templates.sr import build_sr
from dicom_templates.written import WrittenObject
from pipeline.quantify import Metrics
from pipeline.volume import Volume


@dataclass(frozen=True)
class ReaderEdit:
    """The SEG a reader edited and stored, which the outputs' labels come from."""

    seg: Dataset
    received_from: str  # AE title that sent it

    def describe(self) -> dict[str, str]:
        return {
            "source": "reader-edited",
            "reader_seg_sop_instance_uid": str(self.seg.SOPInstanceUID),
            "reader_seg_series_instance_uid": str(self.seg.SeriesInstanceUID),
            "received_from": self.received_from,
        }


@dataclass(frozen=True)
class OutputFiles:
    metrics: Path
    seg: Path
    sr: Path
    pdf: Path  # the Encapsulated PDF object
    summary: Path  # the bullseye / key-numbers page (SC)
    overlays: list[Path]  # one SC per slice
    objects: list[WrittenObject]  # seg, sr, pdf, summary, overlays, in that order
    labels: Path  # labels.nii.gz (pipeline.labels.Label values)

    @property
    def dicom(self) -> list[Path]:
        return [self.seg, self.sr, self.pdf, self.summary, *self.overlays]


@dataclass(frozen=True)
class Drawn:
    """What is drawn rather than encoded, written: the PDF report, the summary page and
    one overlay per slice (that order)."""

    pdf: WrittenObject
    summary: WrittenObject
    overlays: list[WrittenObject]


def draw_results(
    out_dir: Path, volume: Volume, labels: np.ndarray, metrics: Metrics, algorithm: Algorithm
) -> Drawn:
    """Draw the overlay pages and the PDF, wrap them as DICOM objects and write them (and
    ``report.pdf``) into ``out_dir``. Reads no state but its arguments, so the drawing
    process can run it while the worker encodes the SEG and SR."""
    overlay_pages = render_overlays(volume, labels, metrics, algorithm)
    document = render_report(volume, labels, metrics, algorithm)
    overlays, summary = overlay_objects(volume, overlay_pages, algorithm)
    pdf = build_pdf(volume, document, algorithm)
    tmp = out_dir / ".report.pdf.tmp"
    tmp.write_bytes(document)
    os.replace(tmp, out_dir / "report.pdf")
    overlay_dir = out_dir / "overlay"
    overlay_dir.mkdir(exist_ok=True)
    return Drawn(
        _atomic_save(pdf, out_dir / "report.dcm"),
        _atomic_save(summary, out_dir / "summary.dcm"),
        [_atomic_save(sc, overlay_dir / f"SC_{int(sc.InstanceNumber):04d}.dcm") for sc in overlays],
    )


def _for_drawing(volume: Volume) -> Volume:
    """``volume`` with its source headers but without their pixel data: all that drawing
    reads (the overlays and the PDF reference every source image), and cheap to send to
    another process."""
    headers = [
        Dataset({tag: elem for tag, elem in ds.items() if tag.group != 0x7FE0})
        for ds in volume.datasets
    ]
    return replace(volume, datasets=headers)


def _atomic_save(ds: Dataset, path: Path) -> WrittenObject:
    tmp = path.with_name(f".{path.name}.tmp")
    ds.save_as(tmp, enforce_file_format=True)
    os.replace(tmp, path)
    return WrittenObject.of(ds, str(path), path.stat().st_size)


def write_metrics(
    out_dir: Path,
    volume: Volume,
    metrics: Metrics,
    algorithm: Algorithm,
    reader_edit: ReaderEdit | None = None,
) -> Path:
    """``metrics.json``: the contract keys (docs/ARCHITECTURE.md) plus reference, qc, who
    computed them and where the labels came from (the model, or a reader's edit)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "metrics.json"
    document = metrics.to_dict()
    document["algorithm"] = {
        "name": algorithm.label,
        "version": algorithm.version,
        "synthetic_trained": algorithm.synthetic_trained,
        "model": algorithm.model,
        "model_title": algorithm.model_title,
    }
    document["source_series_instance_uid"] = volume.series_instance_uid
    document["segmentation"] = reader_edit.describe() if reader_edit else {"source": "automatic"}
    tmp = path.with_name(".metrics.json.tmp")
    tmp.write_text(json.dumps(document, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def write_labels(out_dir: Path, volume: Volume, labels: np.ndarray) -> Path:
    """``labels.nii.gz`` on the source geometry, written atomically."""
    path = out_dir / "labels.nii.gz"
    tmp = out_dir / ".labels.tmp.nii.gz"  # the suffix tells SimpleITK the format
    sitk.WriteImage(volume.geometry.to_sitk(labels.astype(np.uint8)), str(tmp), True)
    os.replace(tmp, path)
    return path


def _encode(
    out_dir: Path,
    volume: Volume,
    labels: np.ndarray,
    metrics: Metrics,
    algorithm: Algorithm,
    predecessor_sr: Path | None,
    include_blood_pools: bool,
    reader_edit: ReaderEdit | None,
) -> tuple[list[WrittenObject], Path, Path]:
    """The SEG and SR (written), ``metrics.json`` and the labels."""
    predecessor = pydicom.dcmread(predecessor_sr) if predecessor_sr else None
    seg = build_seg(volume, labels, algorithm, include_blood_pools)
    sr = build_sr(
        volume, seg, labels, metrics, algorithm, predecessor=predecessor,
        reader_seg=reader_edit.seg if reader_edit else None,
    )  # fmt: skip
    objects = [_atomic_save(seg, out_dir / "seg.dcm"), _atomic_save(sr, out_dir / "sr.dcm")]
    metrics_path = write_metrics(out_dir, volume, metrics, algorithm, reader_edit)
    return objects, metrics_path, write_labels(out_dir, volume, labels)


def write_outputs(
    out_dir: Path,
    volume: Volume,
    labels: np.ndarray,
    metrics: Metrics,
    algorithm: Algorithm,
    predecessor_sr: Path | None = None,
    include_blood_pools: bool = False,
    reader_edit: ReaderEdit | None = None,
    drawing: Executor | None = None,
) -> OutputFiles:
    """Build and write every output object for ``volume`` into ``out_dir``.

    ``predecessor_sr``: the report these outputs supersede (referenced by the new SR).
    ``reader_edit``: the labels are a reader's correction; every object says so.
    ``drawing``: an executor (a process) that draws the overlays and the PDF while this
    thread encodes the SEG and SR; both are pure Python and hold the interpreter, so
    only another process runs them side by side. If it fails, they are drawn here."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if reader_edit is not None:
        algorithm = algorithm.edited()
    pending = None
    if drawing is not None:
        try:
            pending = drawing.submit(
                draw_results, out_dir, _for_drawing(volume), labels, metrics, algorithm
            )
        except (BrokenExecutor, RuntimeError):  # broken, or shut down by a stopping worker
            pending = None
    try:
        objects, metrics_path, labels_path = _encode(
            out_dir, volume, labels, metrics, algorithm, predecessor_sr, include_blood_pools,
            reader_edit,
        )  # fmt: skip
    except BaseException:
        # The job fails: its folder is not written to after this (a retry cleans it).
        if pending is not None and not pending.cancel():
            wait([pending])
        raise
    drawn = None
    if pending is not None:
        try:
            drawn = pending.result()
        except BrokenExecutor:  # the drawing process died (killed, out of memory)
            drawn = None
    if drawn is None:
        drawn = draw_results(out_dir, volume, labels, metrics, algorithm)
    seg, sr = objects
    return OutputFiles(
        metrics_path, Path(seg.path), Path(sr.path), Path(drawn.pdf.path),
        Path(drawn.summary.path), [Path(o.path) for o in drawn.overlays],
        [seg, sr, drawn.pdf, drawn.summary, *drawn.overlays], labels_path,
    )  # fmt: skip
