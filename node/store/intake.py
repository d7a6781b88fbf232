"""Accepting one received instance: the checks, the write and the hand-over to the
indexer that every way in shares (C-STORE in `node.dimse.store_scp`, STOW-RS in
`node.http.dicomweb`), so an instance gets the same verdict however it arrives.

In order: decodable with valid UIDs (`node.store.ingest.describe`), size and frame
limits, the identity policy, free disk, an atomic write under a hashed path, and the
journal line (`Indexer.submit`); only then is the verdict Success.

Identity policy (keep the first, refuse conflicts - never Success-then-drop):
- the same SOP Instance UID with the same content again: Success (a retry is harmless);
- the same SOP Instance UID with other content, or already held in another series:
  0x0111 (duplicate SOP instance) with an ``instance_conflict`` event; the first stays;
- anything claiming to belong to one of the node's own result series: a copy of what the
  node wrote (a PACS routing results back) gets Success and is ignored; anything else is
  refused 0x0124 (not authorized): peers never write into results.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from node.config import Config
from node.dimse.common import Dimse
from node.events import Event, notify
from node.logs import event
from node.metrics import BYTES_RECEIVED, INSTANCES_RECEIVED, REFUSED
from node.store.ingest import describe
from node.store.records import InstanceInfo, Origin, Received
from node.store.repository import OriginCache, Repository
from node.store.storage import InvalidUidError, Storage

log = logging.getLogger("node.intake")


@dataclass(frozen=True)
class Sender:
    """Who sent an instance: the AE title it is recorded under (destination ``sources``,
    query scope ``own``), the network address, and whether it asked for processing
    whatever the selection rules say (``dicom.force_ae_title``)."""

    ae_title: str
    address: str
    forced: bool = False


@dataclass(frozen=True)
class Verdict:
    """What became of one instance: a DIMSE status (PS3.4 C-STORE statuses, which STOW-RS
    reports as Failure Reason too) and, when refused, why."""

    status: int
    reason: str = ""
    info: InstanceInfo | None = None
    stored: bool = False  # written now (False for a copy of our own result, or a refusal)

    @property
    def ok(self) -> bool:
        return self.status == Dimse.SUCCESS


def _dataset_part(encoded: bytes) -> bytes:
    """The data set of a Part 10 byte string, without preamble and file meta (which
    differ with the sender's implementation, not with the content)."""
    if encoded[128:132] != b"DICM":
        return encoded
    group_length = int.from_bytes(encoded[140:144], "little")  # (0002,0000) UL, explicit LE
    return encoded[144 + group_length :]


class Intake:
    def __init__(
        self,
        config: Config,
        storage: Storage,
        repository: Repository,
        submit: Callable[[Received], None],
    ) -> None:
        self.config = config
        self.storage = storage
        self.repository = repository
        self.submit = submit  # hands a stored instance to the indexer
        self._origins = OriginCache()

    def accept(
        self,
        data: bytes,
        sender: Sender,
        affected_sop_uid: str | None = None,
        study_uid: str | None = None,
    ) -> Verdict:
        """Check, write and hand over one Part 10 encoded instance (with file meta);
        ``study_uid``: it must belong to this study (STOW-RS to a study's URL)."""
        try:
            info = describe(data, affected_sop_uid)
        except (InvalidUidError, ValueError) as exc:
            return self.refuse(sender, Dimse.CANNOT_UNDERSTAND, f"unusable instance: {exc}")
        except Exception as exc:  # pydicom raises many types for broken data
            return self.refuse(
                sender, Dimse.CANNOT_UNDERSTAND,
                f"dataset cannot be decoded: {type(exc).__name__}: {exc}",
            )  # fmt: skip
        if study_uid is not None and info.study_uid != study_uid:
            return self.refuse(
                sender, Dimse.IDENTIFIER_MISMATCH,
                f"instance {info.sop_uid} belongs to study {info.study_uid}, not to the "
                f"study {study_uid} it was sent to", info,
            )  # fmt: skip
        limits = self.config.storage
        if len(data) > limits.max_instance_mb * 2**20:
            return self.refuse(
                sender, Dimse.OUT_OF_RESOURCES,
                f"instance of {len(data) / 2**20:.1f} MiB exceeds storage.max_instance_mb "
                f"({limits.max_instance_mb:g})", info,
            )  # fmt: skip
        if len(info.frames) > limits.max_frames:
            return self.refuse(
                sender, Dimse.OUT_OF_RESOURCES,
                f"{len(info.frames)} frames exceed storage.max_frames ({limits.max_frames})",
                info,
            )  # fmt: skip
        path = self.storage.instance_path(info.study_uid, info.series_uid, info.sop_uid)
        verdict = self._identity(info.sop_uid, info.series_uid, path, data)
        if verdict is not None:
            status, reason = verdict
            if status == Dimse.SUCCESS:
                return Verdict(status, info=info)  # a copy of one of our own results
            REFUSED.labels(f"0x{status:04X}").inc()
            notify(
                self.repository, Event.INSTANCE_CONFLICT, reason, peer_ae=sender.ae_title,
                address=sender.address, series_uid=info.series_uid, status=f"0x{status:04X}",
            )  # fmt: skip
            return Verdict(status, reason, info)
        floor = int(limits.min_free_mb * 2**20)
        try:
            free = self.storage.free_bytes()
        except OSError as exc:
            return self.refuse(
                sender, Dimse.OUT_OF_RESOURCES, f"cannot check free space: {exc}", info
            )
        if free - len(data) < floor:
            return self.refuse(
                sender, Dimse.OUT_OF_RESOURCES,
                f"disk space low: {free // 2**20} MiB free, storage.min_free_mb is "
                f"{limits.min_free_mb:g}", info,
            )  # fmt: skip
        try:
            self.storage.write_atomic(path, data)
        except OSError as exc:
            return self.refuse(
                sender, Dimse.OUT_OF_RESOURCES, f"cannot write instance: {exc}", info
            )
        self.submit(
            Received(info, str(path), len(data), sender.ae_title, sender.address,
                     sender.forced, time.time())
        )  # fmt: skip
        INSTANCES_RECEIVED.inc()
        BYTES_RECEIVED.inc(len(data))
        return Verdict(Dimse.SUCCESS, info=info, stored=True)

    def _identity(
        self, sop_uid: str, series_uid: str, path: Path, data: bytes
    ) -> tuple[int, str] | None:
        """None to store as usual, else (status, reason) per the identity policy."""
        if path.exists():  # same study, series and SOP: a retry, or other content
            if _dataset_part(path.read_bytes()) == _dataset_part(data):
                return None
            return Dimse.DUPLICATE_SOP_INSTANCE, (
                f"SOP Instance UID {sop_uid} is already stored with other content; the "
                "first is kept (send corrected images under new UIDs)"
            )
        try:
            known = self.repository.identity(sop_uid, series_uid, self._origins)
        except Exception as exc:  # index unreachable: store, the indexer will judge it
            event(log, "identity_unchecked", logging.WARNING, error=str(exc))
            return None
        if known.series_origin is Origin.RESULT:
            home = Path(known.home_path) if known.home_path else None
            if home and home.is_file() and _dataset_part(home.read_bytes()) == _dataset_part(data):
                return Dimse.SUCCESS, ""
            return Dimse.NOT_AUTHORIZED, (
                f"series {series_uid} is a result series of this node: peers may not write into it"
            )
        if known.home_series is not None and known.home_series != series_uid:
            return Dimse.DUPLICATE_SOP_INSTANCE, (
                f"SOP Instance UID {sop_uid} is already held in series {known.home_series}; "
                "the first is kept"
            )
        return None

    def refuse(
        self, sender: Sender, status: int, reason: str, info: InstanceInfo | None = None
    ) -> Verdict:
        """Count, record and return a refusal (for the callers' own checks too)."""
        REFUSED.labels(f"0x{status:04X}").inc()
        notify(
            self.repository, Event.INSTANCE_REFUSED, reason, peer_ae=sender.ae_title,
            address=sender.address, status=f"0x{status:04X}",
        )  # fmt: skip
        return Verdict(status, reason, info)
