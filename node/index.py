"""The node's index: studies, series, instances, jobs, outbox and events, in one database.

SQLAlchemy, SQLite in WAL mode by default (any SQLAlchemy URL works). Every state change
of the node is a committed row here, so a restart continues where a crash left off.
Times are UNIX seconds (UTC). Writers in one process are serialised by a lock: SQLite
allows one writer anyway, and this avoids "database is locked" on upgrade from read.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker


class Base(DeclarativeBase):
    pass


class SeriesState:
    RECEIVING = "receiving"  # instances arriving; not yet quiet for stable_age
    SKIPPED = "skipped"  # complete, not an LGE series (reason recorded)
    QUEUED = "queued"  # a job waits for it
    PROCESSING = "processing"
    DONE = "done"  # results written and handed to the outbox
    FAILED = "failed"  # its job gave up (error recorded)
    PURGED = "purged"  # files removed after the retention time


class Origin:
    RECEIVED = "received"  # sent to the node (or retrieved by it)
    RESULT = "result"  # written by a job (SEG, SR, overlays); served to Q/R clients


class JobState:
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"  # its series changed before it started


class SendState:
    PENDING = "pending"
    SENT = "sent"


class Study(Base):
    __tablename__ = "studies"
    id: Mapped[int] = mapped_column(primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64), unique=True)
    patient_id: Mapped[str] = mapped_column(String(64), default="")
    patient_name: Mapped[str] = mapped_column(String(324), default="")
    patient_birth_date: Mapped[str] = mapped_column(String(8), default="")
    patient_sex: Mapped[str] = mapped_column(String(16), default="")
    accession_number: Mapped[str] = mapped_column(String(16), default="")
    study_date: Mapped[str] = mapped_column(String(8), default="")
    study_time: Mapped[str] = mapped_column(String(16), default="")
    study_description: Mapped[str] = mapped_column(String(64), default="")
    study_id: Mapped[str] = mapped_column(String(16), default="")
    created_at: Mapped[float] = mapped_column(Float)


class Series(Base):
    __tablename__ = "series"
    id: Mapped[int] = mapped_column(primary_key=True)
    study_fk: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    series_uid: Mapped[str] = mapped_column(String(64), unique=True)
    modality: Mapped[str] = mapped_column(String(16), default="")
    sop_class_uid: Mapped[str] = mapped_column(String(64), default="")
    description: Mapped[str] = mapped_column(String(64), default="")
    series_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    image_type: Mapped[str] = mapped_column(String(256), default="")
    scanning_sequence: Mapped[str] = mapped_column(String(64), default="")
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    calling_address: Mapped[str] = mapped_column(String(64), default="")
    n_instances: Mapped[int] = mapped_column(Integer, default=0)
    first_received: Mapped[float] = mapped_column(Float)
    last_received: Mapped[float] = mapped_column(Float, index=True)
    state: Mapped[str] = mapped_column(String(16), default=SeriesState.RECEIVING, index=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    kind: Mapped[str] = mapped_column(String(16), default="")  # psir | magnitude
    forced: Mapped[bool] = mapped_column(default=False)  # sent to the "process anyway" AE
    origin: Mapped[str] = mapped_column(String(16), default=Origin.RECEIVED)
    # For a result series: the received series it was computed from.
    derived_from: Mapped[int | None] = mapped_column(ForeignKey("series.id"), nullable=True)
    processed_instances: Mapped[int] = mapped_column(Integer, default=0)


class Instance(Base):
    __tablename__ = "instances"
    id: Mapped[int] = mapped_column(primary_key=True)
    series_fk: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    sop_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax: Mapped[str] = mapped_column(String(64), default="")
    instance_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    path: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(Integer, default=0)
    received_at: Mapped[float] = mapped_column(Float)
    # [[position key, inversion time ms | None], ...] per frame: tells a TI scout
    # (many TIs per position) from an LGE stack (one).
    frames: Mapped[str] = mapped_column(Text, default="[]")


class Job(Base):
    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(primary_key=True)
    series_fk: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    state: Mapped[str] = mapped_column(String(16), default=JobState.QUEUED, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    not_before: Mapped[float] = mapped_column(Float, default=0.0)
    n_instances: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    error: Mapped[str] = mapped_column(Text, default="")
    results_dir: Mapped[str] = mapped_column(Text, default="")
    metrics: Mapped[str] = mapped_column(Text, default="")  # metrics.json as written
    supersedes: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"), nullable=True)
    seconds: Mapped[float | None] = mapped_column(Float, nullable=True)


class Outbox(Base):
    __tablename__ = "outbox"
    id: Mapped[int] = mapped_column(primary_key=True)
    job_fk: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    destination: Mapped[str] = mapped_column(String(64))
    ae_title: Mapped[str] = mapped_column(String(16))
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    sop_uid: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default=SendState.PENDING, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[float] = mapped_column(Float, default=0.0, index=True)
    last_error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[float] = mapped_column(Float)
    sent_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class PolledStudy(Base):
    """A study a poll has already fetched (or judged to hold no LGE): never fetched twice."""

    __tablename__ = "polled_studies"
    id: Mapped[int] = mapped_column(primary_key=True)
    pacs: Mapped[str] = mapped_column(String(64))
    study_uid: Mapped[str] = mapped_column(String(64))
    seen_at: Mapped[float] = mapped_column(Float)
    outcome: Mapped[str] = mapped_column(Text, default="")
    __table_args__ = (UniqueConstraint("pacs", "study_uid"),)


class EventRow(Base):
    """Things an operator should see: rejected peers, unreadable data, failed sends."""

    __tablename__ = "events"
    id: Mapped[int] = mapped_column(primary_key=True)
    time: Mapped[float] = mapped_column(Float, index=True)
    level: Mapped[str] = mapped_column(String(8))
    kind: Mapped[str] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(Text)
    peer_ae: Mapped[str] = mapped_column(String(16), default="")
    peer_address: Mapped[str] = mapped_column(String(64), default="")
    series_uid: Mapped[str] = mapped_column(String(64), default="")
    job_fk: Mapped[int | None] = mapped_column(Integer, nullable=True)


@dataclass(frozen=True)
class InstanceInfo:
    """What the receiver read from an instance's header, for the index."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax: str
    modality: str
    series_description: str
    series_number: int | None
    instance_number: int | None
    image_type: str
    scanning_sequence: str
    frames: list[tuple[str | None, float | None]]
    patient: dict[str, str]  # PatientID, PatientName, ... (index only, never logged)
    study: dict[str, str]


@dataclass(frozen=True)
class Received:
    """An instance written to disk and acknowledged, waiting to be indexed."""

    info: InstanceInfo
    path: str
    size: int
    calling_ae: str
    address: str
    forced: bool
    received_at: float


@dataclass(frozen=True)
class StoreOutcome:
    duplicate: bool  # the same SOP instance was already held (file replaced, harmless)
    reopened: bool  # the series had been processed: a re-run will follow
    series_id: int


@dataclass(frozen=True)
class ResultObject:
    """One DICOM object a job wrote (SEG, SR or an overlay)."""

    path: str
    sop_class_uid: str
    sop_uid: str
    series_uid: str
    modality: str
    description: str
    series_number: int | None
    instance_number: int | None
    transfer_syntax: str
    size: int


@dataclass(frozen=True)
class Delivery:
    """One destination for a finished job."""

    name: str
    ae_title: str
    host: str
    port: int


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class Index:
    """All reads and writes of the node's state."""

    def __init__(self, url: str) -> None:
        self.url = url
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        self.engine: Engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        Base.metadata.create_all(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._write = threading.RLock()

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self._sessions() as session:
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        with self._write, self._sessions() as session, session.begin():
            yield session

    # -- receiving -------------------------------------------------------------------

    def record_instance(
        self,
        info: InstanceInfo,
        path: str,
        size: int,
        calling_ae: str,
        address: str,
        forced: bool = False,
        now: float | None = None,
    ) -> StoreOutcome:
        """Index one received instance."""
        with self._write, self.engine.begin() as con:
            return self._record(con, info, path, size, calling_ae, address, forced, now)

    def record_batch(self, items: list[Received]) -> list[StoreOutcome | ValueError]:
        """Index many instances in one transaction; an item that conflicts with what is
        indexed (a series UID reused by another study...) gets its ValueError back."""
        results: list[StoreOutcome | ValueError] = []
        with self._write, self.engine.begin() as con:
            for r in items:
                try:
                    results.append(
                        self._record(con, r.info, r.path, r.size, r.calling_ae, r.address,
                                     r.forced, r.received_at)
                    )  # fmt: skip
                except ValueError as exc:
                    results.append(exc)
        return results

    def _record(
        self,
        con: Any,
        info: InstanceInfo,
        path: str,
        size: int,
        calling_ae: str,
        address: str,
        forced: bool,
        now: float | None,
    ) -> StoreOutcome:
        # The hot path of ingest: Core SQL, three to four statements, no ORM objects.
        now = time.time() if now is None else now
        studies, series_t, instances = Study.__table__, Series.__table__, Instance.__table__
        study_id = con.execute(
            select(studies.c.id).where(studies.c.study_uid == info.study_uid)
        ).scalar()
        if study_id is None:
            study_id = con.execute(
                studies.insert().values(
                    study_uid=info.study_uid, created_at=now, **_study_fields(info)
                )
            ).inserted_primary_key[0]
        row = con.execute(
            select(series_t.c.id, series_t.c.study_fk, series_t.c.state).where(
                series_t.c.series_uid == info.series_uid
            )
        ).first()
        if row is None:
            series_id = con.execute(
                series_t.insert().values(
                    study_fk=study_id,
                    series_uid=info.series_uid,
                    modality=info.modality,
                    sop_class_uid=info.sop_class_uid,
                    description=info.series_description,
                    series_number=info.series_number,
                    image_type=info.image_type,
                    scanning_sequence=info.scanning_sequence,
                    calling_ae=calling_ae,
                    calling_address=address,
                    first_received=now,
                    last_received=now,
                    n_instances=0,
                    forced=forced,
                    state=SeriesState.RECEIVING,
                    reason="",
                    kind="",
                    origin=Origin.RECEIVED,
                    processed_instances=0,
                )
            ).inserted_primary_key[0]
            state = SeriesState.RECEIVING
        else:
            series_id, owner, state = row
            if owner != study_id:
                raise ValueError(
                    f"series {info.series_uid} already belongs to another study; "
                    f"instance {info.sop_uid} refused"
                )
        existing = con.execute(
            select(instances.c.series_fk).where(instances.c.sop_uid == info.sop_uid)
        ).first()
        if existing is None:
            con.execute(
                instances.insert().values(
                    series_fk=series_id,
                    sop_uid=info.sop_uid,
                    sop_class_uid=info.sop_class_uid,
                    transfer_syntax=info.transfer_syntax,
                    instance_number=info.instance_number,
                    path=path,
                    size=size,
                    received_at=now,
                    frames=json.dumps(info.frames),
                )
            )
        elif existing[0] != series_id:
            raise ValueError(f"instance {info.sop_uid} already belongs to another series")
        else:
            con.execute(
                instances.update()
                .where(instances.c.sop_uid == info.sop_uid)
                .values(size=size, received_at=now)
            )
        values: dict[str, Any] = {"last_received": now}
        if existing is None:
            values["n_instances"] = series_t.c.n_instances + 1
        if forced:
            values["forced"] = True
        reopened = False
        if existing is None and state != SeriesState.RECEIVING:
            # New data for a series already judged: judge (and maybe process) it again
            # once it is quiet; a job still waiting would see a half-updated series.
            if state == SeriesState.QUEUED:
                con.execute(
                    update(Job)
                    .where(Job.series_fk == series_id, Job.state == JobState.QUEUED)
                    .values(state=JobState.CANCELLED, finished_at=now,
                            error="cancelled: more instances arrived")
                )  # fmt: skip
            reopened = state in (SeriesState.DONE, SeriesState.FAILED, SeriesState.PROCESSING)
            values.update(state=SeriesState.RECEIVING, reason="")
        con.execute(series_t.update().where(series_t.c.id == series_id).values(**values))
        return StoreOutcome(existing is not None, reopened, series_id)

    def reconcile_paths(self) -> set[str]:
        with self.read() as s:
            return set(s.scalars(select(Instance.path)))

    # -- completion and selection ----------------------------------------------------

    def quiet_studies(self, stable_age_s: float, now: float | None = None) -> list[int]:
        """Studies with a receiving series where no series received anything for a while."""
        now = time.time() if now is None else now
        with self.read() as s:
            receiving = select(Series.study_fk).where(Series.state == SeriesState.RECEIVING)
            latest = (
                select(Series.study_fk, func.max(Series.last_received).label("last"))
                .where(Series.study_fk.in_(receiving))
                .group_by(Series.study_fk)
                .subquery()
            )
            rows = s.execute(select(latest.c.study_fk).where(latest.c.last <= now - stable_age_s))
            return [r[0] for r in rows]

    def study_series(self, study_id: int) -> list[Series]:
        with self.read() as s:
            return list(s.scalars(select(Series).where(Series.study_fk == study_id)))

    def series_frames(self, series_id: int) -> list[tuple[str | None, float | None]]:
        with self.read() as s:
            frames: list[tuple[str | None, float | None]] = []
            for text in s.scalars(select(Instance.frames).where(Instance.series_fk == series_id)):
                frames.extend(tuple(f) for f in json.loads(text))  # type: ignore[misc]
            return frames

    def series_paths(self, series_id: int) -> list[str]:
        with self.read() as s:
            return list(s.scalars(select(Instance.path).where(Instance.series_fk == series_id)))

    def skip_series(self, series_id: int, reason: str, kind: str = "") -> bool:
        """Mark a quiet series as not to be processed; False if it changed meanwhile."""
        with self.write() as s:
            series = s.get(Series, series_id)
            if series is None or series.state != SeriesState.RECEIVING:
                return False
            series.state, series.reason, series.kind = SeriesState.SKIPPED, reason, kind
            return True

    def enqueue(
        self, series_id: int, kind: str, reason: str, max_attempts: int, now: float | None = None
    ) -> int | None:
        """Queue a job for a quiet series; None if the series changed meanwhile."""
        now = time.time() if now is None else now
        with self.write() as s:
            series = s.get(Series, series_id)
            if series is None or series.state != SeriesState.RECEIVING:
                return None
            job = Job(
                series_fk=series_id,
                max_attempts=max_attempts,
                n_instances=series.n_instances,
                created_at=now,
            )
            s.add(job)
            series.state, series.reason, series.kind = SeriesState.QUEUED, reason, kind
            s.flush()
            return job.id

    # -- jobs --------------------------------------------------------------------------

    def recover_jobs(self, now: float | None = None) -> list[int]:
        """At start-up: jobs a crash left running go back to the queue (or fail, if used up)."""
        now = time.time() if now is None else now
        recovered = []
        with self.write() as s:
            for job in s.scalars(select(Job).where(Job.state == JobState.RUNNING)):
                series = s.get(Series, job.series_fk)
                assert series is not None
                if job.attempts >= job.max_attempts:
                    job.state, job.finished_at = JobState.FAILED, now
                    job.error = (job.error + "\n" if job.error else "") + (
                        f"node stopped during attempt {job.attempts} of {job.max_attempts}"
                    )
                    series.state = SeriesState.FAILED
                else:
                    job.state, job.not_before = JobState.QUEUED, now
                    series.state = SeriesState.QUEUED
                recovered.append(job.id)
        return recovered

    def claim_job(self, now: float | None = None) -> tuple[int, int] | None:
        """Take the oldest due job; returns (job id, series id)."""
        now = time.time() if now is None else now
        with self.write() as s:
            running = select(Job.series_fk).where(Job.state == JobState.RUNNING)
            job = s.scalar(
                select(Job)
                .where(
                    Job.state == JobState.QUEUED,
                    Job.not_before <= now,
                    Job.series_fk.not_in(running),  # one job per series at a time
                )
                .order_by(Job.id)
                .limit(1)
            )
            if job is None:
                return None
            job.state, job.started_at = JobState.RUNNING, now
            job.attempts += 1
            job.supersedes = s.scalar(
                select(Job.id)
                .where(Job.series_fk == job.series_fk, Job.state == JobState.DONE)
                .order_by(Job.id.desc())
                .limit(1)
            )
            series = s.get(Series, job.series_fk)
            assert series is not None
            series.state = SeriesState.PROCESSING
            return job.id, job.series_fk

    def job(self, job_id: int) -> Job:
        with self.read() as s:
            job = s.get(Job, job_id)
            assert job is not None
            return job

    def series(self, series_id: int) -> Series:
        with self.read() as s:
            series = s.get(Series, series_id)
            assert series is not None
            return series

    def previous_results(self, job_id: int) -> str | None:
        """Results folder of the job this one supersedes (for the SR predecessor)."""
        with self.read() as s:
            job = s.get(Job, job_id)
            if job is None or job.supersedes is None:
                return None
            prev = s.get(Job, job.supersedes)
            return prev.results_dir if prev and prev.results_dir else None

    def finish_job(
        self,
        job_id: int,
        results_dir: str,
        metrics: str,
        objects: list[ResultObject],
        deliveries: list[Delivery],
        seconds: float,
        now: float | None = None,
    ) -> None:
        """Job done, its results indexed (as series of origin ``result``, so Q/R clients
        can find them) and its outbox rows, in one transaction: a crash gives all or none.
        """
        now = time.time() if now is None else now
        with self.write() as s:
            job = s.get(Job, job_id)
            assert job is not None
            job.state, job.finished_at, job.seconds = JobState.DONE, now, seconds
            job.results_dir, job.metrics, job.error = results_dir, metrics, ""
            source = s.get(Series, job.series_fk)
            assert source is not None
            result_series: dict[str, Series] = {}
            for o in objects:
                rs = result_series.get(o.series_uid)
                if rs is None:
                    rs = Series(
                        study_fk=source.study_fk, series_uid=o.series_uid, modality=o.modality,
                        sop_class_uid=o.sop_class_uid, description=o.description,
                        series_number=o.series_number, first_received=now, last_received=now,
                        n_instances=0, state=SeriesState.DONE, origin=Origin.RESULT,
                        derived_from=source.id, reason=f"results of job {job_id}",
                    )  # fmt: skip
                    s.add(rs)
                    s.flush()
                    result_series[o.series_uid] = rs
                rs.n_instances += 1
                s.add(
                    Instance(
                        series_fk=rs.id, sop_uid=o.sop_uid, sop_class_uid=o.sop_class_uid,
                        transfer_syntax=o.transfer_syntax, instance_number=o.instance_number,
                        path=o.path, size=o.size, received_at=now, frames="[]",
                    )
                )  # fmt: skip
            for d in deliveries:
                for o in objects:
                    s.add(
                        Outbox(
                            job_fk=job_id,
                            destination=d.name,
                            ae_title=d.ae_title,
                            host=d.host,
                            port=d.port,
                            path=o.path,
                            sop_class_uid=o.sop_class_uid,
                            sop_uid=o.sop_uid,
                            created_at=now,
                            next_attempt_at=now,
                        )
                    )
            series = s.get(Series, job.series_fk)
            assert series is not None
            series.processed_instances = job.n_instances
            if series.state == SeriesState.PROCESSING:
                series.state = SeriesState.DONE
                series.reason = series.reason or "processed"
            # else: new instances arrived during the job; the series is receiving again.

    def fail_job(
        self,
        job_id: int,
        error: str,
        retry_delay_s: float,
        final: bool = False,
        now: float | None = None,
    ) -> bool:
        """Record a failed attempt; True when the job will be tried again.

        ``final``: trying again cannot help (the data is unusable); no further attempts.
        """
        now = time.time() if now is None else now
        with self.write() as s:
            job = s.get(Job, job_id)
            assert job is not None
            series = s.get(Series, job.series_fk)
            assert series is not None
            job.error = error
            again = not final and job.attempts < job.max_attempts
            if again:
                job.state, job.not_before = JobState.QUEUED, now + retry_delay_s
                if series.state == SeriesState.PROCESSING:
                    series.state = SeriesState.QUEUED
            else:
                job.state, job.finished_at = JobState.FAILED, now
                if series.state == SeriesState.PROCESSING:
                    series.state, series.reason = SeriesState.FAILED, error.splitlines()[0][:500]
            return again

    # -- dispatch ----------------------------------------------------------------------

    def due_sends(self, now: float | None = None, limit: int = 1000) -> list[Outbox]:
        now = time.time() if now is None else now
        with self.read() as s:
            return list(
                s.scalars(
                    select(Outbox)
                    .where(Outbox.state == SendState.PENDING, Outbox.next_attempt_at <= now)
                    .order_by(Outbox.id)
                    .limit(limit)
                )
            )

    def mark_sent(self, outbox_ids: list[int], now: float | None = None) -> None:
        now = time.time() if now is None else now
        if not outbox_ids:
            return
        with self.write() as s:
            s.execute(
                update(Outbox)
                .where(Outbox.id.in_(outbox_ids))
                .values(state=SendState.SENT, sent_at=now, last_error="")
            )

    def mark_send_failed(
        self, outbox_ids: list[int], error: str, initial_s: float, max_s: float,
        now: float | None = None,
    ) -> float:  # fmt: skip
        """Count a failed attempt and schedule the next one (exponential backoff)."""
        now = time.time() if now is None else now
        delay = initial_s
        with self.write() as s:
            for row in s.scalars(select(Outbox).where(Outbox.id.in_(outbox_ids))):
                row.attempts += 1
                delay = min(initial_s * 2 ** (row.attempts - 1), max_s)
                row.next_attempt_at, row.last_error = now + delay, error
        return delay

    def latest_result(self, series_uid: str) -> tuple[Job | None, int]:
        """The series' newest finished (done or failed) job and its undelivered objects."""
        with self.read() as s:
            job = s.scalar(
                select(Job)
                .join(Series, Series.id == Job.series_fk)
                .where(
                    Series.series_uid == series_uid,
                    Job.state.in_([JobState.DONE, JobState.FAILED]),
                )
                .order_by(Job.id.desc())
                .limit(1)
            )
            if job is None:
                return None, 0
            pending = s.scalar(
                select(func.count())
                .select_from(Outbox)
                .where(Outbox.job_fk == job.id, Outbox.state != SendState.SENT)
            )
            return job, int(pending or 0)

    # -- events ------------------------------------------------------------------------

    def record_event(
        self, kind: str, message: str, level: str = "ERROR", peer_ae: str = "",
        peer_address: str = "", series_uid: str = "", job_id: int | None = None,
    ) -> None:  # fmt: skip
        try:
            with self.write() as s:
                s.add(
                    EventRow(
                        time=time.time(), level=level, kind=kind, message=message[:4000],
                        peer_ae=peer_ae[:16], peer_address=peer_address[:64],
                        series_uid=series_uid[:64], job_fk=job_id,
                    )
                )  # fmt: skip
        except IntegrityError:  # pragma: no cover - an event is best effort by nature
            pass


def _study_fields(info: InstanceInfo) -> dict[str, str]:
    p, st = info.patient, info.study
    return {
        "patient_id": p.get("PatientID", "")[:64],
        "patient_name": p.get("PatientName", "")[:324],
        "patient_birth_date": p.get("PatientBirthDate", "")[:8],
        "patient_sex": p.get("PatientSex", "")[:16],
        "accession_number": st.get("AccessionNumber", "")[:16],
        "study_date": st.get("StudyDate", "")[:8],
        "study_time": st.get("StudyTime", "")[:16],
        "study_description": st.get("StudyDescription", "")[:64],
        "study_id": st.get("StudyID", "")[:16],
    }
