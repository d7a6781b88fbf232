"""Purges files once they are no longer needed: sources of skipped series, and sources
and results of processed series once every result was delivered, after
``storage.retention_hours``. Failed series and undelivered results are kept for the
operator. Index rows stay (state ``purged``) so the history remains visible."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from node.config import Config
from node.logs import event
from node.store.repository import Repository
from node.store.storage import Storage

log = logging.getLogger("node.retention")


class Retention:
    def __init__(self, config: Config, storage: Storage, repository: Repository) -> None:
        self.config = config
        self.storage = storage
        self.repository = repository

    def purge(self, now: float | None = None) -> int:
        """Purge what is due; returns the number of series purged."""
        now = time.time() if now is None else now
        cutoff = now - self.config.storage.retention_hours * 3600.0
        purged = 0
        for series_id in self.repository.purge_candidates(cutoff):
            # Re-checked inside the write: an instance may have arrived since.
            done = self.repository.purge_series(series_id, cutoff)
            if done is None:
                continue
            # Files go after the commit: a crash in between leaves files without rows,
            # which start-up recovery indexes again, never rows without files.
            for p in done.paths + done.result_dirs:
                self.storage.remove(Path(p))
            event(
                log, "series_purged", series=done.series_uid, instances=done.instances,
                result_sets=len(done.result_dirs),
            )  # fmt: skip
            purged += 1
        return purged
