"""The Storage SCP: C-STORE handling.

Each instance goes through `node.store.intake.Intake` (the checks, the atomic write and
the journal that STOW-RS shares); only then does the peer get Success. The indexer
(`node.store.ingest`) indexes it moments later. Anything unreadable gets a failure
status and an event, and the association (and the node) carry on.
"""

from __future__ import annotations

import re
import struct
import threading
from collections import Counter
from typing import Any

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

from node.config import Config
from node.dimse.common import Dimse, peer_of
from node.store.intake import Intake, Sender


class StoreScp:
    def __init__(self, config: Config, intake: Intake) -> None:
        self.config = config
        self.intake = intake
        self.received = Counter[str]()  # per association: instances stored
        self._lock = threading.Lock()

    def on_store(self, ev: Any) -> int:
        peer = peer_of(ev.assoc)
        sender = Sender(peer.ae_title, peer.address, self._forced(ev))
        try:
            data = part10(ev)
        except Exception as exc:  # pynetdicom could not build the file meta
            return self.intake.refuse(
                sender, Dimse.CANNOT_UNDERSTAND, f"dataset cannot be encoded: {exc}"
            ).status
        verdict = self.intake.accept(data, sender, str(ev.request.AffectedSOPInstanceUID))
        if verdict.stored:
            with self._lock:
                self.received[str(id(ev.assoc))] += 1
        return verdict.status

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


_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


def part10(ev: Any) -> bytes:
    """The received data set as a Part 10 file, as ``ev.encoded_dataset()`` writes it.

    pynetdicom builds the file meta as a pydicom dataset and encodes it: more than a
    third of a millisecond on every C-STORE. For the usual valid UIDs the same bytes are
    put together here; anything else goes the pynetdicom way."""
    uids = (
        str(ev.request.AffectedSOPClassUID),
        str(ev.request.AffectedSOPInstanceUID),
        str(ev.context.transfer_syntax),
    )
    if not all(len(u) <= 64 and _UID.fullmatch(u) for u in uids):
        return bytes(ev.encoded_dataset(include_meta=True))
    body = b"".join((
        b"\x02\x00\x01\x00OB\x00\x00\x02\x00\x00\x00\x00\x01",  # version 00 01
        _meta_text(0x0002, b"UI", uids[0]),
        _meta_text(0x0003, b"UI", uids[1]),
        _meta_text(0x0010, b"UI", uids[2]),
        _meta_text(0x0012, b"UI", PYNETDICOM_IMPLEMENTATION_UID),
        _meta_text(0x0013, b"SH", PYNETDICOM_IMPLEMENTATION_VERSION),
    ))  # fmt: skip
    length = b"\x02\x00\x00\x00UL\x04\x00" + struct.pack("<I", len(body))
    return b"".join((b"\x00" * 128, b"DICM", length, body, ev.request.DataSet.getvalue()))


def _meta_text(element: int, vr: bytes, text: str) -> bytes:
    value = text.encode("ascii")
    if len(value) % 2:
        value += b"\x00" if vr == b"UI" else b" "
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value
