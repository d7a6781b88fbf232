"""Readers' corrections: a SEG that a reader edited in the viewer and stored (OHIF, 3D
Slicer, any SEG editor), referencing a series the node analysed, is measured again. Its
results (SR, PDF, summary, overlays and a SEG, all marked "reader-edited") supersede the
newest report on that series, and the (image, edited labels) pair joins an nnU-Net raw
dataset a site can retrain on.

`recognise` is the assembler's test, from the SEG's header only; `correct` is the
worker's job.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
from collections.abc import Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pydicom
from pydicom.uid import SegmentationStorage

from node.store.records import Origin, SeriesRecord, SeriesState
from node.store.repository import Repository
from node.store.storage import Storage, uid_hash

if TYPE_CHECKING:  # the output builders (highdicom, matplotlib) load with the first SEG
    from dicom_templates.identity import Algorithm
    from dicom_templates.outputs import OutputFiles
    from pipeline.quantify import Metrics
    from pipeline.run import PipelineSettings
    from pipeline.volume import Volume

DATASET_DESCRIPTION = (
    "lge-node readers' corrections: LGE heart crops with reader-edited labels. Patient "
    "images (no names or IDs in the files): keep under the site's data governance."
)


class CorrectionError(ValueError):
    """The reader's SEG cannot be applied to the series it references."""


@dataclass(frozen=True)
class Recognition:
    """The assembler's verdict on a received SEG series."""

    source: SeriesRecord | None  # the analysed series it edits; None: not a correction
    reason: str


def is_seg(series: SeriesRecord) -> bool:
    return series.sop_class_uid == SegmentationStorage


def recognise(seg_series: SeriesRecord, repository: Repository) -> Recognition:
    """Whether the newest SEG of ``seg_series`` edits a segmentation the node made: it
    has at least one of our segments (by code or label) and references a series of the
    same study that a job finished with results."""
    from dicom_templates.seg import spec_of

    paths = repository.series_paths(seg_series.id)
    if not paths:
        return Recognition(None, "a SEG series without instances")
    try:
        ds = pydicom.dcmread(paths[0], stop_before_pixels=True)
        referenced = [str(r.SeriesInstanceUID) for r in ds.get("ReferencedSeriesSequence", [])]
        ours = any(spec_of(segment) for segment in ds.get("SegmentSequence", []))
    except Exception as exc:  # a header that passed ingest but not this reading
        return Recognition(None, f"SEG header unreadable: {type(exc).__name__}: {exc}")
    if not referenced:
        return Recognition(None, "a SEG that references no series")
    if not ours:
        return Recognition(
            None, "a SEG without LV myocardium, infarct or MVO segments: not a correction"
        )
    reasons = []
    for uid in referenced:
        source = repository.series_by_uid(uid)
        if source is None or source.origin != Origin.RECEIVED:
            reasons.append(f"it references series {uid}, which the node has not analysed")
        elif source.study_id != seg_series.study_id:
            reasons.append(f"it references series {uid} of another study")
        elif source.state == SeriesState.PURGED:
            reasons.append(f"series {uid} it references was purged (retention)")
        elif not repository.has_report(source.id):
            reasons.append(f"it references series {uid}, which the node has not analysed")
        else:
            return Recognition(source, f"reader's correction of series {uid}")
    return Recognition(None, "; ".join(dict.fromkeys(reasons)))


@dataclass(frozen=True)
class Corrected:
    files: OutputFiles
    metrics: Metrics
    case_id: str  # the training case it became


def correct(
    seg_path: Path,
    source_paths: list[Path],
    source: SeriesRecord,
    previous_results: Path | None,
    settings: PipelineSettings,
    algorithm: Algorithm,
    out_dir: Path,
    training_dataset: Path,
    received_from: str,
    drawing: Executor | None = None,
) -> Corrected:
    """Apply the reader's SEG at ``seg_path`` to ``source`` (its files at ``source_paths``)
    and write the reader-edited results into ``out_dir`` and the training pair into
    ``training_dataset``.

    Blood pools, which a reader does not edit, come from the previous results' labels;
    the predecessor of the new SR is the previous results' SR.
    """
    from dicom_templates.outputs import ReaderEdit, write_outputs
    from dicom_templates.seg import read_seg_masks
    from pipeline.labels import compose
    from pipeline.run import remeasure
    from pipeline.series import load_series

    if source.state == SeriesState.PURGED:
        raise CorrectionError(f"series {source.series_uid} was purged (retention)")
    volume = load_series(source_paths, source.series_uid)
    seg = pydicom.dcmread(seg_path)
    try:
        masks = read_seg_masks(seg, volume)
    except Exception as exc:  # highdicom's own errors name the frame or reference
        raise CorrectionError(
            f"the SEG does not fit series {source.series_uid}: {type(exc).__name__}: {exc}"
        ) from exc
    pools = _previous_labels(previous_results, volume)
    labels = compose(masks[..., 0], masks[..., 1], masks[..., 2], pools)
    metrics = remeasure(volume, labels, settings)
    predecessor = previous_results / "sr.dcm" if previous_results else None
    files = write_outputs(
        out_dir, volume, labels, metrics, algorithm,
        predecessor_sr=predecessor if predecessor and predecessor.exists() else None,
        reader_edit=ReaderEdit(seg, received_from), drawing=drawing,
    )  # fmt: skip
    provenance = {
        "source_series_instance_uid": source.series_uid,
        "reader_seg_sop_instance_uid": str(seg.SOPInstanceUID),
        "reader_seg_series_instance_uid": str(seg.SeriesInstanceUID),
        "received_from": received_from,
        "results": str(out_dir),
        "added_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    case_id = keep_training_pair(training_dataset, volume, labels, provenance)
    return Corrected(files, metrics, case_id)


def _previous_labels(previous_results: Path | None, volume: Volume) -> np.ndarray:
    """The label map the correction replaces; zeros where there is none (results written
    before labels were kept, or purged)."""
    import SimpleITK as sitk

    path = previous_results / "labels.nii.gz" if previous_results else None
    if path is None or not path.exists():
        return np.zeros(volume.array.shape, dtype=np.uint8)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    if labels.shape != volume.array.shape:
        return np.zeros(volume.array.shape, dtype=np.uint8)
    return labels.astype(np.uint8)


def case_id_of(series_uid: str) -> str:
    """One case per source series (no UID in the name): a later correction replaces it."""
    return f"LGECORR_{uid_hash(series_uid)[:16]}"


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Workers (and nodes sharing a folder) add cases one at a time."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def keep_training_pair(
    dataset_dir: Path, volume: Volume, labels: np.ndarray, provenance: dict[str, str]
) -> str:
    """Add (or replace) the series' case in the nnU-Net raw dataset; ``dataset.json``
    counts the cases; ``provenance/<case>.json`` says where the case came from."""
    from pipeline.nnunet_raw import write_case
    from pipeline.roi import Box, heart_region

    case_id = case_id_of(volume.series_instance_uid)
    box = heart_region(labels, volume.geometry.pixel_spacing) or Box(0, 0, *labels.shape[1:])
    with _locked(dataset_dir):
        write_case(volume.array, labels, volume.geometry, box, case_id, dataset_dir)
        notes = dataset_dir / "provenance"
        notes.mkdir(exist_ok=True)
        tmp = notes / f".{case_id}.json.tmp"
        tmp.write_text(json.dumps({"case": case_id, **provenance}, indent=2) + "\n")
        os.replace(tmp, notes / f"{case_id}.json")
        _count_cases(dataset_dir)
    return case_id


def _count_cases(dataset_dir: Path) -> None:
    from pipeline.nnunet_raw import case_files, write_dataset_json

    cases = sorted(
        p for p in (dataset_dir / "labelsTr").glob("*.nii.gz")
        if case_files(dataset_dir, p.name.removesuffix(".nii.gz"))[0].exists()
    )  # fmt: skip
    write_dataset_json(dataset_dir, len(cases), DATASET_DESCRIPTION)


# A worker on another host keeps the training pair in this folder of its results and hands
# it back with them; the node holding the series adds it to its own dataset.
HANDED_BACK = "training"
_CASE = r"LGECORR_[0-9a-f]{16}"
_PAIR_FILE = re.compile(
    rf"^{HANDED_BACK}/(?:imagesTr/(?P<image>{_CASE})_0000\.nii\.gz"
    rf"|labelsTr/(?P<labels>{_CASE})\.nii\.gz|provenance/(?P<notes>{_CASE})\.json)$"
)


def split_training_pair(
    files: list[tuple[str, bytes]],
) -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
    """A hand-back's files as (results, training pair); the pair's dataset.json is not
    taken later: the node counts its own cases."""
    results: list[tuple[str, bytes]] = []
    pair: list[tuple[str, bytes]] = []
    for item in files:
        (pair if item[0].startswith(f"{HANDED_BACK}/") else results).append(item)
    return results, pair


@dataclass(frozen=True)
class HandedBackPair:
    """A training pair a worker on another host made, read from its hand-back."""

    case_id: str
    image: bytes
    labels: bytes
    provenance: dict


def read_handed_back_pair(files: list[tuple[str, bytes]]) -> HandedBackPair:
    """The ``training/...`` files of a hand-back as one case; ValueError for anything but
    one whole case (image, labels, provenance naming it)."""
    parts: dict[str, bytes] = {}
    cases = set()
    for name, data in files:
        if name == f"{HANDED_BACK}/dataset.json":
            continue
        match = _PAIR_FILE.match(name)
        if match is None:
            raise ValueError(f"{name!r} is not a training-pair file")
        kind = next(k for k, v in match.groupdict().items() if v)
        cases.add(match[kind])
        parts[kind] = data
    if len(cases) != 1 or set(parts) != {"image", "labels", "notes"}:
        raise ValueError("a training pair needs one case's image, labels and provenance")
    (case_id,) = cases
    notes = json.loads(parts["notes"])
    if not isinstance(notes, dict) or notes.get("case") != case_id:
        raise ValueError("the training pair's provenance names another case")
    return HandedBackPair(case_id, parts["image"], parts["labels"], notes)


def adopt_training_pair(
    storage: Storage, dataset_dir: Path, pair: HandedBackPair, results: Path
) -> None:
    """Add a handed-back pair to this node's dataset, as `keep_training_pair` does, each
    file written atomically by ``storage``; ``results``: where this node keeps the
    results it came with."""
    from pipeline.nnunet_raw import case_files

    image, labels = case_files(dataset_dir, pair.case_id)
    notes = (json.dumps({**pair.provenance, "results": str(results)}, indent=2) + "\n").encode()
    provenance = dataset_dir / "provenance" / f"{pair.case_id}.json"
    with _locked(dataset_dir):
        for path, data in ((image, pair.image), (labels, pair.labels), (provenance, notes)):
            storage.write_atomic(path, data)
        _count_cases(dataset_dir)
