"""Purges files once they are no longer needed: sources of skipped series, and sources
and results of processed series once every result was delivered, after
``storage.retention_hours``. Failed series and undelivered results are kept for the
operator. Index rows stay (state ``purged``) so the history remains visible."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from sqlalchemy import delete, func, select

from node.config import Config
from node.index import Index, Instance, Job, Origin, Outbox, SendState, Series, SeriesState
from node.logs import event
from node.storage import Storage

log = logging.getLogger("node.retention")


class Retention:
    def __init__(self, config: Config, storage: Storage, index: Index) -> None:
        self.config = config
        self.storage = storage
        self.index = index

    def purge(self, now: float | None = None) -> int:
        """Purge what is due; returns the number of series purged."""
        now = time.time() if now is None else now
        cutoff = now - self.config.storage.retention_hours * 3600.0
        with self.index.read() as s:
            undelivered = (
                select(Job.series_fk)
                .join(Outbox, Outbox.job_fk == Job.id)
                .where(Outbox.state != SendState.SENT)
            )
            candidates = list(
                s.scalars(
                    select(Series.id).where(
                        Series.origin == Origin.RECEIVED,  # results go with their source
                        Series.state.in_([SeriesState.SKIPPED, SeriesState.DONE]),
                        Series.last_received <= cutoff,
                        Series.id.not_in(undelivered),
                    )
                )
            )
        purged = 0
        for series_id in candidates:
            purged += self._purge_series(series_id, cutoff)
        return purged

    def _purge_series(self, series_id: int, cutoff: float) -> int:
        with self.index.write() as s:
            series = s.get(Series, series_id)
            # Re-check inside the write: an instance may have arrived since the read.
            if series is None or series.state not in (SeriesState.SKIPPED, SeriesState.DONE):
                return 0
            if series.last_received > cutoff:
                return 0
            paths = list(s.scalars(select(Instance.path).where(Instance.series_fk == series_id)))
            results = list(
                s.scalars(
                    select(Job.results_dir).where(Job.series_fk == series_id, Job.results_dir != "")
                )
            )
            n = s.scalar(select(func.count()).where(Instance.series_fk == series_id)) or 0
            derived = list(s.scalars(select(Series).where(Series.derived_from == series_id)))
            for d in derived:
                s.execute(delete(Instance).where(Instance.series_fk == d.id))
                d.state, d.n_instances = SeriesState.PURGED, 0
            s.execute(delete(Instance).where(Instance.series_fk == series_id))
            series.state = SeriesState.PURGED
            series.reason = (series.reason + "; " if series.reason else "") + "files purged"
            uid = series.series_uid
        # Files go after the commit: a crash in between leaves files without rows, which
        # the start-up reconciliation indexes again, never rows without files.
        for p in paths + results:
            self.storage.remove(Path(p))
        event(log, "series_purged", series=uid, instances=n, result_sets=len(results))
        return 1
