"""What an output builder wrote: a light record (no imaging imports), so the node's
store can index and send results without loading the builders."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WrittenObject:
    """One DICOM object written (SEG, SR or an overlay), described from the dataset in
    memory, so whoever indexes or sends it need not read the file back."""

    path: str
    sop_class_uid: str
    sop_uid: str
    series_uid: str
    modality: str
    description: str
    series_number: int | None
    instance_number: int | None
    transfer_syntax: str
    size: int
