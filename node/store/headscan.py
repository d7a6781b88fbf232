"""A quick read of the few header values the receiver needs before it acknowledges an
instance, straight from the encoded bytes.

pydicom builds a whole `Dataset` and converts every value it is asked for; on each
C-STORE that costs more than the rest of the receiver together (``bench/ingest.py``).
This walks the top-level elements once, checks every element's length against the bytes
that arrived (items of sequences too), and decodes only the values the index needs.

It answers only for the plain case: a Part 10 byte string in Implicit or Explicit VR
Little Endian, a classic (single-frame-group) image or non-image, uncompressed pixel
data, strictly ascending tags, ASCII values in their strict forms. Anything else (Enhanced
MR, another transfer syntax, a value pydicom would have to interpret, a structure it
might read differently) returns None, and the caller reads the header with pydicom
(`node.store.ingest.describe`), which gives the verdict and the error message. So both
ways give the same answer for every instance this one accepts; ``tests/test_headscan.py``
checks that on real and broken instances.
"""

from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
UNDEFINED = 0xFFFFFFFF
MAX_DEPTH = 12  # nested sequences deeper than this: leave it to pydicom

# Explicit VR: these VRs have 2 reserved bytes and a 4-byte length (PS3.5 7.1.2).
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
_SHORT_VRS = frozenset(b"AE AS AT CS DA DS DT FL FD IS LO LT PN SH SL SS ST TM UI UL US".split())

_TAG = struct.Struct("<HH")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_IMPLICIT_HEADER = struct.Struct("<HHI")
# An element's first 8 bytes as (group, element, VR, length): in implicit VR the VR is
# empty and the length 4 bytes; in explicit VR the length is the short form's.
_IMPLICIT_HEAD = struct.Struct("<HH0sI")
_EXPLICIT_HEAD = struct.Struct("<HH2sH")

ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
PIXEL_DATA = 0x7FE00010

# The values wanted, by tag, with the VR pydicom would read them as.
WANTED: dict[int, bytes] = {
    0x00080005: b"CS",  # SpecificCharacterSet
    0x00080008: b"CS",  # ImageType
    0x00080016: b"UI",  # SOPClassUID
    0x00080018: b"UI",  # SOPInstanceUID
    0x00080060: b"CS",  # Modality
    0x0008103E: b"LO",  # SeriesDescription
    0x00180020: b"CS",  # ScanningSequence
    0x00180082: b"DS",  # InversionTime
    0x0020000D: b"UI",  # StudyInstanceUID
    0x0020000E: b"UI",  # SeriesInstanceUID
    0x00200011: b"IS",  # SeriesNumber
    0x00200012: b"IS",  # AcquisitionNumber
    0x00200013: b"IS",  # InstanceNumber
    0x00200032: b"DS",  # ImagePositionPatient
    0x00201002: b"IS",  # ImagesInAcquisition
    0x00280002: b"US",  # SamplesPerPixel
    0x00280008: b"IS",  # NumberOfFrames
    0x00280010: b"US",  # Rows
    0x00280011: b"US",  # Columns
    0x00280100: b"US",  # BitsAllocated
}
# Enhanced objects keep positions and timings per frame, and InversionTimes (FD) takes
# precedence over InversionTime where present: pydicom reads those.
_DEFER = (0x00189079, 0x52009229, 0x52009230)
_FLOAT_PIXELS = (0x7FE00008, 0x7FE00009)
_NOT_PLAIN = frozenset(_DEFER + _FLOAT_PIXELS)

_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_IS = re.compile(r" *[+-]?[0-9]+ *")
_DS = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")
_PRINTABLE = re.compile(rb"[\x20-\x7e]*")


class Unsure(Exception):
    """Not the plain case: read the header with pydicom instead."""


@dataclass(frozen=True)
class QuickHeader:
    """The values `describe` needs, as pydicom would have given them."""

    transfer_syntax: str
    sop_class_uid: str
    sop_uid: str
    study_uid: str
    series_uid: str
    modality: str
    series_description: str
    image_type: str
    scanning_sequence: str
    series_number: int | None
    instance_number: int | None
    images_in_acquisition: int | None
    acquisition_number: int | None
    position: str | None  # ImagePositionPatient as `node.store.ingest` keys it
    inversion_time: float | None
    header_end: int  # where the pixel data element starts (or the end of the data)


def quick_header(data: bytes) -> QuickHeader | None:
    """The header values of a plain instance, or None to read it with pydicom."""
    try:
        return _quick_header(data)
    except (Unsure, struct.error, UnicodeDecodeError):
        return None


def _quick_header(data: bytes) -> QuickHeader:
    if data[128:132] != b"DICM":
        raise Unsure
    start, syntax = _file_meta(data)
    explicit = {EXPLICIT_LE: True, IMPLICIT_LE: False}.get(syntax)
    if explicit is None:
        raise Unsure
    raw, header_end, pixel = _top_level(data, start, explicit)
    _check_pixels(data, raw, pixel, explicit)
    charset = _cs(raw.get(0x00080005))
    if charset not in ("", "ISO_IR 6", "ISO_IR 100", "ISO_IR 192"):
        raise Unsure  # ASCII reads the same in these; other sets may not
    return QuickHeader(
        transfer_syntax=syntax,
        sop_class_uid=_uid(raw.get(0x00080016)),
        sop_uid=_uid(raw.get(0x00080018)),
        study_uid=_uid(raw.get(0x0020000D)),
        series_uid=_uid(raw.get(0x0020000E)),
        modality=_cs(raw.get(0x00080060))[:16],
        series_description=_lo(raw.get(0x0008103E))[:64],
        image_type=_cs(raw.get(0x00080008))[:256],
        scanning_sequence=_cs(raw.get(0x00180020))[:64],
        series_number=_is(raw.get(0x00200011)),
        instance_number=_is(raw.get(0x00200013)),
        images_in_acquisition=_is(raw.get(0x00201002)),
        acquisition_number=_is(raw.get(0x00200012)),
        position=_position(raw.get(0x00200032)),
        inversion_time=_inversion_time(raw.get(0x00180082)),
        header_end=header_end,
    )


def _file_meta(data: bytes) -> tuple[int, str]:
    """(where the data set starts, TransferSyntaxUID) from the group 0002 elements."""
    pos, syntax, declared_end = 132, None, None
    while pos + 8 <= len(data):
        group, element = _TAG.unpack_from(data, pos)
        if group != 0x0002:
            break
        vr = data[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            length, value_at = _U32.unpack_from(data, pos + 8)[0], pos + 12
        elif vr in _SHORT_VRS:
            length, value_at = _U16.unpack_from(data, pos + 6)[0], pos + 8
        else:
            raise Unsure
        if length == UNDEFINED or value_at + length > len(data):
            raise Unsure
        value = data[value_at : value_at + length]
        if element == 0x0000:
            declared_end = value_at + length + _U32.unpack(value)[0]
        elif element == 0x0010:
            syntax = value.rstrip(b"\x00 ").decode("ascii")
        pos = value_at + length
    if syntax is None or (declared_end is not None and declared_end != pos):
        raise Unsure
    return pos, syntax


def _top_level(
    data: bytes, pos: int, explicit: bool
) -> tuple[dict[int, tuple[bytes, bytes]], int, int | None]:
    """The wanted (VR, value) pairs, where the header ends, and the pixel data offset."""
    raw: dict[int, tuple[bytes, bytes]] = {}
    last = -1
    end = len(data)
    # The hot loop of every C-STORE: tag, VR and short length in one unpack, no calls.
    head = _EXPLICIT_HEAD if explicit else _IMPLICIT_HEAD
    while pos < end:
        if pos + 8 > end:
            raise Unsure
        group, element, vr, length = head.unpack_from(data, pos)
        tag = group << 16 | element
        if tag <= last or group == 0x0002 or tag in _NOT_PLAIN:
            raise Unsure  # out of order, a second meta group, float pixels, enhanced
        if tag == PIXEL_DATA:
            return raw, pos, pos
        last = tag
        if not explicit:
            vr = WANTED.get(tag, b"SQ" if length == UNDEFINED else b"??")
            value_at = pos + 8
        elif vr in _SHORT_VRS:
            value_at = pos + 8
        elif vr in _LONG_VRS:
            if pos + 12 > end:
                raise Unsure
            length, value_at = _U32.unpack_from(data, pos + 8)[0], pos + 12
        else:
            raise Unsure  # not a VR: perhaps implicit VR after all, which pydicom guesses
        if length == UNDEFINED:
            if vr != b"SQ":
                raise Unsure
            pos = _items(data, value_at, None, explicit, 1)
            continue
        if value_at + length > end:
            raise Unsure  # cut off: pydicom says so
        if vr == b"SQ":
            _items(data, value_at, value_at + length, explicit, 1)
        elif tag in WANTED:
            if vr != WANTED[tag]:
                raise Unsure
            raw[tag] = (vr, data[value_at : value_at + length])
        pos = value_at + length
    return raw, end, None


def _element(data: bytes, pos: int, explicit: bool, tag: int) -> tuple[bytes, int, int]:
    """(VR, value length, value offset) of the element at ``pos``."""
    if explicit:
        vr = data[pos + 4 : pos + 6]
        if vr in _SHORT_VRS:
            return vr, _U16.unpack_from(data, pos + 6)[0], pos + 8
        if vr in _LONG_VRS:
            if pos + 12 > len(data):
                raise Unsure
            return vr, _U32.unpack_from(data, pos + 8)[0], pos + 12
        raise Unsure  # not a VR: perhaps implicit VR after all, which pydicom guesses
    _, _, length = _IMPLICIT_HEADER.unpack_from(data, pos)
    vr = WANTED.get(tag, b"SQ" if length == UNDEFINED else b"??")
    return vr, length, pos + 8


def _items(data: bytes, pos: int, end: int | None, explicit: bool, depth: int) -> int:
    """Walk a sequence's items from ``pos`` up to ``end`` (a defined length) or, when
    ``end`` is None, up to the sequence delimiter; return the offset after them."""
    if depth >= MAX_DEPTH:
        raise Unsure
    limit = len(data) if end is None else end
    while end is None or pos < end:
        if pos + 8 > limit:
            raise Unsure
        group, element = _TAG.unpack_from(data, pos)
        length = _U32.unpack_from(data, pos + 4)[0]
        tag = group << 16 | element
        if end is None and tag == SEQUENCE_END:
            return pos + 8
        if tag != ITEM:
            raise Unsure
        if length == UNDEFINED:
            pos = _undefined_item(data, pos + 8, explicit, depth + 1)
        else:
            if pos + 8 + length > limit:
                raise Unsure
            _dataset(data, pos + 8, pos + 8 + length, explicit, depth + 1)
            pos += 8 + length
    if pos != end:
        raise Unsure
    return pos


def _undefined_item(data: bytes, pos: int, explicit: bool, depth: int) -> int:
    """Walk an item's elements up to the item delimiter; return the offset after it."""
    if depth >= MAX_DEPTH:
        raise Unsure
    while True:
        if pos + 8 > len(data):
            raise Unsure
        group, element = _TAG.unpack_from(data, pos)
        if (group << 16 | element) == ITEM_END:
            return pos + 8
        pos = _nested_element(data, pos, explicit, depth)


def _dataset(data: bytes, pos: int, end: int, explicit: bool, depth: int) -> None:
    """Walk the elements of an item of defined length."""
    if depth >= MAX_DEPTH:
        raise Unsure
    while pos < end:
        if pos + 8 > end:
            raise Unsure
        pos = _nested_element(data, pos, explicit, depth)
        if pos > end:
            raise Unsure


def _nested_element(data: bytes, pos: int, explicit: bool, depth: int) -> int:
    group, element = _TAG.unpack_from(data, pos)
    tag = group << 16 | element
    if group == 0xFFFE:
        raise Unsure  # a delimiter where an element belongs
    vr, length, value_at = _element(data, pos, explicit, tag)
    if length == UNDEFINED:
        if vr != b"SQ":
            raise Unsure
        return _items(data, value_at, None, explicit, depth + 1)
    if value_at + length > len(data):
        raise Unsure
    if vr == b"SQ":
        _items(data, value_at, value_at + length, explicit, depth + 1)
    return value_at + length


def _check_pixels(
    data: bytes, raw: dict[int, tuple[bytes, bytes]], pixel: int | None, explicit: bool
) -> None:
    """Whole, even-length native pixel data that holds the image (else: pydicom says why)."""
    if 0x00280010 not in raw:
        if pixel is None:
            return  # not an image
        raise Unsure  # pixel data without Rows: unusual
    if pixel is None or pixel + 12 > len(data):
        raise Unsure
    if explicit:
        if data[pixel + 4 : pixel + 6] not in (b"OB", b"OW"):
            raise Unsure
        length, available = _U32.unpack_from(data, pixel + 8)[0], len(data) - pixel - 12
    else:  # tag, 4-byte length
        length, available = _U32.unpack_from(data, pixel + 4)[0], len(data) - pixel - 8
    if length == UNDEFINED or length % 2 or available < length:
        raise Unsure
    rows, columns, bits = (_us(raw.get(t)) for t in (0x00280010, 0x00280011, 0x00280100))
    samples = _us(raw[0x00280002]) if 0x00280002 in raw else 1
    frames = _is(raw[0x00280008]) if 0x00280008 in raw else 1
    if None in (rows, columns, bits, samples) or frames is None or frames < 0:
        raise Unsure
    expected = (rows * columns * samples * (frames or 1) * bits + 7) // 8  # type: ignore[operator]
    if length < expected:
        raise Unsure


def _text(item: tuple[bytes, bytes] | None) -> str:
    if item is None:
        return ""
    value = item[1]
    if not _PRINTABLE.fullmatch(value.rstrip(b"\x00")):
        raise Unsure  # not plain ASCII: the character set decides
    return value.decode("ascii")


def _cs(item: tuple[bytes, bytes] | None) -> str:
    return _text(item).rstrip(" \x00")  # pydicom: trailing padding off, then split


def _lo(item: tuple[bytes, bytes] | None) -> str:
    return "\\".join(v.rstrip("\x00 ") for v in _text(item).split("\\"))


def _uid(item: tuple[bytes, bytes] | None) -> str:
    text = _text(item).rstrip(" \x00")
    if len(text) > 64 or not _UID.fullmatch(text):
        raise Unsure  # missing or invalid: pydicom's reading gives the reason
    return text


def _is(item: tuple[bytes, bytes] | None) -> int | None:
    text = _text(item).rstrip(" \x00")
    if not text:
        return None
    if not _IS.fullmatch(text):
        raise Unsure
    number = int(text)
    if not -(2**31) <= number <= 2**31 - 1:
        raise Unsure
    return number


def _us(item: tuple[bytes, bytes] | None) -> int | None:
    if item is None or len(item[1]) != 2:
        return None
    return int(_U16.unpack(item[1])[0])


def _ds_values(item: tuple[bytes, bytes] | None) -> list[float] | None:
    text = _text(item).rstrip(" \x00")
    if not text:
        return None
    values = text.split("\\")
    if not all(_DS.fullmatch(v) for v in values):
        raise Unsure
    numbers = [float(v) for v in values]
    if not all(math.isfinite(v) for v in numbers):
        raise Unsure  # pydicom's DS may refuse what Python's float reads as inf
    return numbers


def _position(item: tuple[bytes, bytes] | None) -> str | None:
    if item is None:
        return None
    values = _ds_values(item)
    if values is None:
        raise Unsure  # empty: pydicom's reading decides
    if len(values) < 2:
        return None  # one value is not a position
    return "\\".join(f"{v:.1f}" for v in values)


def _inversion_time(item: tuple[bytes, bytes] | None) -> float | None:
    values = _ds_values(item)
    return values[0] if values else None
