"""The Storage SCP: C-STORE handling.

Each instance goes through `node.store.intake.Intake` (the checks, the atomic write and
the journal that STOW-RS shares); only then does the peer get Success. The indexer
(`node.store.ingest`) indexes it moments later. Anything unreadable gets a failure
status and an event, and the association (and the node) carry on.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

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
            data = ev.encoded_dataset(include_meta=True)
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
