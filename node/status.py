"""The operator's view of the index: recent series, jobs, sends and events."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from sqlalchemy import func, select

from node.index import EventRow, Index, Job, Outbox, SendState, Series, Study


@dataclass(frozen=True)
class SeriesRow:
    study_uid: str
    accession: str
    series_uid: str
    description: str
    instances: int
    state: str
    reason: str
    calling_ae: str
    last_received: float


@dataclass(frozen=True)
class JobRow:
    id: int
    series_uid: str
    state: str
    attempts: int
    max_attempts: int
    seconds: float | None
    scar_percent: float | None
    error: str
    created_at: float


@dataclass(frozen=True)
class SendRow:
    destination: str
    pending: int
    sent: int
    last_error: str
    next_attempt_at: float | None


@dataclass(frozen=True)
class EventView:
    time: float
    level: str
    kind: str
    peer: str
    message: str


@dataclass
class Snapshot:
    series: list[SeriesRow] = field(default_factory=list)
    jobs: list[JobRow] = field(default_factory=list)
    sends: list[SendRow] = field(default_factory=list)
    events: list[EventView] = field(default_factory=list)
    taken_at: float = field(default_factory=time.time)


def snapshot(index: Index, limit: int = 20) -> Snapshot:
    snap = Snapshot()
    with index.read() as s:
        rows = s.execute(
            select(Series, Study)
            .join(Study, Study.id == Series.study_fk)
            .order_by(Series.last_received.desc())
            .limit(limit)
        )
        for series, study in rows:
            snap.series.append(
                SeriesRow(
                    study.study_uid,
                    study.accession_number,
                    series.series_uid,
                    series.description,
                    series.n_instances,
                    series.state,
                    series.reason,
                    series.calling_ae,
                    series.last_received,
                )
            )
        for job, uid in s.execute(
            select(Job, Series.series_uid)
            .join(Series, Series.id == Job.series_fk)
            .order_by(Job.id.desc())
            .limit(limit)
        ):
            scar = json.loads(job.metrics).get("scar_percent") if job.metrics else None
            snap.jobs.append(
                JobRow(
                    job.id,
                    uid,
                    job.state,
                    job.attempts,
                    job.max_attempts,
                    job.seconds,
                    scar,
                    job.error.splitlines()[0] if job.error else "",
                    job.created_at,
                )
            )
        for dest in s.scalars(select(Outbox.destination).distinct()):
            counts = dict(
                s.execute(
                    select(Outbox.state, func.count())
                    .where(Outbox.destination == dest)
                    .group_by(Outbox.state)
                ).all()
            )
            last = s.execute(
                select(Outbox.last_error, Outbox.next_attempt_at)
                .where(Outbox.destination == dest, Outbox.state == SendState.PENDING)
                .order_by(Outbox.attempts.desc())
                .limit(1)
            ).first()
            snap.sends.append(
                SendRow(
                    dest,
                    counts.get(SendState.PENDING, 0),
                    counts.get(SendState.SENT, 0),
                    last[0] if last else "",
                    last[1] if last else None,
                )
            )
        for ev in s.scalars(select(EventRow).order_by(EventRow.id.desc()).limit(limit)):
            peer = f"{ev.peer_ae}@{ev.peer_address}" if ev.peer_ae else ev.peer_address
            snap.events.append(EventView(ev.time, ev.level, ev.kind, peer, ev.message))
    return snap
