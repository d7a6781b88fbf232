"""Reading one DICOM instance: its header from encoded bytes, whether its pixel data is
whole, and attributes that Enhanced MR keeps in functional groups.

One module for what both the node's ingest (`node.store.ingest`, on each C-STORE) and the
series loader (`pipeline.series`) need to know about an instance, so the two never judge
the same file differently.
"""

from __future__ import annotations

import io
from typing import Any, Literal

import pydicom
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_PIXEL_TAGS = (b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10")  # (7FE0,0010) little / big endian


def listed(value: Any) -> list[str] | None:
    """The values of a multi-valued element (MultiValue, list or tuple); None for one value."""
    if isinstance(value, list | tuple | MultiValue):
        return [str(v) for v in value]
    return None


def read_header(data: bytes) -> Dataset:
    """The dataset without pixel data; raises ValueError when the pixel data is cut off or
    shorter than the image it declares (pydicom itself reads short values silently)."""
    fp = io.BytesIO(data)
    ds = pydicom.dcmread(fp, stop_before_pixels=True)
    # pydicom stops with the file positioned at the Pixel Data tag, if there is one.
    at = fp.tell()
    check_pixel_data(data, at if data[at : at + 4] in _PIXEL_TAGS else None, ds)
    return ds


def _pixel_element(data: bytes, offset: int, ds: Dataset) -> tuple[int, int] | None:
    """(declared length, bytes after the element header) of Pixel Data at ``offset``."""
    tsyntax = ds.file_meta.get("TransferSyntaxUID")
    if tsyntax is None or offset + 8 > len(data):
        return None
    order: Literal["big", "little"] = "big" if tsyntax == ExplicitVRBigEndian else "little"
    if tsyntax == ImplicitVRLittleEndian:  # tag, 4-byte length
        return int.from_bytes(data[offset + 4 : offset + 8], order), len(data) - offset - 8
    if offset + 12 > len(data):
        return None
    # explicit VR OB/OW: tag, VR, 2 reserved bytes, 4-byte length
    return int.from_bytes(data[offset + 8 : offset + 12], order), len(data) - offset - 12


def check_pixel_data(data: bytes, offset: int | None, ds: Dataset) -> None:
    """Raise ValueError for an image without pixel data, or pixel data cut off in transit,
    of odd length, or shorter than the image."""
    if "Rows" not in ds:
        return  # not an image (SR, PDF, raw data ...)
    if offset is None:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            return
        raise ValueError("an image (Rows, Columns) with no Pixel Data")
    if ds.file_meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
        full = pydicom.dcmread(io.BytesIO(data))  # deflated: offsets are not in the bytes
        value = full.get_item("PixelData")  # raw: its declared length is kept
        available = len(value.value or b"") if value is not None else 0
        length = int(getattr(value, "length", available))
    else:
        found = _pixel_element(data, offset, ds)
        if found is None:
            raise ValueError("dataset is truncated inside the Pixel Data element header")
        length, available = found
    if length == 0xFFFFFFFF:
        if SEQUENCE_DELIMITER not in data[-64:]:
            raise ValueError("dataset is truncated: encapsulated pixel data has no end marker")
        return
    if length % 2:
        raise ValueError(f"Pixel Data has an odd length ({length} bytes; PS3.5 requires even)")
    if available < length:
        raise ValueError(
            f"dataset is truncated: Pixel Data declares {length} bytes, {available} arrived"
        )
    expected = native_pixel_bytes(ds)
    if expected is not None and length < expected:
        raise ValueError(
            f"pixel data is too short: {length} bytes for {expected} expected from Rows, "
            "Columns, BitsAllocated and frames"
        )


def native_pixel_bytes(ds: Dataset) -> int | None:
    """Bytes uncompressed pixel data must hold, or None if the header does not say."""
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        bits = int(ds.BitsAllocated)
        n = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * frames
    except (AttributeError, TypeError, ValueError):
        return None
    return (n * bits + 7) // 8


def per_frame_groups(ds: Dataset) -> list[Dataset | None]:
    """One functional group per frame (Enhanced MR), or ``[None]`` for a classic image."""
    groups = ds.get("PerFrameFunctionalGroupsSequence")
    return list(groups) if groups is not None else [None]


def frame_value(ds: Dataset, frame_group: Dataset | None, sequence: str, keyword: str) -> Any:
    """An attribute from the frame's functional group, else the shared group, else the
    top level (where classic images keep it); None when none has it."""
    shared = (ds.get("SharedFunctionalGroupsSequence") or [None])[0]
    for group in (frame_group, shared):
        if group is not None and sequence in group and len(group[sequence].value):
            item = group[sequence][0]
            if keyword in item:
                return item[keyword].value
    return ds.get(keyword)


def inversion_time(ds: Dataset, frame_group: Dataset | None) -> float | None:
    """Inversion time (ms) of a frame: InversionTimes in the MR timing group (Enhanced MR),
    InversionTime at the top level (classic MR)."""
    value = frame_value(ds, frame_group, "MRTimingAndRelatedParametersSequence", "InversionTimes")
    if value is None:
        value = ds.get("InversionTime")
    values = listed(value)
    if values is not None:
        value = values[0] if values else None
    return to_float(value)


def to_float(value: Any) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None
