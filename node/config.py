"""The node's one typed configuration: a TOML file, overridden by environment variables.

Environment variables are ``LGE_NODE_<SECTION>__<KEY>`` (e.g. ``LGE_NODE_DICOM__PORT=11113``);
they win over the file, so a container can adjust a shipped config. Unknown keys are
errors, so a typo does not silently fall back to a default.
"""

from __future__ import annotations

import hashlib
import re
import socket
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # 16 chars, no backslash or control
Port = Annotated[int, Field(ge=1, le=65535)]


class ConfigError(ValueError):
    """The configuration is unusable; the message lists every problem, one per line."""


def _ae_title(value: str) -> str:
    value = value.strip()
    if not AE_TITLE.match(value):
        raise ValueError("an AE title is 1-16 printable characters without backslash")
    return value


AeTitle = Annotated[str, AfterValidator(_ae_title)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DicomSection(Section):
    """The node's own DICOM service."""

    ae_title: AeTitle = "LGE_NODE"
    bind_address: str = "0.0.0.0"
    port: Port = 11112
    max_associations: int = Field(10, ge=1, le=200)  # established at once
    network_timeout_s: float = Field(60.0, gt=0)
    # Transport limits (node.dimse.guard): open TCP connections in all and from one
    # address, time from connecting to a complete A-ASSOCIATE-RQ, and the PDU size the
    # node announces and enforces (a peer's PDU declaring more is cut off unread).
    max_connections: int = Field(100, ge=1, le=2000)
    max_connections_per_address: int = Field(20, ge=1, le=2000)
    negotiation_timeout_s: float = Field(10.0, gt=0)
    max_pdu_bytes: int = Field(4 * 2**20, ge=16384, le=2**30)
    # Refuse an association whose called AE title is neither ae_title nor force_ae_title.
    check_called_ae: bool = True
    # Studies sent to this called AE title are processed even when the selection rules
    # would skip them ("send to AI" from the PACS). Empty: no such AE title.
    force_ae_title: AeTitle | None = None


class AllowedPeer(Section):
    ae_title: AeTitle
    address: str | None = None  # when set, the association must come from this host
    # What it may query and retrieve (C-FIND, C-MOVE, C-GET): "all" studies the node
    # holds, "own" (studies it sent, with their results, and those sent by the AE titles
    # in see_sent_by) or "none" (echo and store only).
    query: Literal["all", "own", "none"] = "all"
    see_sent_by: list[AeTitle] = Field(default_factory=list)


class Destination(Section):
    """A peer the node sends results to: a DICOM node over C-STORE (``protocol = "dimse"``:
    ``ae_title``, ``host``, ``port``) or a DICOMweb server over STOW-RS (``protocol =
    "stow"``: ``url`` of its DICOMweb root, e.g. ``http://pacs:8042/dicom-web``, with a
    Bearer ``token`` or ``username`` + ``password``, and ``ca_certificate`` to trust for
    HTTPS).

    ``sources`` maps calling AE titles to destinations (shell patterns): results of a
    study received from a matching peer go here. ``["*"]`` (default) sends every result;
    ``["ORTHANC"]`` returns results only to the PACS that sent the study.

    ``associations``: parallel C-STORE associations per round (1-8, default 1).
    """

    name: str
    protocol: Literal["dimse", "stow"] = "dimse"
    ae_title: AeTitle = ""  # these three: C-STORE (checked per protocol below)
    host: str = ""
    port: int = Field(0, ge=0, le=65535)
    url: str = Field("", pattern=r"^$|^https?://", max_length=255)
    token: str | None = None
    username: str | None = None
    password: str | None = None
    ca_certificate: Path | None = None
    sources: list[str] = Field(default_factory=lambda: ["*"])
    # C-STORE over this many associations at once. A PACS stores each object in its own
    # transaction, so a study's ~20 results arrive sooner in parallel; many PACS cap the
    # associations per calling AE title, hence 1 unless the site allows more.
    associations: int = Field(1, ge=1, le=8)

    @model_validator(mode="after")
    def _complete(self) -> Destination:
        if self.protocol == "dimse":
            missing = [k for k in ("ae_title", "host", "port") if not getattr(self, k)]
            if missing:
                raise ValueError(f"a C-STORE destination needs {', '.join(missing)}")
        else:
            if not self.url:
                raise ValueError("a STOW-RS destination needs url (its DICOMweb root)")
            if self.token and (self.username or self.password):
                raise ValueError("give either token or username + password, not both")
            if (self.username is None) != (self.password is None):
                raise ValueError("username and password go together")
        return self


class Pacs(Section):
    """A PACS the node queries and retrieves from (it must know the node as a modality)."""

    name: str
    ae_title: AeTitle
    host: str
    port: Port
    method: Literal["move", "get"] = "move"  # C-MOVE to the node's AE, or C-GET
    max_attempts: int = Field(3, ge=1, le=10)  # per series, when sub-operations fail
    retry_delay_s: float = Field(10.0, ge=0, le=3600)  # wait before retrying failed ones
    # Scheduled polling: every poll_minutes, C-FIND MR studies of the last poll_days days
    # (optionally only descriptions matching poll_description) and fetch their LGE series.
    poll_minutes: float | None = Field(None, gt=0)
    poll_days: int = Field(1, ge=0, le=3650)
    poll_description: str | None = None  # regular expression on StudyDescription


class AccessSection(Section):
    # Empty list: any calling AE may echo and store (logged, warned at start-up), and
    # nobody may query or retrieve. Sites should list their peers.
    allowed_peers: list[AllowedPeer] = Field(default_factory=list)
    # Without allowed_peers, let any calling AE query and retrieve everything (a lab on
    # its own network, never a clinical one; warned at start-up).
    open_query_retrieve: bool = False


class TlsSection(Section):
    enabled: bool = False
    certificate: Path | None = None
    private_key: Path | None = None
    ca_certificates: Path | None = None
    require_client_certificate: bool = False


class StorageSection(Section):
    data_dir: Path = Path("./lge-node-data")
    database_url: str | None = None  # default: SQLite (WAL) inside data_dir
    stable_age_s: float = Field(10.0, gt=0)
    retention_hours: float = Field(72.0, gt=0)
    purge_interval_s: float = Field(300.0, gt=0)  # how often retention looks for work
    # fsync each received instance before answering Success: survives power loss, not
    # only a crash of the node; costs some ingest rate on slow disks.
    fsync: bool = True
    # Below this much free space on the data folder's disk, C-STORE is refused with
    # 0xA700 (out of resources) before anything is written, leaving room for the index,
    # the results and the jobs already accepted.
    min_free_mb: float = Field(500.0, ge=0)
    # Larger instances, or more frames in one, are refused at C-STORE (0xA700) with a
    # reason: no cardiac MR needs them, and each one is read whole into memory.
    max_instance_mb: float = Field(1024.0, gt=0)
    max_frames: int = Field(4096, ge=1)


class SelectionSection(Section):
    """Which received series are LGE and get processed (regular expressions, case-blind).

    A series is LGE when its description matches ``include`` and not ``exclude``, or,
    with ``use_inversion_time``, when it is an IR acquisition with one inversion time per
    slice position (a TI scout has many and is excluded).
    """

    include: list[str] = Field(
        default_factory=lambda: [
            r"\blge\b", r"psir", r"\bde\b", r"del(ayed)?[ _.-]*enh", r"delayed",
            r"late[ _.-]*gad", r"\bmde\b", r"viab", r"\bscar\b",
        ]
    )  # fmt: skip
    exclude: list[str] = Field(
        default_factory=lambda: [
            r"scout", r"look[ _.-]*locker", r"\bti[ _.-]*(scout|map|find)", r"cine",
            r"\bloc(alizer)?\b", r"survey", r"molli", r"t1[ _.-]*map", r"3[ _.-]*pl",
        ]
    )  # fmt: skip
    use_inversion_time: bool = True
    min_slices: int = Field(4, ge=1)
    # When a study has both the magnitude and the phase-sensitive (PSIR) reconstruction of
    # the same acquisition: "psir" or "magnitude" processes one, "both" processes both.
    prefer: Literal["psir", "magnitude", "both"] = "psir"


class JobsSection(Section):
    # Each worker holds its own models in memory. 0: a receive-only node (stores, indexes,
    # queues and serves Q/R; jobs wait for a node or worker that processes them).
    workers: int = Field(1, ge=0, le=8)
    max_attempts: int = Field(3, ge=1, le=20)
    retry_delay_s: float = Field(30.0, ge=0)
    # Who runs queued jobs: "embedded" (this node's workers poll the index), "procrastinate"
    # (PostgreSQL index only: workers on any host, `lge-node worker`), or "auto"
    # (procrastinate exactly when storage.database_url is PostgreSQL).
    engine: Literal["auto", "embedded", "procrastinate"] = "auto"


class DispatchSection(Section):
    retry_initial_s: float = Field(5.0, gt=0)  # first retry delay; doubles per failure
    retry_max_s: float = Field(600.0, gt=0)
    batch: int = Field(200, ge=1)  # objects per association


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"not a regular expression: {exc}") from None
    return value


# Registry names go into every output's algorithm name ("lge-node <name>", LO 64 with
# ", reader-edited" and the synthetic-data note), hence short.
ModelName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")]
DEFAULT_MODEL = "default"  # the one model of a config without [pipeline.models]


class ModelEntry(Section):
    """One model of the registry: a model folder (as `lge-node train` writes it) or its
    parts; all unset: the bundled demo models."""

    model_dir: Path | None = None
    nnunet_model: Path | None = None  # an nnU-Net v2 trainer folder, overrides the bundle's
    yolo_weights: Path | None = None  # overrides the bundle's yolo/heart.pt


class ModelRule(Section):
    """A series gets the model of the first rule whose conditions all hold (a condition
    left out holds); no rule holds: ``default_model``."""

    model: ModelName
    reconstruction: Literal["psir", "magnitude"] | None = None
    series_description: Annotated[str, AfterValidator(_regex)] | None = None  # case-blind
    calling_ae: list[AeTitle] = Field(default_factory=list)  # the sender; empty: any


class PipelineSection(Section):
    # One model (no registry): these three, default the bundled demo models.
    model_dir: Path | None = None
    nnunet_model: Path | None = None  # an nnU-Net v2 trainer folder, overrides the bundle's
    yolo_weights: Path | None = None  # overrides the bundle's yolo/heart.pt
    # Several models: [pipeline.models.<name>], the one used when no rule picks another,
    # and [[pipeline.model_rules]]. Every worker loads each model once.
    models: dict[ModelName, ModelEntry] = Field(default_factory=dict)
    default_model: ModelName | None = None
    model_rules: list[ModelRule] = Field(default_factory=list)
    device: Literal["cpu", "cuda"] = "cpu"
    # test-time mirroring; None: as each model's manifest says (its QC is calibrated so)
    mirroring: bool | None = None
    nsd: float = Field(5.0, ge=1.0, le=10.0)  # n-SD reference threshold
    grey_zone_sd: float = Field(2.0, ge=1.0, le=5.0)  # grey zone: above remote mean + n SD
    nonviable_percent: float = Field(50.0, ge=25.0, le=100.0)  # 50 chronic, 75 acute

    @model_validator(mode="after")
    def _registry(self) -> PipelineSection:
        if self.models:
            single = [k for k in ("model_dir", "nnunet_model", "yolo_weights") if getattr(self, k)]
            if single:
                raise ValueError(
                    f"{', '.join(single)} and [pipeline.models] together: with a registry, "
                    "give each model its own [pipeline.models.<name>]"
                )
            if self.default_model is None and len(self.models) == 1:
                self.default_model = next(iter(self.models))
            if self.default_model is None:
                raise ValueError("default_model: name the model of series no rule picks for")
        elif self.default_model not in (None, DEFAULT_MODEL):
            raise ValueError(f"default_model {self.default_model!r}: no [pipeline.models]")
        names = set(self.registry())
        unknown = sorted({self.default_model or DEFAULT_MODEL} - names) + sorted(
            {r.model for r in self.model_rules} - names
        )
        if unknown:
            raise ValueError(
                f"model(s) {', '.join(unknown)} not in [pipeline.models] "
                f"(known: {', '.join(sorted(names))})"
            )
        return self

    def registry(self) -> dict[str, ModelEntry]:
        """Every model a worker loads, by name."""
        if self.models:
            return dict(self.models)
        return {
            DEFAULT_MODEL: ModelEntry(
                model_dir=self.model_dir,
                nnunet_model=self.nnunet_model,
                yolo_weights=self.yolo_weights,
            )
        }

    @property
    def default(self) -> str:
        return self.default_model or DEFAULT_MODEL


class CorrectionsSection(Section):
    """A SEG a reader edited and stored (OHIF, Slicer...) that references a series the
    node analysed is re-quantified, and the (image, edited labels) pair kept for training.
    """

    enabled: bool = True
    # nnU-Net raw dataset of the corrections; default: <data_dir>/training/<dataset_name>.
    # Kept beyond the retention time: it is what a site retrains on.
    training_dir: Path | None = None
    dataset_name: str = Field("Dataset900_LGECorrections", pattern=r"^Dataset\d{3}_\w+$")


Role = Literal["viewer", "operator", "admin"]  # each includes the ones before it


class ConsoleUser(Section):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[\w.@-]+$")
    role: Role = "viewer"
    # argon2id hash (``lge-node console hash-password``); the password itself never.
    password_hash: str = Field(pattern=r"^\$argon2id?\$")
    # The sender that what this user stores over STOW-RS is recorded as (destination
    # ``sources``, query scope); default: the name, cut to 16 characters.
    ae_title: AeTitle | None = None


class ConsoleToken(Section):
    """An API token (``Authorization: Bearer <token>``), stored as its SHA-256."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[\w.@-]+$")
    role: Role = "viewer"
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    ae_title: AeTitle | None = None  # as for users


class HttpSection(Section):
    """The operator console and REST API (``/api/v1``, OpenAPI at ``/api/docs``)."""

    enabled: bool = True
    bind_address: str = "127.0.0.1"  # loopback by default: expose it deliberately
    port: Port = 8044
    users: list[ConsoleUser] = Field(default_factory=list)
    tokens: list[ConsoleToken] = Field(default_factory=list)
    session_hours: float = Field(12.0, gt=0, le=24 * 30)
    # Failed logins (console, API, HTTP Basic) for one name or from one address within
    # login_block_minutes: beyond login_max_failures, refused (429) until the window passes.
    login_max_failures: int = Field(10, ge=1)
    login_block_minutes: float = Field(15.0, gt=0)
    # /metrics (Prometheus), /healthz, /readyz answer without login (scrapers, probes);
    # they carry counts, never patient data.
    open_probes: bool = True
    certificate: Path | None = None  # HTTPS when both are set
    private_key: Path | None = None
    # DICOMweb (``/dicom-web``): QIDO-RS and WADO-RS for viewers, STOW-RS for operators
    # (an API token with the operator role for a sending system).
    dicomweb: bool = True
    # The URL clients reach the node by (https://node.example/), for the URLs DICOMweb
    # answers hold (RetrieveURL, BulkDataURI). Unset: from each request's Host header,
    # which a proxy must pass on (some clients, dicomweb-client among them, leave the
    # port out of it).
    public_url: str | None = Field(None, pattern=r"^https?://")
    max_stow_mb: float = Field(4096.0, gt=0)  # one STOW-RS request, all its instances


class NotifySection(Section):
    """Who is told when the node needs someone (`node.notify`): a webhook (JSON POST)
    and/or e-mail over SMTP."""

    webhook_url: str | None = Field(None, pattern=r"^https?://")
    smtp_host: str | None = None
    smtp_port: Port = 25
    smtp_security: Literal["none", "starttls", "tls"] = "none"
    smtp_username: str | None = None
    smtp_password: str | None = None
    mail_from: str = "lge-node@localhost"
    mail_to: list[str] = Field(default_factory=list)
    events: list[str] = Field(
        default_factory=lambda: [
            "job_failed", "models_failed", "destination_failing", "disk_low",
            "instance_not_indexed", "retrieve_failed",
        ]
    )  # fmt: skip
    destination_failing_minutes: float = Field(15.0, gt=0)
    disk_low_mb: float = Field(2000.0, ge=0)
    repeat_minutes: float = Field(60.0, ge=0)  # the same condition is told again after this
    check_interval_s: float = Field(30.0, gt=0)


class ClusterSection(Section):
    """Several nodes and workers on one PostgreSQL index (`lge-node worker`).

    A receiving node keeps the files it received; workers on other hosts fetch a job's
    series from the node that holds it over WADO-RS and hand the results back to it
    (``POST /api/v1/jobs/{id}/results``), so no shared filesystem is needed. A shared
    one still works: files found at their indexed paths are read in place."""

    # This node's name among those sharing the index (unique; stable across restarts:
    # the files it holds are recorded under it). Unset: the host name.
    node_name: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[\w.@:-]+$")
    # Where workers reach this node's HTTP service. Unset: http.public_url, else
    # http://<http.bind_address, or the host name when bound to all>:<http.port>.
    url: str | None = Field(None, pattern=r"^https?://")
    # Workers: "auto" reads a file in place when its indexed path exists here and fetches
    # it otherwise; "dicomweb" always fetches (hosts that happen to see the same paths).
    fetch: Literal["auto", "dicomweb"] = "auto"
    # Workers: the API token (operator role) they present to the receiving nodes, and
    # the CA certificate that signs those nodes' HTTPS certificates.
    token: str | None = None
    ca_certificate: Path | None = None
    timeout_s: float = Field(60.0, gt=0)


class Config(BaseSettings):
    """Everything the node reads at start-up."""

    model_config = SettingsConfigDict(
        env_prefix="LGE_NODE_", env_nested_delimiter="__", extra="forbid"
    )

    dicom: DicomSection = Field(default_factory=DicomSection)
    access: AccessSection = Field(default_factory=AccessSection)
    tls: TlsSection = Field(default_factory=TlsSection)
    storage: StorageSection = Field(default_factory=StorageSection)
    pipeline: PipelineSection = Field(default_factory=PipelineSection)
    selection: SelectionSection = Field(default_factory=SelectionSection)
    jobs: JobsSection = Field(default_factory=JobsSection)
    dispatch: DispatchSection = Field(default_factory=DispatchSection)
    corrections: CorrectionsSection = Field(default_factory=CorrectionsSection)
    http: HttpSection = Field(default_factory=HttpSection)
    notify: NotifySection = Field(default_factory=NotifySection)
    cluster: ClusterSection = Field(default_factory=ClusterSection)
    destinations: list[Destination] = Field(default_factory=list)
    pacs: list[Pacs] = Field(default_factory=list)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (env_settings, init_settings)  # the environment overrides the file

    @property
    def database_url(self) -> str:
        return self.storage.database_url or f"sqlite:///{self.storage.data_dir / 'index.db'}"

    @property
    def distributed(self) -> bool:
        """Jobs go through procrastinate (`node.store.jobqueue`): ``jobs.engine`` says so,
        or is "auto" and the index is PostgreSQL."""
        if self.jobs.engine == "auto":
            return _is_postgresql(self.database_url)
        return self.jobs.engine == "procrastinate"

    @property
    def node_name(self) -> str:
        return self.cluster.node_name or socket.gethostname()

    @property
    def node_url(self) -> str:
        """Where workers reach this node's HTTP service ("" when it has none)."""
        if not self.http.enabled:
            return ""
        if self.cluster.url or self.http.public_url:
            return (self.cluster.url or self.http.public_url or "").rstrip("/")
        scheme = "https" if self.http.certificate else "http"
        bound = self.http.bind_address
        host = socket.getfqdn() if bound in ("0.0.0.0", "::", "") else bound
        return f"{scheme}://{host}:{self.http.port}"

    @property
    def training_dataset(self) -> Path:
        """The nnU-Net raw dataset folder that readers' corrections are added to."""
        root = self.corrections.training_dir or self.storage.data_dir / "training"
        return root / self.corrections.dataset_name


SECRET_KEYS = {
    "password_hash", "sha256", "private_key", "database_url", "token", "password",
    "smtp_password", "webhook_url",
}  # fmt: skip


def masked(value: Any, digest: bool = False) -> Any:
    """A config dump with secrets as ``***`` (``digest``: ``***`` and 8 hex digits of their
    SHA-256, enough to tell that one changed, never enough to recover it)."""
    if isinstance(value, dict):
        return {
            k: (_mask(v, digest) if k in SECRET_KEYS and v else masked(v, digest))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [masked(v, digest) for v in value]
    return value


def _mask(value: Any, digest: bool) -> str:
    return "***" + (hashlib.sha256(str(value).encode()).hexdigest()[:8] if digest else "")


def changes(before: Any, after: Any, where: str = "") -> list[str]:
    """Dotted paths (section.key, at most two levels) where two config dumps differ."""
    if where.count(".") >= 1 or not (isinstance(before, dict) and isinstance(after, dict)):
        return [] if before == after else [where or "(all)"]
    found = []
    for key in sorted(set(before) | set(after)):
        path = f"{where}.{key}" if where else key
        found += changes(before.get(key), after.get(key), path)
    return found


def _is_postgresql(url: str) -> bool:
    """A SQLAlchemy URL of PostgreSQL, any driver (``postgresql+psycopg://...``)."""
    return url.split("://", 1)[0].split("+", 1)[0] == "postgresql"


def load_config(path: Path | str | None = None) -> Config:
    """Read ``path`` (TOML; None: defaults) plus environment; raise `ConfigError` if invalid."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"{path}: no such config file") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    try:
        config = Config(**data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path)) from exc
    problems = _cross_checks(config)
    if problems:
        raise ConfigError("\n".join([f"{path or 'config'}: {len(problems)} problem(s)", *problems]))
    tls = config.tls
    if tls.enabled and not (tls.certificate and tls.private_key):
        raise ConfigError(
            f"{path or 'config'}: tls.enabled needs tls.certificate and tls.private_key"
        )
    return config


def _cross_checks(config: Config) -> list[str]:
    problems = []
    names = [d.name for d in config.destinations]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"  destinations: name {name!r} is used twice")
    for kind, entries in (("users", config.http.users), ("tokens", config.http.tokens)):
        seen = [e.name for e in entries]
        for name in sorted({n for n in seen if seen.count(n) > 1}):
            problems.append(f"  http.{kind}: name {name!r} is used twice")
    if config.jobs.engine == "procrastinate" and not _is_postgresql(config.database_url):
        problems.append("  jobs.engine: procrastinate needs a PostgreSQL storage.database_url")
    if (config.http.certificate is None) != (config.http.private_key is None):
        problems.append("  http: HTTPS needs both certificate and private_key")
    for key in ("include", "exclude"):
        for pattern in getattr(config.selection, key):
            try:
                re.compile(pattern)
            except re.error as exc:
                problems.append(f"  selection.{key}: {pattern!r} is not a valid regex: {exc}")
    return problems


def _describe(exc: ValidationError, path: Path | None) -> str:
    where = str(path) if path else "config"
    lines = [f"{where}: {exc.error_count()} problem(s)"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        value = "" if err["type"] == "missing" else f" (got {err.get('input')!r})"
        lines.append(f"  {loc}: {msg}{value}")
    return "\n".join(lines)
