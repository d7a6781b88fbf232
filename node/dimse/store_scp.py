"""The Storage SCP: C-STORE handling.

Each instance is checked (UIDs, truncation: `node.store.ingest.describe`), written to
disk as received (no re-encoding), atomically under a hashed path, and journalled; only
then does the peer get Success. The indexer (`node.store.ingest`) indexes it moments
later. Anything unreadable gets a failure status and an event, and the association (and
the node) carry on.

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
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from node.config import Config
from node.dimse.common import Dimse, Peer, peer_of
from node.events import Event, notify
from node.logs import event
from node.metrics import BYTES_RECEIVED, INSTANCES_RECEIVED, REFUSED
from node.store.ingest import describe
from node.store.records import Origin, Received
from node.store.repository import Repository
from node.store.storage import InvalidUidError, Storage

log = logging.getLogger("node.store_scp")


def _dataset_part(encoded: bytes) -> bytes:
    """The data set of a Part 10 byte string, without preamble and file meta (which
    differ with the sender's implementation, not with the content)."""
    if encoded[128:132] != b"DICM":
        return encoded
    group_length = int.from_bytes(encoded[140:144], "little")  # (0002,0000) UL, explicit LE
    return encoded[144 + group_length :]


class StoreScp:
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
        self.received = Counter[str]()  # per association: instances stored
        self._lock = threading.Lock()

    def on_store(self, ev: Any) -> int:
        peer = peer_of(ev.assoc)
        try:
            data = ev.encoded_dataset(include_meta=True)
            info = describe(data, str(ev.request.AffectedSOPInstanceUID))
        except (InvalidUidError, ValueError) as exc:
            return self._refuse(peer, Dimse.CANNOT_UNDERSTAND, f"unusable instance: {exc}")
        except Exception as exc:  # pydicom raises many types for broken data
            return self._refuse(
                peer, Dimse.CANNOT_UNDERSTAND,
                f"dataset cannot be decoded: {type(exc).__name__}: {exc}",
            )  # fmt: skip
        limits = self.config.storage
        if len(data) > limits.max_instance_mb * 2**20:
            return self._refuse(
                peer, Dimse.OUT_OF_RESOURCES,
                f"instance of {len(data) / 2**20:.1f} MiB exceeds storage.max_instance_mb "
                f"({limits.max_instance_mb:g})",
            )  # fmt: skip
        if len(info.frames) > limits.max_frames:
            return self._refuse(
                peer, Dimse.OUT_OF_RESOURCES,
                f"{len(info.frames)} frames exceed storage.max_frames ({limits.max_frames})",
            )  # fmt: skip
        path = self.storage.instance_path(info.study_uid, info.series_uid, info.sop_uid)
        verdict = self._identity(info.sop_uid, info.series_uid, path, data)
        if verdict is not None:
            status, reason = verdict
            if status == Dimse.SUCCESS:
                return status  # a copy of one of our own results: nothing to store
            REFUSED.labels(f"0x{status:04X}").inc()
            notify(
                self.repository, Event.INSTANCE_CONFLICT, reason, peer_ae=peer.ae_title,
                address=peer.address, series_uid=info.series_uid, status=f"0x{status:04X}",
            )  # fmt: skip
            return status
        floor = int(limits.min_free_mb * 2**20)
        try:
            free = self.storage.free_bytes()
        except OSError as exc:
            return self._refuse(peer, Dimse.OUT_OF_RESOURCES, f"cannot check free space: {exc}")
        if free - len(data) < floor:
            return self._refuse(
                peer, Dimse.OUT_OF_RESOURCES,
                f"disk space low: {free // 2**20} MiB free, storage.min_free_mb is "
                f"{self.config.storage.min_free_mb:g}",
            )  # fmt: skip
        try:
            self.storage.write_atomic(path, data)
        except OSError as exc:
            return self._refuse(peer, Dimse.OUT_OF_RESOURCES, f"cannot write instance: {exc}")
        self.submit(
            Received(info, str(path), len(data), peer.ae_title, peer.address, self._forced(ev),
                     time.time())
        )  # fmt: skip
        with self._lock:
            self.received[str(id(ev.assoc))] += 1
        INSTANCES_RECEIVED.inc()
        BYTES_RECEIVED.inc(len(data))
        return Dimse.SUCCESS

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
            known = self.repository.identity(sop_uid, series_uid)
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

    def stored_in(self, assoc: Any) -> int:
        """Instances stored in ``assoc`` (forgotten once asked: the association ended)."""
        with self._lock:
            return self.received.pop(str(id(assoc)), 0)

    def _forced(self, ev: Any) -> bool:
        force = self.config.dicom.force_ae_title
        if not force:
            return False
        called = str(ev.assoc.requestor.primitive.called_ae_title).strip()
        return called == force

    def _refuse(self, peer: Peer, status: int, reason: str) -> int:
        REFUSED.labels(f"0x{status:04X}").inc()
        notify(
            self.repository, Event.INSTANCE_REFUSED, reason, peer_ae=peer.ae_title,
            address=peer.address, status=f"0x{status:04X}",
        )  # fmt: skip
        return status
