"""The receiver's quick header read (`node.store.headscan`) against pydicom's: on real
phantom instances, in both little-endian transfer syntaxes, with sequences, and on
thousands of seeded mutations of them. Whatever the quick read accepts, pydicom must read
to the same index values; what it cannot vouch for goes to pydicom."""

from __future__ import annotations

import io
import random
from dataclasses import fields
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from node.store.headscan import quick_header
from node.store.ingest import describe, describe_with_pydicom
from node.store.records import InstanceInfo

SEED = 20261124
# pydicom warns about every odd value a mutation makes; what matters is its verdict
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def as_dict(info: InstanceInfo) -> dict[str, Any]:
    values = {f.name: getattr(info, f.name) for f in fields(info)}
    values["patient"], values["study"] = dict(info.patient), dict(info.study)
    return values


def encode(ds: Dataset, syntax: str | None = None) -> bytes:
    if syntax is not None:
        ds.file_meta.TransferSyntaxUID = syntax
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.fixture(scope="module")
def classic(psir_classic) -> list[bytes]:
    return [p.read_bytes() for p in sorted(Path(psir_classic.out_dir / "dicom").rglob("*.dcm"))]


def with_sequences(data: bytes) -> Dataset:
    """The instance with a nested sequence before the wanted values, and a private one."""
    ds = pydicom.dcmread(io.BytesIO(data))
    ref = Dataset()
    ref.ReferencedSOPClassUID = ds.SOPClassUID
    ref.ReferencedSOPInstanceUID = "1.2.3.4"
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "T-32000", "SRT", "Heart"
    ref.PurposeOfReferenceCodeSequence = Sequence([code])
    ds.ReferencedImageSequence = Sequence([ref, Dataset()])
    ds.add_new(0x00291010, "OB", b"\x01\x02")
    ds.PatientName = "Phantom^Seven"
    ds.StudyDescription = "LGE  "
    return ds


def test_quick_read_equals_pydicom_on_real_instances(classic, magnitude_enhanced) -> None:
    variants: list[tuple[str, bytes]] = [("explicit", d) for d in classic]
    variants += [("implicit", encode(pydicom.dcmread(io.BytesIO(d)), ImplicitVRLittleEndian))
                 for d in classic[:3]]  # fmt: skip
    variants += [("sequences", encode(with_sequences(d))) for d in classic[:3]]
    variants += [("implicit+sequences", encode(with_sequences(d), ImplicitVRLittleEndian))
                 for d in classic[:3]]  # fmt: skip
    for how, data in variants:
        assert quick_header(data) is not None, f"{how}: the plain case must be read quickly"
        assert as_dict(describe(data)) == as_dict(describe_with_pydicom(data)), how
    info = describe(variants[-1][1])
    assert info.patient["PatientName"] == "Phantom^Seven"  # read lazily, from the header
    assert info.study["StudyDescription"] == "LGE"
    assert info.frames[0][0] is not None and info.frames[0][1] is not None

    # Left to pydicom: Enhanced MR, big endian, text in another character set.
    enhanced = next(Path(magnitude_enhanced.out_dir / "dicom").rglob("*.dcm")).read_bytes()
    big = classic[0].replace(ExplicitVRLittleEndian.encode() + b"\x00",
                             ExplicitVRBigEndian.encode() + b"\x00", 1)  # fmt: skip
    ds = pydicom.dcmread(io.BytesIO(classic[0]))
    ds.SpecificCharacterSet, ds.SeriesDescription = "ISO_IR 100", "LGE Kontrastmittel spät"
    latin = encode(ds)
    for data in (enhanced, big, latin):
        assert quick_header(data) is None
    assert describe(latin).series_description == "LGE Kontrastmittel spät"
    assert len(describe(enhanced).frames) > 1


def _mutate(rng: random.Random, data: bytes, header_end: int) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(5)
        at = rng.randrange(128, header_end)
        if op == 0:  # flip bytes in the header
            for _ in range(rng.randint(1, 4)):
                b[rng.randrange(128, header_end)] = rng.randrange(256)
        elif op == 1:  # cut off
            del b[rng.randrange(128, len(b)) :]
        elif op == 2:  # a length field lies
            b[at : at + 2] = rng.choice([0, 1, 0xFFFF, 0x7FFF]).to_bytes(2, "little")
        elif op == 3:  # junk inserted
            b[at:at] = rng.randbytes(rng.randint(1, 16))
        else:  # a value's characters changed
            b[at] = rng.choice(b" \\.\x00-+eE9aZ\x1b\xe9")
        header_end = min(header_end, len(b))
        if header_end <= 129:
            break
    return bytes(b)


def test_quick_read_never_accepts_what_pydicom_refuses_or_reads_otherwise(classic) -> None:
    """Seeded mutations of real instances: when the quick read accepts one, pydicom must
    accept it too and index the same values; when pydicom refuses, so does `describe`."""
    rng = random.Random(SEED)
    seeds = [classic[0], encode(with_sequences(classic[1]), ImplicitVRLittleEndian),
             encode(with_sequences(classic[2]))]  # fmt: skip
    quick_accepted = refused = 0
    for i in range(3000):
        data = seeds[i % len(seeds)]
        head = quick_header(data)
        assert head is not None
        mutated = _mutate(rng, data, head.header_end + 12)
        try:
            slow: InstanceInfo | None = describe_with_pydicom(mutated)
        except Exception:
            slow = None
        if quick_header(mutated) is None:
            continue
        quick_accepted += 1
        assert slow is not None, f"case {i}: the quick read accepted what pydicom refuses"
        assert as_dict(describe(mutated)) == as_dict(slow), f"case {i}"
    for data in seeds:  # an instance cut off in its pixel data is never vouched for
        head = quick_header(data)
        assert head is not None
        cuts = range(len(data) - 1, head.header_end, -397)
        refused += sum(quick_header(data[:cut]) is None for cut in cuts)
        assert refused and all(quick_header(data[:cut]) is None for cut in cuts)
    print(f"{quick_accepted} of 3000 mutations read quickly, all as pydicom reads them")
    assert quick_accepted > 300  # the mutations exercised the quick read, not only refusals


def test_receiver_file_meta_is_pynetdicoms() -> None:
    """The file meta the receiver puts together (`part10`) is byte for byte what
    pynetdicom's ``encoded_dataset`` writes, odd and even UID lengths alike; a UID that is
    not a plain one goes the pynetdicom way."""
    from types import SimpleNamespace

    from pynetdicom.events import Event

    from node.dimse.store_scp import part10

    body = b"\x08\x00\x16\x00UI\x02\x001\x00"
    for sop_class in ("1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.4.1"):
        for sop in ("1.2.3", "1.2.34", "1.2.826.0.1.3680043.8.498." + "9" * 37, "1.2.3 x"):
            for syntax in ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2"):
                request = SimpleNamespace(
                    AffectedSOPClassUID=sop_class, AffectedSOPInstanceUID=sop,
                    DataSet=io.BytesIO(body),
                )  # fmt: skip
                ev = Event.__new__(Event)
                ev.request, ev.context = request, SimpleNamespace(transfer_syntax=syntax)
                expected = Event.encoded_dataset(ev, include_meta=True)
                assert part10(ev) == expected, (sop_class, sop, syntax)
                assert pydicom.dcmread(io.BytesIO(part10(ev))).file_meta.TransferSyntaxUID == syntax
