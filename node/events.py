"""What an operator must see, in one channel: `notify` logs the event as one structured
line *and* records it in the index (``lge-node status``), at the one level its kind has.

Events that only trace normal work (an association accepted, a job done) stay log lines
(`node.logs.event`); everything here is something an operator may have to act on.
"""

from __future__ import annotations

import logging
from enum import Enum
from typing import TYPE_CHECKING, Any

from node.logs import event

if TYPE_CHECKING:
    from node.store.repository import Repository

log = logging.getLogger("node.events")


class Event(Enum):
    """Each kind with its level: WARNING when a peer or its data is at fault and the node
    carries on, ERROR when the node itself could not do its work."""

    ASSOCIATION_REJECTED = ("association_rejected", logging.WARNING)
    CONNECTION_DROPPED = ("connection_dropped", logging.WARNING)
    INSTANCE_REFUSED = ("instance_refused", logging.WARNING)
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
    **fields: Any,
) -> None:
    """Log ``what`` and record it in the index (when there is one; best effort: an index
    that cannot be written must not stop the work that raised the event)."""
    extra: dict[str, Any] = {
        k: v for k, v in (("peer_ae", peer_ae), ("address", address), ("series", series_uid)) if v
    }
    if job_id is not None:
        extra["job"] = job_id
    event(log, what.kind, what.level, **extra, **fields, reason=message)
    if repository is None:
        return
    try:
        repository.record_event(
            what.kind, message, logging.getLevelName(what.level), peer_ae, address, series_uid,
            job_id,
        )  # fmt: skip
    except Exception as exc:  # the database is down or locked: the log line stands
        event(log, "event_not_recorded", logging.ERROR, kind=what.kind, error=str(exc))
