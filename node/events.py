"""What an operator must see, in one channel: `notify` logs the event as one structured
line *and* records it in the index (``lge-node status``), at the one level its kind has.

Events that only trace normal work (an association accepted, a job done) stay log lines
(`node.logs.event`); everything here is something an operator may have to act on.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

from node.logs import event
from node.metrics import EVENTS
from node.notify import offer

if TYPE_CHECKING:
    from node.store.repository import Repository

log = logging.getLogger("node.events")


class Event(Enum):
    """Each kind with its level: WARNING when a peer or its data is at fault and the node
    carries on, ERROR when the node itself could not do its work."""

    ASSOCIATION_REJECTED = ("association_rejected", logging.WARNING)
    CONNECTION_DROPPED = ("connection_dropped", logging.WARNING)
    INSTANCE_REFUSED = ("instance_refused", logging.WARNING)
    INSTANCE_CONFLICT = ("instance_conflict", logging.WARNING)
    INSTANCE_NOT_INDEXED = ("instance_not_indexed", logging.ERROR)
    ORPHAN_QUARANTINED = ("orphan_quarantined", logging.WARNING)
    MODELS_FAILED = ("models_failed", logging.ERROR)
    JOB_FAILED = ("job_failed", logging.ERROR)
    FIND_REFUSED = ("find_refused", logging.WARNING)
    MOVE_REFUSED = ("move_refused", logging.WARNING)
    GET_REFUSED = ("get_refused", logging.WARNING)
    POLL_FAILED = ("poll_failed", logging.WARNING)
    RETRIEVE_FAILED = ("retrieve_failed", logging.ERROR)
    RETRIEVE_INCOMPLETE = ("retrieve_incomplete", logging.WARNING)
    RETRIEVE_PARTIAL = ("retrieve_partial", logging.WARNING)

    def __init__(self, kind: str, level: int) -> None:
        self.kind = kind
        self.level = level


def notify(
    repository: Repository | None,
    what: Event,
    message: str,
    *,
    peer_ae: str = "",
    address: str = "",
    series_uid: str = "",
    job_id: int | None = None,
    defer: bool = False,
    **fields: Any,
) -> None:
    """Log ``what`` and record it in the index (when there is one). An index that cannot
    be written must not stop the work that raised the event: the event then waits in the
    background recorder and reaches the index once it takes writes again.

    ``defer``: record it from a background thread, retrying until the index takes it, so
    that the caller never waits for the database (access control answers a peer at once
    even while the index is locked; the event reaches the index when it is free)."""
    extra: dict[str, Any] = {
        k: v for k, v in (("peer_ae", peer_ae), ("address", address), ("series", series_uid)) if v
    }
    if job_id is not None:
        extra["job"] = job_id
    event(log, what.kind, what.level, **extra, **fields, reason=message)
    EVENTS.labels(what.kind).inc()
    if not fields.get("retry"):  # a job that will be tried again is not news yet
        details: dict[str, str | int | float] = {k: v for k, v in extra.items() if v}
        offer(what.kind, logging.getLevelName(what.level), message, **details)
    if repository is None:
        return
    if defer:
        _recorder(repository).put(
            _Pending(what, message, peer_ae, address, series_uid, job_id, time.time())
        )
        return
    try:
        repository.record_event(
            what.kind, message, logging.getLevelName(what.level), peer_ae, address, series_uid,
            job_id,
        )  # fmt: skip
    except Exception as exc:  # down, locked or out of disk: recorded once it can be
        event(log, "event_deferred", logging.WARNING, kind=what.kind, error=str(exc))
        _recorder(repository).put(
            _Pending(what, message, peer_ae, address, series_uid, job_id, time.time())
        )


@dataclass(frozen=True)
class _Pending:
    what: Event
    message: str
    peer_ae: str
    address: str
    series_uid: str
    job_id: int | None
    at: float


class DeferredEvents:
    """One background writer per repository: a bounded queue (a flood of rejected peers
    cannot grow memory without limit; what overflows is counted and logged) drained in
    order, retried with backoff while the index refuses writes."""

    MAX_PENDING = 10_000

    def __init__(self, repository: Repository) -> None:
        self.repository = repository
        self.pending: queue.Queue[_Pending] = queue.Queue(self.MAX_PENDING)
        self.dropped = 0
        self.idle = threading.Event()
        self.idle.set()
        self.thread = threading.Thread(target=self._run, name="deferred-events", daemon=True)
        self.thread.start()

    def put(self, item: _Pending) -> None:
        try:
            self.idle.clear()
            self.pending.put_nowait(item)
        except queue.Full:
            self.dropped += 1
            event(log, "event_not_recorded", logging.ERROR, kind=item.what.kind,
                  error="too many events waiting for the index", dropped=self.dropped)  # fmt: skip

    def flush(self, timeout: float) -> bool:
        """Wait until everything queued so far is recorded (True) or ``timeout``."""
        return self.idle.wait(timeout)

    def _run(self) -> None:
        delay = 0.2
        while True:
            item = self.pending.get()
            while True:
                try:
                    self.repository.record_event(
                        item.what.kind, item.message, logging.getLevelName(item.what.level),
                        item.peer_ae, item.address, item.series_uid, item.job_id, at=item.at,
                    )  # fmt: skip
                    delay = 0.2
                    break
                except Exception as exc:  # locked or down: keep it and try again
                    event(log, "event_recording_retry", logging.DEBUG, error=str(exc))
                    time.sleep(delay)
                    delay = min(delay * 2, 10.0)
            if self.pending.empty():
                self.idle.set()


_recorders: dict[int, DeferredEvents] = {}
_recorders_lock = threading.Lock()


def _recorder(repository: Repository) -> DeferredEvents:
    with _recorders_lock:
        rec = _recorders.get(id(repository))
        if rec is None or rec.repository is not repository:
            rec = _recorders[id(repository)] = DeferredEvents(repository)
        return rec


def flush_deferred(repository: Repository, timeout: float = 5.0) -> bool:
    """Shutdown: give queued events a moment to reach the index."""
    with _recorders_lock:
        rec = _recorders.get(id(repository))
    return True if rec is None or rec.repository is not repository else rec.flush(timeout)
