"""Start-up recovery of the store: what a crash or a power loss left on disk is put back
in the index before the port opens, so nothing acknowledged is ever lost.

- a complete, fsync'ed temp file whose rename the power loss undid is put in place;
  cut-off ones are removed (`Storage.clean_temporaries`);
- instance files on disk but not in the index (acknowledged just before a crash, the
  indexer had not committed them) are indexed, with their sender from the ingest journal;
- files a crash left while retention was deleting a purged series are removed;
- a file that cannot be read or indexed is moved to ``quarantine/`` with an event: one
  bad file never stops the start-up.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from node.events import Event, notify
from node.store.ingest import Journal, describe
from node.store.records import Received, SeriesState
from node.store.repository import Repository
from node.store.storage import Storage

log = logging.getLogger("node.recovery")


@dataclass(frozen=True)
class Recovered:
    temp_files_removed: int
    temp_files_restored: int
    orphans_indexed: int
    orphans_removed: int


def recover(storage: Storage, repository: Repository, journal_path: Path) -> Recovered:
    """Temp files first (a restored one is then an orphan to index), then orphans."""

    def locate(data: bytes) -> Path:
        info = describe(data)
        return storage.instance_path(info.study_uid, info.series_uid, info.sop_uid)

    removed, restored = storage.clean_temporaries(locate=locate)
    indexed, dropped = reconcile(storage, repository, journal_path)
    return Recovered(removed, restored, indexed, dropped)


def reconcile(storage: Storage, repository: Repository, journal_path: Path) -> tuple[int, int]:
    """Index instance files that are on disk but not in the index; returns (indexed,
    removed). Idempotent."""
    known = repository.known_paths()
    senders = Journal.read(journal_path)
    indexed = dropped = 0
    for path in storage.instances.rglob("*.dcm"):
        if str(path) in known:
            continue
        try:
            data = path.read_bytes()
            info = describe(data)
        except Exception as exc:
            _drop(storage, repository, path, f"unreadable instance file: {exc}")
            dropped += 1
            continue
        sender = senders.get(str(path))
        if sender is None and repository.series_state(info.series_uid) == SeriesState.PURGED:
            storage.remove(path)  # retention was deleting it when the node stopped
            dropped += 1
            continue
        sender = sender or {}
        received = Received(
            info, str(path), len(data), sender.get("ae", ""), sender.get("address", ""),
            bool(sender.get("forced", False)), path.stat().st_mtime,
        )  # fmt: skip
        (outcome,) = repository.record_batch([received])  # one bad file stops nothing
        if isinstance(outcome, ValueError):
            where = storage.quarantine(path)
            notify(
                repository, Event.ORPHAN_QUARANTINED, f"not indexable: {outcome}; kept in {where}",
                series_uid=info.series_uid,
            )  # fmt: skip
            dropped += 1
            continue
        indexed += 1
    return indexed, dropped


def _drop(storage: Storage, repository: Repository, path: Path, reason: str) -> None:
    where = storage.quarantine(path)  # kept for the operator, out of the instances folder
    notify(repository, Event.ORPHAN_QUARANTINED, f"{reason}; kept in {where}")
