"""The index's tables (SQLAlchemy ORM). Only `node.store.repository` uses them.

Times are UNIX seconds (UTC). States are stored as their `StrEnum` values, so the
database stays readable with plain SQL (``lge-node status``, tests, an operator's sqlite3).
"""

from __future__ import annotations

from sqlalchemy import Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from node.store.records import JobState, Origin, SendState, SeriesState


class Base(DeclarativeBase):
    pass


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
    # The node that received it first (cluster.node_name; "" when the index is not
    # shared): its results are handed back to, and sent from, that node.
    node: Mapped[str] = mapped_column(String(64), default="", server_default="")
    # How many instances the headers say the series holds (1 for a multi-frame object,
    # ImagesInAcquisition when every instance agrees on it and on one acquisition);
    # -1 once they disagree. Lets the series be judged without waiting stable_age.
    expected: Mapped[int | None] = mapped_column(Integer, nullable=True)
    acquisition: Mapped[int | None] = mapped_column(Integer, nullable=True)


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
    # The node whose data folder holds ``path`` ("" when the index is not shared).
    node: Mapped[str] = mapped_column(String(64), default="", server_default="")


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


class NodeRow(Base):
    """A receiving node sharing the index: where workers reach it for the files it
    holds, and when it last said it was alive."""

    __tablename__ = "nodes"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    url: Mapped[str] = mapped_column(Text, default="")
    data_dir: Mapped[str] = mapped_column(Text, default="")
    host: Mapped[str] = mapped_column(String(255), default="")
    started_at: Mapped[float] = mapped_column(Float)
    seen_at: Mapped[float] = mapped_column(Float)


class Expectation(Base):
    """A series the node retrieved (C-MOVE / C-GET) with every sub-operation done: it is
    complete once it holds that many instances. Recorded by series UID because the
    retrieve may end before the node has indexed the series' first instance."""

    __tablename__ = "expectations"
    series_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    instances: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[float] = mapped_column(Float)


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


class AuditRow(Base):
    """Who did what through the console or the API (logins too), kept for the operator."""

    __tablename__ = "audit"
    id: Mapped[int] = mapped_column(primary_key=True)
    time: Mapped[float] = mapped_column(Float, index=True)
    user: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16), default="")
    action: Mapped[str] = mapped_column(String(64))  # login, rerun, resend, retry, ...
    target: Mapped[str] = mapped_column(Text, default="")  # series UID, job id, destination
    outcome: Mapped[str] = mapped_column(String(16), default="ok")  # ok | refused | failed
    detail: Mapped[str] = mapped_column(Text, default="")
    address: Mapped[str] = mapped_column(String(64), default="")
