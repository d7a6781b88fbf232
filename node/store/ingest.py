"""Indexes received instances in batches, off the association threads.

The receiver answers Success once the instance file is on disk (atomic rename, fsync by
default) and a line naming it and its sender is in the ingest journal; this thread then
indexes what arrived, many instances per transaction. The per-instance database cost
leaves the C-STORE round trip, which is what limits ingest (see ``bench/ingest.py``).

If the node dies in between, nothing is lost: at start-up every instance file that is
not in the index is indexed from disk (`node.store.recovery`), with its sender
taken from the journal.
"""

from __future__ import annotations

import io
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from node.events import Event, notify
from node.logs import event
from node.store.headscan import quick_header
from node.store.records import InstanceInfo, Received, StoreOutcome
from node.store.repository import Repository
from node.store.storage import Storage, check_uid
from pipeline.instance import (
    frame_value,
    inversion_time,
    listed,
    per_frame_groups,
    read_header,
)

log = logging.getLogger("node.ingest")


def describe(data: bytes, affected_sop_uid: str | None = None) -> InstanceInfo:
    """What the index needs from an encoded instance; raises ValueError (`InvalidUidError`
    for a UID that is not one) when the instance is unusable, before it is acknowledged.

    A plain classic instance is read by `node.store.headscan` (a fraction of pydicom's
    cost on each C-STORE); anything else, and every refusal, by pydicom."""
    quick = quick_header(data)
    if quick is not None and (
        affected_sop_uid is None or affected_sop_uid.strip() == quick.sop_uid
    ):
        header = Header(data[: quick.header_end])
        return InstanceInfo(
            study_uid=quick.study_uid,
            series_uid=quick.series_uid,
            sop_uid=quick.sop_uid,
            sop_class_uid=quick.sop_class_uid,
            transfer_syntax=quick.transfer_syntax,
            modality=quick.modality,
            series_description=quick.series_description,
            series_number=quick.series_number,
            instance_number=quick.instance_number,
            image_type=quick.image_type,
            scanning_sequence=quick.scanning_sequence,
            frames=[(quick.position, quick.inversion_time)],
            images_in_acquisition=quick.images_in_acquisition,
            acquisition_number=quick.acquisition_number,
            patient=HeaderText(header, PATIENT_KEYWORDS),
            study=HeaderText(header, STUDY_KEYWORDS),
        )
    return describe_with_pydicom(data, affected_sop_uid)


def describe_with_pydicom(data: bytes, affected_sop_uid: str | None = None) -> InstanceInfo:
    """`describe` for any instance: pydicom reads the header and judges it."""
    ds = read_header(data)
    sop_uid = check_uid(ds.get("SOPInstanceUID"), "SOPInstanceUID")
    if affected_sop_uid is not None and affected_sop_uid.strip() != sop_uid:
        raise ValueError(
            f"the request's Affected SOP Instance UID {affected_sop_uid!r} differs from the "
            f"dataset's SOPInstanceUID {sop_uid!r}"
        )
    header = Header(ds)
    return InstanceInfo(
        study_uid=check_uid(ds.get("StudyInstanceUID"), "StudyInstanceUID"),
        series_uid=check_uid(ds.get("SeriesInstanceUID"), "SeriesInstanceUID"),
        sop_uid=sop_uid,
        sop_class_uid=check_uid(ds.get("SOPClassUID"), "SOPClassUID"),
        transfer_syntax=str(ds.file_meta.get("TransferSyntaxUID", "")),
        modality=_text(ds, "Modality")[:16],
        series_description=_text(ds, "SeriesDescription")[:64],
        series_number=_int(ds, "SeriesNumber"),
        instance_number=_int(ds, "InstanceNumber"),
        image_type=_text(ds, "ImageType")[:256],
        scanning_sequence=_text(ds, "ScanningSequence")[:64],
        frames=_frames(ds),
        images_in_acquisition=_int(ds, "ImagesInAcquisition"),
        acquisition_number=_int(ds, "AcquisitionNumber"),
        patient=HeaderText(header, PATIENT_KEYWORDS),
        study=HeaderText(header, STUDY_KEYWORDS),
    )


PATIENT_KEYWORDS = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex")
STUDY_KEYWORDS = ("AccessionNumber", "StudyDate", "StudyTime", "StudyDescription", "StudyID")


class Header:
    """An instance's header, parsed by pydicom when first needed: given parsed, or as the
    encoded bytes before its pixel data (what `node.store.headscan` leaves unparsed)."""

    def __init__(self, source: Dataset | bytes) -> None:
        self._source: Dataset | bytes | None = source
        self._lock = threading.Lock()

    def dataset(self) -> Dataset | None:
        """The parsed header; None if it cannot be parsed (its text then reads as empty)."""
        with self._lock:
            if isinstance(self._source, bytes):
                try:
                    self._source = pydicom.dcmread(
                        io.BytesIO(self._source), stop_before_pixels=True
                    )
                except Exception:
                    self._source = None
            return self._source


class HeaderText(Mapping[str, str]):
    """Text attributes of a header, read when first asked for: the patient and study
    fields matter only when a study is first indexed, so the C-STORE round trip does not
    pay for them. A value pydicom cannot convert reads as empty (it is not needed to
    store or process the instance)."""

    def __init__(self, header: Header, keywords: tuple[str, ...]) -> None:
        self._header: Header | None = header
        self._keywords = keywords
        self._values: dict[str, str] = {}

    def _read(self) -> dict[str, str]:
        if self._header is not None:
            ds = self._header.dataset()
            for k in self._keywords:
                try:
                    self._values[k] = _text(ds, k) if ds is not None else ""
                except Exception:  # a value in no valid form: index it as empty
                    self._values[k] = ""
            self._header = None  # the header can go once read
        return self._values

    def __getitem__(self, key: str) -> str:
        return self._read()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keywords)

    def __len__(self) -> int:
        return len(self._keywords)


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    if value is None:
        return ""
    values = listed(value)
    return "\\".join(values) if values is not None else str(value)


IS_RANGE = 2**31 - 1  # an Integer String (IS) holds -2^31 .. 2^31-1 (PS3.5 6.2)


def _int(ds: Dataset, keyword: str) -> int | None:
    """An IS value, or None when absent or not a valid IS (the instance is kept as sent;
    its index row just lacks the number, which nothing depends on: slices are ordered
    by geometry)."""
    try:
        value = ds.get(keyword)
        number = int(value) if value not in (None, "") else None
    except (TypeError, ValueError, OverflowError):
        return None
    return number if number is None or -IS_RANGE - 1 <= number <= IS_RANGE else None


def _pos_key(ipp: Any) -> str | None:
    try:
        return "\\".join(f"{float(v):.1f}" for v in ipp)
    except (TypeError, ValueError):
        return None


def _frames(ds: Dataset) -> list[tuple[str | None, float | None]]:
    """(slice position, inversion time) per frame, for classic and enhanced MR: tells a TI
    scout (many inversion times per position) from an LGE stack (one)."""
    return [
        (
            _pos_key(frame_value(ds, group, "PlanePositionSequence", "ImagePositionPatient")),
            inversion_time(ds, group),
        )
        for group in per_frame_groups(ds)
    ]


class Journal:
    """Append-only lines ``{"path", "ae", "address", "forced"}``, emptied when indexed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        self._fh = open(path, "a", encoding="utf-8")  # noqa: SIM115 - held for the node's life

    def append(self, r: Received) -> None:
        line = json.dumps(
            {"path": r.path, "ae": r.calling_ae, "address": r.address, "forced": r.forced}
        )
        with self.lock:
            self._fh.write(line + "\n")
            self._fh.flush()  # in the OS after a crash of the process; not fsync'ed

    def truncate_if(self, idle: Callable[[], bool]) -> None:
        with self.lock:
            if idle():
                self._fh.truncate(0)
                self._fh.seek(0)

    def close(self) -> None:
        with self.lock:
            self._fh.close()

    @staticmethod
    def read(path: Path) -> dict[str, dict]:
        """Sender per instance path, from a journal a crash left behind."""
        senders: dict[str, dict] = {}
        if not path.exists():
            return senders
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                entry = json.loads(line)
                senders[entry["path"]] = entry
            except (ValueError, KeyError, TypeError):
                continue  # a line cut by the crash
        return senders


class Indexer(threading.Thread):
    """Drains the queue into the index, up to ``batch`` instances per transaction."""

    def __init__(
        self,
        index: Repository,
        journal: Journal,
        on_indexed: Callable[[Received, StoreOutcome | ValueError], None],
        batch: int = 500,
        storage: Storage | None = None,
        linger_s: float = 1.0,
        gap_s: float = 0.05,
        on_complete: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(name="indexer", daemon=True)
        self.index = index
        self.storage = storage  # where an instance the index refuses is quarantined
        self.journal = journal
        self.on_indexed = on_indexed
        self.batch = batch
        self.on_complete = on_complete
        self.linger_s = linger_s  # the longest an instance waits to be indexed
        self.gap_s = gap_s  # a pause this long ends a burst: index at once
        self.queue: queue.Queue[Received | None] = queue.Queue()
        self.pending = 0  # submitted, not yet committed
        self._pending_lock = threading.Lock()
        self.idle = threading.Event()
        self.idle.set()

    def submit(self, r: Received) -> None:
        self.journal.append(r)
        with self._pending_lock:
            self.pending += 1
            self.idle.clear()
        self.queue.put(r)

    def stop(self) -> None:
        self.queue.put(None)
        self.join(timeout=60)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything submitted is indexed."""
        return self.idle.wait(timeout)

    def run(self) -> None:
        stopping = False
        while not stopping:
            first = self.queue.get()
            if first is None:
                break
            items = [first]
            # While instances keep arriving, gather them (up to ``linger_s``) and index
            # them together: the index work then competes with the receiving threads
            # for the interpreter once per batch, not once per instance.
            until = time.monotonic() + self.linger_s
            while len(items) < self.batch:
                try:
                    nxt = self.queue.get(timeout=min(self.gap_s, until - time.monotonic()))
                except (queue.Empty, ValueError):  # ValueError: the linger has passed
                    break
                if nxt is None:
                    stopping = True
                    break
                items.append(nxt)
            self._commit(items)
        self.journal.close()

    def _commit(self, items: list[Received]) -> None:
        delay = 0.5
        while True:
            try:
                outcomes = self.index.record_batch(items)
                break
            except Exception as exc:  # database unavailable: files are safe; try again
                event(
                    log, "index_failed", logging.ERROR, instances=len(items),
                    error=f"{type(exc).__name__}: {exc}", retry_in_s=delay,
                )  # fmt: skip
                time.sleep(delay)
                delay = min(delay * 2, 30.0)
        for r, outcome in zip(items, outcomes, strict=True):
            if isinstance(outcome, ValueError):
                # A conflicting object (a series UID reused by another study...) or a row
                # the database refuses: not part of any series here. It was acknowledged,
                # so its file is set aside for the operator, never deleted.
                where = self.storage.quarantine(Path(r.path)) if self.storage else r.path
                notify(
                    self.index, Event.INSTANCE_NOT_INDEXED, f"{outcome}; file kept in {where}",
                    peer_ae=r.calling_ae, address=r.address, series_uid=r.info.series_uid,
                    sop=r.info.sop_uid,
                )  # fmt: skip
            self.on_indexed(r, outcome)
        with self._pending_lock:
            self.pending -= len(items)
            done = self.pending == 0
        if done:
            self.journal.truncate_if(lambda: self.pending == 0)
            self.idle.set()
        if self.on_complete is not None and any(
            isinstance(o, StoreOutcome) and o.complete for o in outcomes
        ):
            self.on_complete()  # a series is whole: judge it now, not at stable_age
