"""The node's index: every read and write of its state, and the only module (with the
tables in `node.store.schema`) that speaks SQL.

SQLAlchemy, SQLite in WAL mode by default (any SQLAlchemy URL works). Every state change
of the node is a committed row here, so a restart continues where a crash left off; each
change of a series' or a job's state is checked against `node.workflow.transitions`.
Methods return frozen records (`node.store.records`), never ORM rows. Writers in one
process are serialised by a lock: SQLite allows one writer anyway, and this avoids
"database is locked" on upgrade from read.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Literal, cast

from sqlalchemy import (
    ColumnElement,
    Table,
    and_,
    bindparam,
    case,
    create_engine,
    event,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from node.store import migrate
from node.store.query import KeyMatch, Query
from node.store.records import (
    CORRECTION,
    AuditEntry,
    Claim,
    CorrectionInputs,
    Counts,
    Delivery,
    EventView,
    Identity,
    InstanceInfo,
    InstanceRecord,
    JobRecord,
    JobRow,
    JobState,
    Origin,
    OutboxRecord,
    Page,
    Purge,
    QrRow,
    Received,
    ResultObject,
    SendRow,
    SendState,
    SeriesDetail,
    SeriesRecord,
    SeriesRow,
    SeriesState,
    Snapshot,
    StoredFile,
    StoreOutcome,
    StudyRecord,
)
from node.store.schema import (
    AuditRow,
    Base,
    EventRow,
    Expectation,
    Instance,
    Job,
    NodeRow,
    Outbox,
    PolledStudy,
    Series,
    Study,
)
from node.workflow.transitions import (
    JobEvent,
    SeriesEvent,
    job_after,
    series_after,
    series_may,
)


class OriginCache:
    """Origin of recently seen series (a series UID's origin is fixed once indexed), and
    for a while the series not yet indexed when asked: those cannot be results of this
    node (results get new UIDs and are recorded before anyone is sent them), so the
    instances of a series still arriving need not ask again."""

    UNKNOWN_FOR_S = 60.0

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._known: OrderedDict[str, Origin | float] = OrderedDict()  # float: unknown until
        self._lock = threading.Lock()

    def get(self, series_uid: str) -> Origin | Literal[False] | None:
        """The origin; None: not indexed a moment ago; False: ask the index."""
        with self._lock:
            known = self._known.get(series_uid)
        if isinstance(known, float):
            return None if time.monotonic() < known else False
        return known if known is not None else False

    def put(self, series_uid: str, origin: Origin | None) -> None:
        with self._lock:
            self._known[series_uid] = (
                origin if origin is not None else time.monotonic() + self.UNKNOWN_FOR_S
            )
            while len(self._known) > self.size:
                self._known.popitem(last=False)


def _table(entity: type[Base]) -> Table:
    return cast(Table, entity.__table__)


_HOME_OF_SOP = (
    select(_table(Series).c.series_uid, _table(Instance).c.path)
    .join(_table(Series), _table(Instance).c.series_fk == _table(Series).c.id)
    .where(_table(Instance).c.sop_uid == bindparam("sop"))
)
_ORIGIN_OF_SERIES = select(_table(Series).c.origin).where(
    _table(Series).c.series_uid == bindparam("series")
)


class DriverQuery:
    """A Core SELECT compiled once for the engine's driver, run on a raw pooled driver
    connection: on the C-STORE path, where SQLAlchemy's execution layer (connection,
    result and row objects) cost three times what the query itself does."""

    def __init__(self, engine: Engine, statement: Any) -> None:
        compiled = statement.compile(dialect=engine.dialect)
        self.engine = engine
        self.sql = str(compiled)
        self.order = compiled.positiontup if compiled.positional else None

    def first(self, **params: Any) -> tuple | None:
        args = tuple(params[k] for k in self.order) if self.order is not None else params
        raw = self.engine.raw_connection()
        try:
            cursor = raw.cursor()
            try:
                cursor.execute(self.sql, args)
                row = cursor.fetchone()
            finally:
                cursor.close()
        finally:
            raw.close()  # back to the pool, rolled back there
        return tuple(row) if row is not None else None


def _insert(con: Connection, table: Table, **values: Any) -> int:
    key = con.execute(table.insert().values(**values)).inserted_primary_key
    assert key is not None
    return int(key[0])


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


# -- ORM rows to records -----------------------------------------------------------------


def _series(s: Series) -> SeriesRecord:
    return SeriesRecord(
        id=s.id, study_id=s.study_fk, series_uid=s.series_uid, modality=s.modality,
        sop_class_uid=s.sop_class_uid, description=s.description,
        series_number=s.series_number, image_type=s.image_type,
        scanning_sequence=s.scanning_sequence, calling_ae=s.calling_ae,
        calling_address=s.calling_address, n_instances=s.n_instances,
        first_received=s.first_received, last_received=s.last_received,
        state=SeriesState(s.state), reason=s.reason, kind=s.kind, forced=bool(s.forced),
        origin=Origin(s.origin), derived_from=s.derived_from,
        processed_instances=s.processed_instances, node=s.node,
    )  # fmt: skip


def _study(s: Study) -> StudyRecord:
    return StudyRecord(
        id=s.id, study_uid=s.study_uid, patient_id=s.patient_id, patient_name=s.patient_name,
        patient_birth_date=s.patient_birth_date, patient_sex=s.patient_sex,
        accession_number=s.accession_number, study_date=s.study_date,
        study_time=s.study_time, study_description=s.study_description, study_id=s.study_id,
    )  # fmt: skip


def _instance(i: Instance) -> InstanceRecord:
    return InstanceRecord(
        id=i.id, series_id=i.series_fk, sop_uid=i.sop_uid, sop_class_uid=i.sop_class_uid,
        transfer_syntax=i.transfer_syntax, instance_number=i.instance_number, path=i.path,
        size=i.size,
    )  # fmt: skip


def _job(j: Job) -> JobRecord:
    return JobRecord(
        id=j.id, series_id=j.series_fk, state=JobState(j.state), attempts=j.attempts,
        max_attempts=j.max_attempts, n_instances=j.n_instances, created_at=j.created_at,
        started_at=j.started_at, finished_at=j.finished_at, error=j.error,
        results_dir=j.results_dir, metrics=j.metrics, supersedes=j.supersedes,
        seconds=j.seconds,
    )  # fmt: skip


def _sends(
    job_id: int, objects: list[ResultObject], deliveries: list[Delivery], now: float
) -> list[Outbox]:
    """One pending outbox row per object and destination."""
    rows = []
    for d in deliveries:
        for o in objects:
            rows.append(
                Outbox(
                    job_fk=job_id, destination=d.name, ae_title=d.ae_title, host=d.host,
                    port=d.port, path=o.path, sop_class_uid=o.sop_class_uid, sop_uid=o.sop_uid,
                    created_at=now, next_attempt_at=now, state=SendState.PENDING,
                )
            )  # fmt: skip
    return rows


def _series_row(series: Series, study: Study) -> SeriesRow:
    return SeriesRow(
        study.study_uid, study.accession_number, series.series_uid, series.description,
        series.n_instances, series.state, series.reason, series.calling_ae,
        series.last_received,
    )  # fmt: skip


def _audit(r: AuditRow) -> AuditEntry:
    return AuditEntry(
        r.id, r.time, r.user, r.role, r.action, r.target, r.outcome, r.detail, r.address
    )


def _outbox(o: Outbox) -> OutboxRecord:
    return OutboxRecord(
        id=o.id, job_id=o.job_fk, destination=o.destination, ae_title=o.ae_title,
        host=o.host, port=o.port, path=o.path, sop_class_uid=o.sop_class_uid,
        sop_uid=o.sop_uid, state=SendState(o.state), attempts=o.attempts,
        next_attempt_at=o.next_attempt_at, last_error=o.last_error,
    )  # fmt: skip


# C-FIND keys matched in SQL first, so a query reads only its candidates; the DICOM rule
# (`KeyMatch.test`, in the Q/R SCP) then decides. Integer keys are matched there only.
QR_COLUMNS: dict[str, Any] = {
    "StudyInstanceUID": Study.study_uid,
    "PatientID": Study.patient_id,
    "PatientName": Study.patient_name,
    "PatientBirthDate": Study.patient_birth_date,
    "PatientSex": Study.patient_sex,
    "AccessionNumber": Study.accession_number,
    "StudyDate": Study.study_date,
    "StudyTime": Study.study_time,
    "StudyDescription": Study.study_description,
    "StudyID": Study.study_id,
    "SeriesInstanceUID": Series.series_uid,
    "Modality": Series.modality,
    "SeriesDescription": Series.description,
    "SOPInstanceUID": Instance.sop_uid,
    "SOPClassUID": Instance.sop_class_uid,
}


def _clause(m: KeyMatch, column: Any) -> ColumnElement[bool] | None:
    """``m`` as SQL: never stricter than the DICOM rule, which decides afterwards."""
    if m.kind == "list":
        return column.in_(m.values)
    if m.kind == "range":
        low, high = m.values
        bounds = ([column >= low] if low else []) + ([column <= high] if high else [])
        return and_(*bounds) if bounds else None
    if m.kind == "wild":
        text = m.values[0].replace("%", "\\%").replace("_", "\\_")
        return column.ilike(text.replace("*", "%").replace("?", "_"), escape="\\")
    return column == m.values[0]


class NodeNameTaken(ValueError):
    """Another live node shares the index under this node's name."""


class Repository:
    """All reads and writes of the node's state."""

    def __init__(self, url: str, node: str | None = None) -> None:
        """``node``: this process's node name when the index is shared by several nodes
        (what it receives is recorded as held by it; it sends, purges and serves over
        Q/R only what it holds); None: the only node, nothing is told apart."""
        self.url = url
        self.node = node
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        else:  # a server restarted meanwhile: test pooled connections before use
            kwargs["pool_pre_ping"] = True
        self.engine: Engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        migrate.upgrade(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._home_of_sop = DriverQuery(self.engine, _HOME_OF_SOP)
        self._origin_of_series = DriverQuery(self.engine, _ORIGIN_OF_SERIES)
        self._write = threading.RLock()
        # Told, inside the transaction, of every job that becomes queued (the job engine:
        # `node.store.jobqueue.Procrastinate.queued`); None: workers poll `claim_job`.
        self.on_queued: Callable[[Connection, int, int, float], None] | None = None

    @property
    def _mine(self) -> list[str]:
        """Node names whose files are this node's: its own, and "" (from before the
        index was shared)."""
        return [self.node or "", ""]

    def _held(self, column: Any) -> list[ColumnElement[bool]]:
        """The condition "held by this node" on ``column`` (none when not shared)."""
        return [] if self.node is None else [column.in_(self._mine)]

    def holds(self, series: SeriesRecord) -> bool:
        """Whether this node holds the series' files (always, when not shared)."""
        return self.node is None or series.node in self._mine

    def _queued(self, s: Session, job: Job) -> None:
        s.flush()  # the job's id
        if self.on_queued is not None:
            self.on_queued(s.connection(), job.id, job.series_fk, job.not_before or 0.0)

    def close(self) -> None:
        self.engine.dispose()

    def journal_mode(self) -> str:
        with self.engine.connect() as con:
            return str(con.exec_driver_sql("PRAGMA journal_mode").scalar())

    def job_store(self) -> Any:
        """An apscheduler job store in this database (the PACS polling schedule)."""
        from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore

        return SQLAlchemyJobStore(engine=self.engine)

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with self._sessions() as session:
            yield session

    @contextmanager
    def _writing(self) -> Iterator[Session]:
        with self._write, self._sessions() as session, session.begin():
            yield session

    # -- receiving -------------------------------------------------------------------

    def record_instance(
        self, info: InstanceInfo, path: str, size: int, calling_ae: str, address: str,
        forced: bool = False, now: float | None = None,
    ) -> StoreOutcome:  # fmt: skip
        """Index one received instance."""
        r = Received(info, path, size, calling_ae, address, forced,
                     time.time() if now is None else now)  # fmt: skip
        with self._write, self.engine.begin() as con:
            outcome = self._record_series(con, [r])[0]
        if isinstance(outcome, ValueError):
            raise outcome
        return outcome

    def record_batch(self, items: list[Received]) -> list[StoreOutcome | ValueError]:
        """Index many instances in one transaction; an item that conflicts with what is
        indexed (a series UID reused by another study...) gets its ValueError back.

        A row the database itself refuses (a value no column holds...) must not block the
        rest: the batch is then indexed one instance per transaction, and that instance
        alone gets a ValueError. A database that cannot be reached (OperationalError)
        fails the whole batch, for the caller to try again.
        """
        by_series: dict[str, list[int]] = {}
        for i, r in enumerate(items):
            by_series.setdefault(r.info.series_uid, []).append(i)
        outcomes: list[StoreOutcome | ValueError | None] = [None] * len(items)
        try:
            with self._write, self.engine.begin() as con:
                for positions in by_series.values():
                    done = self._record_series(con, [items[i] for i in positions])
                    for i, outcome in zip(positions, done, strict=True):
                        outcomes[i] = outcome
        except OperationalError:
            raise
        except (SQLAlchemyError, OverflowError, TypeError) as exc:
            if len(items) > 1:
                return [self.record_batch([r])[0] for r in items]
            return [ValueError(f"instance {items[0].info.sop_uid} cannot be indexed: {exc}")]
        return [o for o in outcomes if o is not None]

    def _record_series(
        self, con: Connection, items: list[Received]
    ) -> list[StoreOutcome | ValueError]:
        """Index instances of one series (in arrival order): the hot path of ingest, so
        Core SQL and a handful of statements per series, not per instance."""
        studies, series_t, instances = _table(Study), _table(Series), _table(Instance)
        first = items[0].info
        study_ids: dict[str, int] = {}
        for r in items:
            uid = r.info.study_uid
            if uid not in study_ids:
                found = con.execute(select(studies.c.id).where(studies.c.study_uid == uid)).scalar()
                study_ids[uid] = found if found is not None else _insert(
                    con, studies, study_uid=uid, created_at=r.received_at,
                    **_study_fields(r.info),
                )  # fmt: skip
        row = con.execute(
            select(
                series_t.c.id, series_t.c.study_fk, series_t.c.state, series_t.c.n_instances,
                series_t.c.expected, series_t.c.acquisition,
            ).where(series_t.c.series_uid == first.series_uid)
        ).first()  # fmt: skip
        if row is None:
            r0 = items[0]
            count, hint = 0, (first.size_hint, first.acquisition_number)
            series_id = _insert(
                con, series_t,
                study_fk=study_ids[first.study_uid], series_uid=first.series_uid,
                modality=first.modality, sop_class_uid=first.sop_class_uid,
                description=first.series_description, series_number=first.series_number,
                image_type=first.image_type, scanning_sequence=first.scanning_sequence,
                calling_ae=r0.calling_ae, calling_address=r0.address,
                first_received=r0.received_at, last_received=r0.received_at, n_instances=0,
                forced=r0.forced, state=SeriesState.RECEIVING, reason="", kind="",
                origin=Origin.RECEIVED, processed_instances=0, node=self.node or "",
                expected=hint[0], acquisition=hint[1],
            )  # fmt: skip
            owner, state = study_ids[first.study_uid], SeriesState(SeriesState.RECEIVING)
        else:
            series_id, owner, state, count = row[0], row[1], SeriesState(row[2]), row[3]
            hint = (row[4], row[5])
        expected = hint[0]
        held: dict[str, int] = {}
        sops = [r.info.sop_uid for r in items]
        for at in range(0, len(sops), 500):
            rows = con.execute(
                select(instances.c.sop_uid, instances.c.series_fk).where(
                    instances.c.sop_uid.in_(sops[at : at + 500])
                )
            )
            held.update((sop, fk) for sop, fk in rows)
        node = self.node or ""
        new: dict[str, dict[str, Any]] = {}  # in arrival order; a repeat replaces its row
        outcomes: list[StoreOutcome | ValueError] = []
        reopened_at: int | None = None
        last, forced = 0.0, False
        for r in items:
            info = r.info
            if study_ids[info.study_uid] != owner:
                outcomes.append(ValueError(
                    f"series {info.series_uid} already belongs to another study; "
                    f"instance {info.sop_uid} refused"
                ))  # fmt: skip
                continue
            if info.sop_uid in held and held[info.sop_uid] != series_id:
                outcomes.append(
                    ValueError(f"instance {info.sop_uid} already belongs to another series")
                )
                continue
            duplicate = info.sop_uid in held or info.sop_uid in new
            if info.sop_uid in held:
                # the newest copy is the one served (another node's, in a cluster)
                con.execute(
                    instances.update()
                    .where(instances.c.sop_uid == info.sop_uid)
                    .values(size=r.size, received_at=r.received_at, path=r.path, node=node)
                )
            else:
                new[info.sop_uid] = dict(
                    series_fk=series_id, sop_uid=info.sop_uid,
                    sop_class_uid=info.sop_class_uid, transfer_syntax=info.transfer_syntax,
                    instance_number=info.instance_number, path=r.path, size=r.size,
                    received_at=r.received_at, frames=json.dumps(info.frames), node=node,
                )  # fmt: skip
            if (
                not duplicate
                and expected != -1
                and ((info.size_hint, info.acquisition_number) != hint)
            ):
                # one instance that says otherwise (or nothing): the hint is not trusted
                expected = -1 if expected is not None or info.size_hint is not None else None
            reopened = False
            if not duplicate and reopened_at is None and state != SeriesState.RECEIVING:
                reopened_at = len(outcomes)
                reopened = state in (SeriesState.DONE, SeriesState.FAILED, SeriesState.PROCESSING)
            last, forced = max(last, r.received_at), forced or r.forced
            outcomes.append(StoreOutcome(duplicate, reopened, series_id))
        if new:
            con.execute(instances.insert(), list(new.values()))
        if last == 0.0:
            return outcomes  # every item refused
        values: dict[str, Any] = {"last_received": last}
        if new:
            values["n_instances"] = series_t.c.n_instances + len(new)
        if expected != hint[0]:
            values["expected"] = expected
        if forced:
            values["forced"] = True
        if reopened_at is not None:
            # New data for a series already judged: judge (and maybe process) it again
            # once it is quiet; a job still waiting would see a half-updated series.
            if state == SeriesState.QUEUED:
                con.execute(
                    update(Job)
                    .where(Job.series_fk == series_id, Job.state == JobState.QUEUED)
                    .values(state=job_after(JobState.QUEUED, JobEvent.SERIES_CHANGED),
                            finished_at=last, error="cancelled: more instances arrived")
                )  # fmt: skip
            values.update(state=series_after(state, SeriesEvent.INSTANCE_ADDED), reason="")
        con.execute(series_t.update().where(series_t.c.id == series_id).values(**values))
        if reopened_at is None and state == SeriesState.RECEIVING:
            target = self._expected(con, first.series_uid, expected)
            if target is not None and count + len(new) == target:
                outcomes = [
                    replace(o, complete=True) if isinstance(o, StoreOutcome) else o
                    for o in outcomes
                ]
        return outcomes

    @staticmethod
    def _expected(con: Connection, series_uid: str, hinted: int | None) -> int | None:
        """The instance count that completes a series: a retrieve's, else the headers'."""
        exp = _table(Expectation)
        retrieved = con.execute(
            select(exp.c.instances).where(exp.c.series_uid == series_uid)
        ).scalar()
        if retrieved is not None:
            return int(retrieved)
        return hinted if hinted is not None and hinted > 0 else None

    def expect(self, series_uid: str, instances: int, source: str) -> None:
        """Record that ``series_uid`` is complete at ``instances`` (a retrieve the node
        made, every sub-operation done); expectations older than a day are dropped."""
        exp = _table(Expectation)
        now = time.time()
        with self._write, self.engine.begin() as con:
            con.execute(exp.delete().where(
                or_(exp.c.series_uid == series_uid, exp.c.created_at < now - 86400)
            ))  # fmt: skip
            con.execute(exp.insert().values(
                series_uid=series_uid, instances=instances, source=source[:64], created_at=now
            ))  # fmt: skip

    def complete_studies(self) -> list[int]:
        """Studies whose receiving series all hold the instances they are expected to
        (a retrieve's count, else the headers' hint): judged without waiting."""
        series_t, exp = _table(Series), _table(Expectation)
        target = func.coalesce(
            exp.c.instances, case((series_t.c.expected > 0, series_t.c.expected), else_=None)
        )
        whole = case((series_t.c.n_instances == target, 1), else_=0)
        with self._read() as s:
            rows = s.execute(
                select(series_t.c.study_fk)
                .select_from(series_t.outerjoin(exp, exp.c.series_uid == series_t.c.series_uid))
                .where(series_t.c.state == SeriesState.RECEIVING, *self._held(series_t.c.node))
                .group_by(series_t.c.study_fk)
                .having(func.min(whole) == 1)
            )
            return [r[0] for r in rows]

    def known_paths(self) -> set[str]:
        """Paths of every indexed instance (start-up reconciliation)."""
        with self._read() as s:
            return set(s.scalars(select(Instance.path)))

    def series_state(self, series_uid: str) -> SeriesState | None:
        with self._read() as s:
            state = s.scalar(select(Series.state).where(Series.series_uid == series_uid))
            return SeriesState(state) if state is not None else None

    def identity(
        self, sop_uid: str, series_uid: str, origins: OriginCache | None = None
    ) -> Identity:
        # Asked on every C-STORE before it is acknowledged: statements compiled once and
        # run on the driver, and a series' origin (which never changes) asked once.
        cached = origins.get(series_uid) if origins is not None else False
        home = self._home_of_sop.first(sop=sop_uid)
        if cached is False:
            found = self._origin_of_series.first(series=series_uid)
            origin = found[0] if found is not None else None
            if origins is not None:
                origins.put(series_uid, Origin(origin) if origin is not None else None)
        else:
            origin = cached
        return Identity(
            home_series=home[0] if home else None,
            home_path=home[1] if home else None,
            series_origin=Origin(origin) if origin is not None else None,
        )

    def series_by_uid(self, series_uid: str) -> SeriesRecord | None:
        with self._read() as s:
            row = s.scalar(select(Series).where(Series.series_uid == series_uid))
            return _series(row) if row is not None else None

    # -- completion and selection ----------------------------------------------------

    def quiet_studies(self, stable_age_s: float, now: float | None = None) -> list[int]:
        """Studies with a receiving series where no series received anything for a while."""
        now = time.time() if now is None else now
        with self._read() as s:
            receiving = select(Series.study_fk).where(
                Series.state == SeriesState.RECEIVING, *self._held(Series.node)
            )
            latest = (
                select(Series.study_fk, func.max(Series.last_received).label("last"))
                .where(Series.study_fk.in_(receiving))
                .group_by(Series.study_fk)
                .subquery()
            )
            rows = s.execute(select(latest.c.study_fk).where(latest.c.last <= now - stable_age_s))
            return [r[0] for r in rows]

    def study_series(self, study_id: int) -> list[SeriesRecord]:
        with self._read() as s:
            return [
                _series(r) for r in s.scalars(select(Series).where(Series.study_fk == study_id))
            ]

    def series(self, series_id: int) -> SeriesRecord:
        with self._read() as s:
            row = s.get(Series, series_id)
            if row is None:
                raise KeyError(f"no series {series_id}")
            return _series(row)

    def series_frames(self, series_id: int) -> list[tuple[str | None, float | None]]:
        with self._read() as s:
            frames: list[tuple[str | None, float | None]] = []
            for text in s.scalars(select(Instance.frames).where(Instance.series_fk == series_id)):
                frames.extend((pos, ti) for pos, ti in json.loads(text))
            return frames

    def skip_series(self, series_id: int, reason: str, kind: str = "") -> bool:
        """Mark a quiet series as not to be processed; False if it changed meanwhile."""
        with self._writing() as s:
            series = s.get(Series, series_id)
            if series is None or series.state != SeriesState.RECEIVING:
                return False
            series.state = series_after(series.state, SeriesEvent.SKIPPED)
            series.reason, series.kind = reason, kind
            return True

    def enqueue(
        self, series_id: int, kind: str, reason: str, max_attempts: int,
        source_id: int | None = None, now: float | None = None,
    ) -> int | None:  # fmt: skip
        """Queue a job for a quiet series; None if the series changed meanwhile.

        ``source_id``: for a reader's correction (kind ``correction``), the series it edits.
        """
        now = time.time() if now is None else now
        with self._writing() as s:
            # Locked: nodes sharing the index judge the same quiet series at most once.
            series = s.get(Series, series_id, with_for_update=True)
            if series is None or series.state != SeriesState.RECEIVING:
                return None
            if source_id is not None:
                series.derived_from = source_id
            job = Job(
                series_fk=series_id, max_attempts=max_attempts,
                n_instances=series.n_instances, created_at=now, state=JobState.QUEUED,
            )  # fmt: skip
            s.add(job)
            series.state = series_after(series.state, SeriesEvent.QUEUED)
            series.reason, series.kind = reason, kind
            self._queued(s, job)
            return job.id

    # -- jobs --------------------------------------------------------------------------

    def recover_jobs(self, now: float | None = None) -> list[int]:
        """At start-up of the embedded engine: jobs a crash left running go back to the
        queue (or fail, if used up; or are cancelled, if their series moved on meanwhile).
        With procrastinate, a lost worker's job is found by its stopped heartbeat instead
        (`requeue_lost`): other workers' running jobs are not this node's to touch."""
        now = time.time() if now is None else now
        recovered = []
        with self._writing() as s:
            for job in s.scalars(select(Job).where(Job.state == JobState.RUNNING)):
                self._recover(s, job, now, "node stopped")
                recovered.append(job.id)
        return recovered

    def requeue_lost(self, job_id: int, now: float | None = None) -> bool:
        """A running job whose worker is gone: True when it is queued again (the caller's
        engine runs it again), False when it failed (attempts used up), was cancelled
        (the series moved on) or is not running any more."""
        now = time.time() if now is None else now
        with self._writing() as s:
            job = s.get(Job, job_id, with_for_update=True)
            if job is None or job.state != JobState.RUNNING:
                return False
            return self._recover(s, job, now, "worker lost")

    @staticmethod
    def _recover(s: Session, job: Job, now: float, why: str) -> bool:
        series = s.get(Series, job.series_fk)
        assert series is not None
        if series.state != SeriesState.PROCESSING:
            job.state = job_after(job.state, JobEvent.SERIES_CHANGED)
            job.finished_at, job.error = now, "cancelled: the series changed"
            return False
        if job.attempts >= job.max_attempts:
            job.state, job.finished_at = job_after(job.state, JobEvent.GAVE_UP), now
            job.error = (job.error + "\n" if job.error else "") + (
                f"{why} during attempt {job.attempts} of {job.max_attempts}"
            )
            series.state = series_after(series.state, SeriesEvent.JOB_FAILED)
            return False
        job.state = job_after(job.state, JobEvent.NODE_RESTARTED)
        job.not_before = now
        series.state = series_after(series.state, SeriesEvent.NODE_RESTARTED)
        return True

    def claim_job(self, now: float | None = None, job_id: int | None = None) -> Claim | None:
        """Take the oldest due job (or job ``job_id``, which an engine handed over, if it
        is still queued), with all a worker needs to run it."""
        now = time.time() if now is None else now
        with self._writing() as s:
            if job_id is not None:
                job = s.get(Job, job_id, with_for_update=True)
                if job is not None and job.state != JobState.QUEUED:
                    job = None  # cancelled or done meanwhile: nothing to run
            else:
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
            job.state, job.started_at = job_after(job.state, JobEvent.CLAIMED), now
            job.attempts += 1
            series = s.get(Series, job.series_fk)
            assert series is not None
            series.state = series_after(series.state, SeriesEvent.JOB_STARTED)
            correction = None
            reports_of = [series.id]  # whose newest report this job's supersedes
            if series.kind == CORRECTION and series.derived_from is not None:
                source = s.get(Series, series.derived_from)
                assert source is not None
                correction = CorrectionInputs(_series(source), self._files(s, source.id))
                reports_of = [source.id, *self._corrections_of(s, source.id)]
            job.supersedes = s.scalar(
                select(Job.id)
                .where(Job.series_fk.in_(reports_of), Job.state == JobState.DONE)
                .order_by(Job.id.desc())
                .limit(1)
            )
            previous = s.get(Job, job.supersedes) if job.supersedes is not None else None
            previous_series = s.get(Series, previous.series_fk) if previous else None
            return Claim(
                job_id=job.id,
                attempt=job.attempts,
                series=_series(series),
                files=self._files(s, series.id),
                previous_results=previous.results_dir if previous and previous.results_dir
                else None,
                correction=correction,
                previous_job=previous.id if previous else None,
                previous_node=previous_series.node if previous_series else "",
            )  # fmt: skip

    @staticmethod
    def _files(s: Session, series_id: int) -> list[StoredFile]:
        """A series' instance files with where they lie, the newest received first."""
        rows = s.execute(
            select(Study.study_uid, Series.series_uid, Instance.sop_uid, Instance.path,
                   Instance.node)
            .join(Series, Series.study_fk == Study.id)
            .join(Instance, Instance.series_fk == Series.id)
            .where(Instance.series_fk == series_id)
            .order_by(Instance.received_at.desc(), Instance.id.desc())
        )  # fmt: skip
        return [StoredFile(*row) for row in rows]

    @staticmethod
    def _paths(s: Session, series_id: int) -> list[str]:
        """A series' instance files, the newest received first."""
        return [f.path for f in Repository._files(s, series_id)]

    @staticmethod
    def _corrections_of(s: Session, source_id: int) -> list[int]:
        return list(
            s.scalars(
                select(Series.id).where(
                    Series.derived_from == source_id,
                    Series.origin == Origin.RECEIVED,
                    Series.kind == CORRECTION,
                )
            )
        )

    def series_paths(self, series_id: int) -> list[str]:
        """A series' instance files, the newest received first."""
        with self._read() as s:
            return self._paths(s, series_id)

    def has_report(self, series_id: int) -> bool:
        """Whether a job on the series finished with results."""
        with self._read() as s:
            found = s.scalar(
                select(Job.id).where(Job.series_fk == series_id, Job.state == JobState.DONE)
            )
            return found is not None

    def job(self, job_id: int) -> JobRecord:
        with self._read() as s:
            row = s.get(Job, job_id)
            if row is None:
                raise KeyError(f"no job {job_id}")
            return _job(row)

    def finish_job(
        self, job_id: int, results_dir: str, metrics: str, objects: list[ResultObject],
        deliveries: list[Delivery], seconds: float, now: float | None = None,
    ) -> None:  # fmt: skip
        """Job done, its results indexed (as series of origin ``result``, so Q/R clients
        can find them) and its outbox rows, in one transaction: a crash gives all or none.
        """
        now = time.time() if now is None else now
        with self._writing() as s:
            job = s.get(Job, job_id)
            assert job is not None
            job.state = job_after(job.state, JobEvent.FINISHED)
            job.finished_at, job.seconds = now, seconds
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
                        node=source.node,  # results are handed back to its node
                    )
                )  # fmt: skip
            s.add_all(_sends(job_id, objects, deliveries, now))
            source.processed_instances = job.n_instances
            was = source.state
            source.state = series_after(was, SeriesEvent.JOB_DONE)
            if was == SeriesState.PROCESSING:
                source.reason = source.reason or "processed"

    def fail_job(
        self, job_id: int, error: str, retry_delay_s: float, final: bool = False,
        now: float | None = None,
    ) -> bool:  # fmt: skip
        """Record a failed attempt; True when the job will be tried again.

        ``final``: trying again cannot help (the data is unusable); no further attempts.
        """
        now = time.time() if now is None else now
        with self._writing() as s:
            job = s.get(Job, job_id)
            assert job is not None
            series = s.get(Series, job.series_fk)
            assert series is not None
            job.error = error
            again = not final and job.attempts < job.max_attempts
            moved_on = series.state != SeriesState.PROCESSING
            if again and moved_on:
                # New instances came while it ran: the series is judged again and gets a
                # job of its own with every instance; this one would be a duplicate.
                job.state, job.finished_at = job_after(job.state, JobEvent.SERIES_CHANGED), now
                return False
            if again:
                job.state = job_after(job.state, JobEvent.RETRY)
                job.not_before = now + retry_delay_s
                series.state = series_after(series.state, SeriesEvent.JOB_RETRY)
                self._queued(s, job)
            else:
                job.state, job.finished_at = job_after(job.state, JobEvent.GAVE_UP), now
                series.state = series_after(series.state, SeriesEvent.JOB_FAILED)
                if not moved_on:
                    series.reason = error.splitlines()[0][:500]
            return again

    def latest_result(self, series_uid: str) -> tuple[JobRecord | None, int]:
        """The series' newest finished (done or failed) job and its undelivered objects."""
        with self._read() as s:
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
            return _job(job), int(pending or 0)

    # -- dispatch ----------------------------------------------------------------------

    def due_sends(
        self, now: float | None = None, limit: int = 1000, lease_s: float = 300.0
    ) -> list[OutboxRecord]:
        """Rows due for sending, leased to the caller for ``lease_s``: another node sharing
        the index skips them (row locks, SKIP LOCKED) and, should the caller die, sends
        them once the lease has passed. `mark_sent` / `mark_send_failed` end the lease."""
        now = time.time() if now is None else now
        with self._writing() as s:
            q = select(Outbox).where(
                Outbox.state == SendState.PENDING, Outbox.next_attempt_at <= now
            )
            if self.node is not None:  # the files are in the holding node's folder
                q = q.where(
                    Outbox.job_fk.in_(
                        select(Job.id)
                        .join(Series, Series.id == Job.series_fk)
                        .where(Series.node.in_(self._mine))
                    )
                )
            rows = list(
                s.scalars(q.order_by(Outbox.id).limit(limit).with_for_update(skip_locked=True))
            )
            records = [_outbox(r) for r in rows]
            for r in rows:
                r.next_attempt_at = now + lease_s
            return records

    def mark_sent(self, outbox_ids: list[int], now: float | None = None) -> None:
        now = time.time() if now is None else now
        if not outbox_ids:
            return
        with self._writing() as s:
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
        with self._writing() as s:
            for row in s.scalars(select(Outbox).where(Outbox.id.in_(outbox_ids))):
                row.attempts += 1
                delay = min(initial_s * 2 ** (row.attempts - 1), max_s)
                row.next_attempt_at, row.last_error = now + delay, error
        return delay

    # -- retention ---------------------------------------------------------------------

    def purge_candidates(self, cutoff: float) -> list[int]:
        """Received series, finished before ``cutoff``, whose results were all delivered."""
        with self._read() as s:
            undelivered = (
                select(Job.series_fk)
                .join(Outbox, Outbox.job_fk == Job.id)
                .where(Outbox.state != SendState.SENT)
            )
            return list(
                s.scalars(
                    select(Series.id).where(
                        Series.origin == Origin.RECEIVED,  # results go with their source
                        Series.state.in_([SeriesState.SKIPPED, SeriesState.DONE]),
                        Series.last_received <= cutoff,
                        Series.id.not_in(undelivered),
                        *self._held(Series.node),
                    )
                )
            )

    def purge_series(self, series_id: int, cutoff: float) -> Purge | None:
        """Mark a series (and its result series) purged; returns the files to delete, or
        None when it changed since `purge_candidates` (an instance arrived...)."""
        with self._writing() as s:
            series = s.get(Series, series_id)
            if series is None or not series_may(series.state, SeriesEvent.PURGED):
                return None
            if series.last_received > cutoff:
                return None
            paths = list(s.scalars(select(Instance.path).where(Instance.series_fk == series_id)))
            results = list(
                s.scalars(
                    select(Job.results_dir).where(Job.series_fk == series_id, Job.results_dir != "")
                )
            )
            # its result series go with it; a reader's correction (received) has its own time
            derived = select(Series).where(
                Series.derived_from == series_id, Series.origin == Origin.RESULT
            )
            for d in s.scalars(derived):
                s.execute(_table(Instance).delete().where(Instance.series_fk == d.id))
                d.state, d.n_instances = SeriesState.PURGED, 0
            s.execute(_table(Instance).delete().where(Instance.series_fk == series_id))
            series.state = series_after(series.state, SeriesEvent.PURGED)
            series.reason = (series.reason + "; " if series.reason else "") + "files purged"
            return Purge(series.series_uid, len(paths), paths, results)

    # -- Query/Retrieve ----------------------------------------------------------------

    def qr_rows(self, query: Query) -> list[QrRow]:
        """Candidate instances for a C-FIND/C-MOVE/C-GET identifier (narrowed in SQL)."""
        q = (
            select(Study, Series, Instance)
            .join(Series, Series.study_fk == Study.id)
            .join(Instance, Instance.series_fk == Series.id)
            .where(Series.state != SeriesState.PURGED, *self._held(Instance.node))
        )
        for keyword, m in query.criteria.items():
            clause = _clause(m, QR_COLUMNS[keyword]) if keyword in QR_COLUMNS else None
            if clause is not None:
                q = q.where(clause)
        if query.senders is not None:
            sent = _table(Series).alias("sent")
            q = q.where(
                select(sent.c.id)
                .where(sent.c.study_fk == Study.id, sent.c.calling_ae.in_(query.senders))
                .where(sent.c.origin == Origin.RECEIVED)
                .exists()
            )
        if query.modalities:
            other = _table(Series).alias("other")
            q = q.where(
                select(other.c.id)
                .where(other.c.study_fk == Study.id, other.c.modality.in_(query.modalities))
                .where(other.c.state != SeriesState.PURGED)
                .exists()
            )
        with self._read() as s:
            return [
                QrRow(_study(st), _series(se), _instance(i)) for st, se, i in s.execute(q).all()
            ]

    # -- nodes sharing the index --------------------------------------------------------

    def register_node(
        self, url: str, data_dir: str, host: str, alive_s: float = 90.0,
        now: float | None = None,
    ) -> None:  # fmt: skip
        """Record this node (``self.node``) and where workers reach it. Refused while
        another live node (seen within ``alive_s``, other data folder) has the name."""
        assert self.node is not None, "only a node sharing the index registers"
        now = time.time() if now is None else now
        with self._writing() as s:
            row = s.get(NodeRow, self.node, with_for_update=True)
            if row is None:
                s.add(NodeRow(name=self.node, url=url, data_dir=data_dir, host=host,
                              started_at=now, seen_at=now))  # fmt: skip
                return
            if (row.host, row.data_dir) != (host, data_dir) and now - row.seen_at < alive_s:
                raise NodeNameTaken(
                    f"another node named {self.node!r} is running ({row.host}, data folder "
                    f"{row.data_dir}): give each node its own cluster.node_name"
                )
            row.url, row.data_dir, row.host = url, data_dir, host
            row.started_at = row.seen_at = now

    def node_alive(self, now: float | None = None) -> None:
        assert self.node is not None
        now = time.time() if now is None else now
        with self._writing() as s:
            s.execute(update(NodeRow).where(NodeRow.name == self.node).values(seen_at=now))

    def node_url(self, name: str) -> str | None:
        """Where a node said it is reached (None: no such node registered)."""
        with self._read() as s:
            row = s.get(NodeRow, name)
            return row.url if row is not None else None

    # -- polling -----------------------------------------------------------------------

    def polled_studies(self, pacs: str) -> set[str]:
        with self._read() as s:
            return set(s.scalars(select(PolledStudy.study_uid).where(PolledStudy.pacs == pacs)))

    def mark_polled(self, pacs: str, study_uid: str, outcome: str) -> None:
        with self._writing() as s:
            s.add(PolledStudy(pacs=pacs, study_uid=study_uid, seen_at=time.time(),
                              outcome=outcome))  # fmt: skip

    # -- events and the operator's view ------------------------------------------------

    def record_event(
        self, kind: str, message: str, level: str = "ERROR", peer_ae: str = "",
        peer_address: str = "", series_uid: str = "", job_id: int | None = None,
        at: float | None = None,
    ) -> None:  # fmt: skip
        try:
            with self._writing() as s:
                s.add(
                    EventRow(
                        time=at or time.time(), level=level, kind=kind, message=message[:4000],
                        peer_ae=peer_ae[:16], peer_address=peer_address[:64],
                        series_uid=series_uid[:64], job_fk=job_id,
                    )
                )  # fmt: skip
        except IntegrityError:  # pragma: no cover - an event is best effort by nature
            pass

    def snapshot(self, limit: int = 20) -> Snapshot:
        """Recent series, jobs, sends per destination and events (``lge-node status``)."""
        snap = Snapshot(taken_at=time.time())
        with self._read() as s:
            rows = s.execute(
                select(Series, Study)
                .join(Study, Study.id == Series.study_fk)
                .order_by(Series.last_received.desc())
                .limit(limit)
            )
            for series, study in rows:
                snap.series.append(_series_row(series, study))
            for job, uid in s.execute(
                select(Job, Series.series_uid)
                .join(Series, Series.id == Job.series_fk)
                .order_by(Job.id.desc())
                .limit(limit)
            ):
                scar = json.loads(job.metrics).get("scar_percent") if job.metrics else None
                snap.jobs.append(
                    JobRow(
                        job.id, uid, job.state, job.attempts, job.max_attempts, job.seconds,
                        scar, job.error.splitlines()[0] if job.error else "", job.created_at,
                    )
                )  # fmt: skip
            snap.sends = self._send_rows(s)
            for ev in s.scalars(select(EventRow).order_by(EventRow.id.desc()).limit(limit)):
                peer = f"{ev.peer_ae}@{ev.peer_address}" if ev.peer_ae else ev.peer_address
                snap.events.append(EventView(ev.time, ev.level, ev.kind, peer, ev.message))
        return snap

    @staticmethod
    def _send_rows(s: Session) -> list[SendRow]:
        rows = []
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
            rows.append(
                SendRow(
                    dest, counts.get(SendState.PENDING, 0), counts.get(SendState.SENT, 0),
                    last[0] if last else "", last[1] if last else None,
                )
            )  # fmt: skip
        return rows

    def send_rows(self) -> list[SendRow]:
        """Sends per destination: pending, sent, the last error and the next try."""
        with self._read() as s:
            return self._send_rows(s)

    # -- the console and the REST API ------------------------------------------------

    def series_page(
        self, state: str | None = None, search: str = "", offset: int = 0, limit: int = 50
    ) -> Page[SeriesRow]:
        """Received series, newest first; ``search`` matches the start of a series or study
        UID, an accession number or a description (indexed columns, one page read)."""
        where: list[ColumnElement[bool]] = [Series.origin == Origin.RECEIVED]
        if state:
            where.append(Series.state == state)
        if search:
            like = search.replace("\\", "").replace("%", "").replace("_", "\\_") + "%"
            where.append(
                Series.series_uid.like(like, escape="\\")
                | Study.study_uid.like(like, escape="\\")
                | Study.accession_number.like(like, escape="\\")
                | Series.description.like(like, escape="\\")
            )
        with self._read() as s:
            total = s.scalar(
                select(func.count()).select_from(Series)
                .join(Study, Study.id == Series.study_fk).where(*where)
            )  # fmt: skip
            rows = s.execute(
                select(Series, Study)
                .join(Study, Study.id == Series.study_fk)
                .where(*where)
                .order_by(Series.last_received.desc(), Series.id.desc())
                .offset(offset)
                .limit(limit)
            )
            items = [_series_row(series, study) for series, study in rows]
        return Page(items, int(total or 0), offset, limit)

    def jobs_page(self, state: str | None = None, offset: int = 0, limit: int = 50) -> Page[JobRow]:
        where = [Job.state == state] if state else []
        with self._read() as s:
            total = s.scalar(select(func.count()).select_from(Job).where(*where))
            items = []
            for job, uid in s.execute(
                select(Job, Series.series_uid)
                .join(Series, Series.id == Job.series_fk)
                .where(*where)
                .order_by(Job.id.desc())
                .offset(offset)
                .limit(limit)
            ):
                scar = json.loads(job.metrics).get("scar_percent") if job.metrics else None
                items.append(
                    JobRow(
                        job.id, uid, job.state, job.attempts, job.max_attempts, job.seconds,
                        scar, job.error.splitlines()[0] if job.error else "", job.created_at,
                    )
                )  # fmt: skip
        return Page(items, int(total or 0), offset, limit)

    def series_detail(self, series_uid: str) -> SeriesDetail | None:
        with self._read() as s:
            series = s.scalar(select(Series).where(Series.series_uid == series_uid))
            if series is None:
                return None
            study = s.get(Study, series.study_fk)
            assert study is not None
            jobs = s.scalars(select(Job).where(Job.series_fk == series.id).order_by(Job.id.desc()))
            results = s.scalars(
                select(Series)
                .where(Series.derived_from == series.id, Series.origin == Origin.RESULT)
                .order_by(Series.id)
            )
            return SeriesDetail(
                _series(series), _study(study), [_job(j) for j in jobs],
                [_series(r) for r in results],
            )  # fmt: skip

    def instances_of(self, series_id: int) -> list[InstanceRecord]:
        """A series' instances by instance number (the console's image strip)."""
        with self._read() as s:
            rows = s.scalars(
                select(Instance)
                .where(Instance.series_fk == series_id)
                .order_by(Instance.instance_number, Instance.id)
            )
            return [_instance(i) for i in rows]

    def instance_by_uid(self, sop_uid: str) -> InstanceRecord | None:
        with self._read() as s:
            row = s.scalar(select(Instance).where(Instance.sop_uid == sop_uid))
            return _instance(row) if row is not None else None

    def counts(self, now: float | None = None) -> Counts:
        now = time.time() if now is None else now
        since = (now // 3600 - 23) * 3600  # the start of the hour 23 hours ago
        with self._read() as s:
            series = dict(
                s.execute(
                    select(Series.state, func.count())
                    .where(Series.origin == Origin.RECEIVED)
                    .group_by(Series.state)
                ).all()
            )
            jobs = dict(s.execute(select(Job.state, func.count()).group_by(Job.state)).all())
            pending, oldest = s.execute(
                select(func.count(), func.min(Outbox.created_at)).where(
                    Outbox.state == SendState.PENDING
                )
            ).one()
            hour = func.floor(Instance.received_at / 3600) * 3600
            received = s.execute(
                select(hour, func.count())
                .join(Series, Series.id == Instance.series_fk)
                .where(Instance.received_at >= since, Series.origin == Origin.RECEIVED)
                .group_by(hour)
            ).all()
            sent_hour = func.floor(Outbox.sent_at / 3600) * 3600
            delivered = s.execute(
                select(sent_hour, func.count())
                .where(Outbox.state == SendState.SENT, Outbox.sent_at >= since)
                .group_by(sent_hour)
            ).all()
            instances, size = s.execute(
                select(func.count(), func.coalesce(func.sum(Instance.size), 0))
            ).one()

        def hourly(rows: list[Any]) -> list[tuple[float, int]]:
            got = {float(h): int(n) for h, n in rows}
            return [(since + 3600 * i, got.get(since + 3600 * i, 0)) for i in range(24)]

        return Counts(
            series={str(k): int(v) for k, v in series.items()},
            jobs={str(k): int(v) for k, v in jobs.items()},
            sends_pending=int(pending or 0),
            oldest_pending_s=now - oldest if oldest is not None else None,
            received_per_hour=hourly(list(received)),
            delivered_per_hour=hourly(list(delivered)),
            instances=int(instances or 0),
            stored_bytes=int(size or 0),
        )

    def requeue(
        self, series_id: int, reason: str, max_attempts: int, kind: str | None = None,
        now: float | None = None,
    ) -> int | None:  # fmt: skip
        """An operator's re-run (done, failed) or force (skipped): a new job, or None when
        the series is receiving, queued, running or purged (nothing to do, or no files)."""
        now = time.time() if now is None else now
        with self._writing() as s:
            series = s.get(Series, series_id, with_for_update=True)
            if series is None or not series_may(series.state, SeriesEvent.REQUESTED):
                return None
            job = Job(
                series_fk=series_id, max_attempts=max_attempts,
                n_instances=series.n_instances, created_at=now, state=JobState.QUEUED,
            )  # fmt: skip
            s.add(job)
            series.state = series_after(series.state, SeriesEvent.REQUESTED)
            series.reason = reason
            if kind is not None:
                series.kind = kind
            self._queued(s, job)
            return job.id

    def add_sends(
        self, job_id: int, objects: list[ResultObject], deliveries: list[Delivery],
        now: float | None = None,
    ) -> int:  # fmt: skip
        """Outbox rows to send a finished job's objects again; returns how many."""
        now = time.time() if now is None else now
        with self._writing() as s:
            s.add_all(_sends(job_id, objects, deliveries, now))
        return len(objects) * len(deliveries)

    def oldest_pending(self, destination: str) -> float | None:
        """When the oldest undelivered object for ``destination`` was queued."""
        with self._read() as s:
            oldest: float | None = s.scalar(
                select(func.min(Outbox.created_at)).where(
                    Outbox.destination == destination, Outbox.state == SendState.PENDING
                )
            )
            return oldest

    def retry_destination(self, destination: str, now: float | None = None) -> int:
        """Pending sends to ``destination`` become due now; returns how many."""
        now = time.time() if now is None else now
        with self._writing() as s:
            result = s.execute(
                update(Outbox)
                .where(Outbox.destination == destination, Outbox.state == SendState.PENDING)
                .values(next_attempt_at=now)
            )
            return int(cast(Any, result).rowcount or 0)

    def record_audit(
        self, user: str, role: str, action: str, target: str = "", outcome: str = "ok",
        detail: str = "", address: str = "", now: float | None = None,
    ) -> None:  # fmt: skip
        with self._writing() as s:
            s.add(
                AuditRow(
                    time=time.time() if now is None else now, user=user[:64], role=role,
                    action=action, target=target, outcome=outcome, detail=detail[:2000],
                    address=address[:64],
                )
            )  # fmt: skip

    def audit_page(self, offset: int = 0, limit: int = 50) -> Page[AuditEntry]:
        with self._read() as s:
            total = s.scalar(select(func.count()).select_from(AuditRow))
            rows = s.scalars(
                select(AuditRow).order_by(AuditRow.id.desc()).offset(offset).limit(limit)
            )
            items = [_audit(r) for r in rows]
        return Page(items, int(total or 0), offset, limit)


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
