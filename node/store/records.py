"""What crosses the store's boundary: the states of series, jobs and sends, and small
frozen records. Nothing here touches the database; `node.store.repository` fills these
from it and every other module reads them, never an ORM row."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Generic, TypeVar

from dicom_templates.written import WrittenObject


class SeriesState(StrEnum):
    RECEIVING = "receiving"  # instances arriving; not yet quiet for stable_age
    SKIPPED = "skipped"  # complete, not an LGE series (reason recorded)
    QUEUED = "queued"  # a job waits for it
    PROCESSING = "processing"
    DONE = "done"  # results written and handed to the outbox
    FAILED = "failed"  # its job gave up (error recorded)
    PURGED = "purged"  # files removed after the retention time


class Origin(StrEnum):
    RECEIVED = "received"  # sent to the node (or retrieved by it)
    RESULT = "result"  # written by a job (SEG, SR, overlays); served to Q/R clients


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"  # its series changed before it started


class SendState(StrEnum):
    PENDING = "pending"
    SENT = "sent"


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
    patient: Mapping[str, str]  # PatientID, PatientName, ... (index only, never logged)
    study: Mapping[str, str]
    images_in_acquisition: int | None = None  # (0020,1002): a hint of the series' size
    acquisition_number: int | None = None

    @property
    def size_hint(self) -> int | None:
        """Instances this one says its series holds: 1 for a multi-frame object, else
        ImagesInAcquisition (from 2); None when it does not say."""
        if len(self.frames) > 1:
            return 1
        n = self.images_in_acquisition
        return n if n is not None and n >= 2 else None


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
    complete: bool = False  # the series now holds the instances it is expected to


# One DICOM object a job wrote (SEG, SR or an overlay), as the builders describe it.
ResultObject = WrittenObject


@dataclass(frozen=True)
class Delivery:
    """One destination for a finished job."""

    name: str
    ae_title: str
    host: str
    port: int


@dataclass(frozen=True)
class SeriesRecord:
    id: int
    study_id: int
    series_uid: str
    modality: str
    sop_class_uid: str
    description: str
    series_number: int | None
    image_type: str
    scanning_sequence: str
    calling_ae: str
    calling_address: str
    n_instances: int
    first_received: float
    last_received: float
    state: SeriesState
    reason: str
    kind: str
    forced: bool
    origin: Origin
    # A result series: the received series it was computed from. A reader's correction
    # (a received SEG, kind "correction"): the series whose segmentation it edits.
    derived_from: int | None
    processed_instances: int
    node: str = ""  # the node holding it when the index is shared (cluster.node_name)


@dataclass(frozen=True)
class StudyRecord:
    id: int
    study_uid: str
    patient_id: str
    patient_name: str
    patient_birth_date: str
    patient_sex: str
    accession_number: str
    study_date: str
    study_time: str
    study_description: str
    study_id: str


@dataclass(frozen=True)
class InstanceRecord:
    id: int
    series_id: int
    sop_uid: str
    sop_class_uid: str
    transfer_syntax: str
    instance_number: int | None
    path: str
    size: int


@dataclass(frozen=True)
class JobRecord:
    id: int
    series_id: int
    state: JobState
    attempts: int
    max_attempts: int
    n_instances: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    error: str
    results_dir: str
    metrics: str  # metrics.json as written
    supersedes: int | None
    seconds: float | None


CORRECTION = "correction"  # the kind of a received SEG that edits one of our segmentations


@dataclass(frozen=True)
class StoredFile:
    """An indexed instance file: its path in the data folder of the node holding it
    (``node``, "" when the index is not shared), and the UIDs to fetch it by."""

    study_uid: str
    series_uid: str
    sop_uid: str
    path: str
    node: str = ""


@dataclass(frozen=True)
class CorrectionInputs:
    """What a correction job reads besides the reader's SEG: the series it segments."""

    source: SeriesRecord
    source_files: list[StoredFile]

    @property
    def source_paths(self) -> list[str]:
        return [f.path for f in self.source_files]


@dataclass(frozen=True)
class Claim:
    """Everything a worker needs to run a job it has just claimed, read in one go."""

    job_id: int
    attempt: int
    series: SeriesRecord
    files: list[StoredFile]  # newest first
    previous_results: str | None  # results folder of the job this one supersedes
    correction: CorrectionInputs | None = None  # set when the series is a reader's SEG
    previous_job: int | None = None  # the job this one supersedes
    previous_node: str = ""  # the node holding that job's results

    @property
    def paths(self) -> list[str]:
        return [f.path for f in self.files]


@dataclass(frozen=True)
class OutboxRecord:
    id: int
    job_id: int
    destination: str
    ae_title: str
    host: str
    port: int
    path: str
    sop_class_uid: str
    sop_uid: str
    state: SendState
    attempts: int
    next_attempt_at: float
    last_error: str


@dataclass(frozen=True)
class Purge:
    """What a purged series leaves to delete on disk (the rows are already updated)."""

    series_uid: str
    instances: int
    paths: list[str]
    result_dirs: list[str]


@dataclass(frozen=True)
class QrRow:
    """One instance with its series and study, as the Q/R SCP matches them."""

    study: StudyRecord
    series: SeriesRecord
    instance: InstanceRecord


# -- the operator's view (lge-node status) -----------------------------------------------


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
    taken_at: float = 0.0


@dataclass(frozen=True)
class Identity:
    """What the index knows about an incoming instance's identity (`Repository.identity`):
    the series and file already holding its SOP Instance UID, and the origin of the
    series it claims to belong to."""

    home_series: str | None
    home_path: str | None
    series_origin: Origin | None


# -- the console and the REST API ----------------------------------------------------------


@dataclass(frozen=True)
class AuditEntry:
    id: int
    time: float
    user: str
    role: str
    action: str
    target: str
    outcome: str
    detail: str
    address: str


T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a long list, and how many there are in all."""

    items: list[T]
    total: int
    offset: int
    limit: int


@dataclass(frozen=True)
class SeriesDetail:
    """A series with its study, jobs (newest first) and the result series derived from it."""

    series: SeriesRecord
    study: StudyRecord
    jobs: list[JobRecord]
    results: list[SeriesRecord]


@dataclass(frozen=True)
class Counts:
    """What the dashboard shows and /metrics exports, read in one go."""

    series: dict[str, int]  # received series by state
    jobs: dict[str, int]  # jobs by state
    sends_pending: int
    oldest_pending_s: float | None  # age of the oldest unsent result object
    received_per_hour: list[tuple[float, int]]  # (hour start, instances), last 24 hours
    delivered_per_hour: list[tuple[float, int]]  # (hour start, objects sent)
    instances: int
    stored_bytes: int
