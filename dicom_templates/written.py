"""What an output builder wrote: a light record (no imaging imports), so the node's
store can index and send results without loading the builders."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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

    @classmethod
    def of(cls, ds: Any, path: str, size: int) -> WrittenObject:
        """The record of dataset ``ds`` (a pydicom Dataset with file meta) saved at ``path``."""
        number = ds.get("SeriesNumber")
        instance = ds.get("InstanceNumber")
        return cls(
            path=path, sop_class_uid=str(ds.SOPClassUID), sop_uid=str(ds.SOPInstanceUID),
            series_uid=str(ds.SeriesInstanceUID), modality=str(ds.get("Modality", "")),
            description=str(ds.get("SeriesDescription", "")),
            series_number=int(number) if number is not None else None,
            instance_number=int(instance) if instance is not None else None,
            transfer_syntax=str(ds.file_meta.TransferSyntaxUID), size=size,
        )  # fmt: skip
