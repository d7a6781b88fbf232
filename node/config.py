"""The node's one typed configuration: a TOML file, overridden by environment variables.

Environment variables are ``LGE_NODE_<SECTION>__<KEY>`` (e.g. ``LGE_NODE_DICOM__PORT=11113``);
they win over the file, so a container can adjust a shipped config. Unknown keys are
errors, so a typo does not silently fall back to a default.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
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
    max_associations: int = Field(10, ge=1, le=200)
    network_timeout_s: float = Field(60.0, gt=0)


class AllowedPeer(Section):
    ae_title: AeTitle
    address: str | None = None  # when set, the association must come from this host


class Destination(Section):
    """A DICOM peer the node sends results to (or moves from, for a PACS)."""

    name: str
    ae_title: AeTitle
    host: str
    port: Port


class AccessSection(Section):
    # Empty list: any calling AE is accepted (logged). Sites should list their peers.
    allowed_peers: list[AllowedPeer] = Field(default_factory=list)


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


class PipelineSection(Section):
    model_dir: Path | None = None  # default: the bundled demo models
    nnunet_model: Path | None = None  # an nnU-Net v2 trainer folder, overrides the bundle's
    yolo_weights: Path | None = None  # overrides the bundle's yolo/heart.pt
    device: Literal["cpu", "cuda"] = "cpu"
    mirroring: bool = False
    nsd: float = Field(5.0, ge=1.0, le=10.0)  # n-SD reference threshold


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
    destinations: list[Destination] = Field(default_factory=list)

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
    tls = config.tls
    if tls.enabled and not (tls.certificate and tls.private_key):
        raise ConfigError(
            f"{path or 'config'}: tls.enabled needs tls.certificate and tls.private_key"
        )
    return config


def _describe(exc: ValidationError, path: Path | None) -> str:
    where = str(path) if path else "config"
    lines = [f"{where}: {exc.error_count()} problem(s)"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        value = "" if err["type"] == "missing" else f" (got {err.get('input')!r})"
        lines.append(f"  {loc}: {msg}{value}")
    return "\n".join(lines)
