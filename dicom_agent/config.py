"""One validated settings tree for every role of the node.

Values come from the environment (prefix ``DICOM_AGENT_``) and optionally from a TOML or YAML file named
by ``DICOM_AGENT_CONFIG_FILE``; the environment wins. Invalid values fail at start, not at first use.
"""

from __future__ import annotations

import os
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

# Lists and maps are written ``a,b`` / ``K=v,K2=v2`` in the environment, not JSON.
CsvList = Annotated[list[str], NoDecode]
CsvMap = Annotated[dict[str, float], NoDecode]

PACKAGE_ROOT = Path(__file__).resolve().parent
PROJECT_ROOT = PACKAGE_ROOT.parent


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class _FileSource(PydanticBaseSettingsSource):
    """Reads the optional TOML/YAML settings file; its keys are the env names without the prefix."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        path = os.environ.get("DICOM_AGENT_CONFIG_FILE")
        self._data: dict[str, Any] = {}
        if path:
            text = Path(path).read_text(encoding="utf-8")
            raw = tomllib.loads(text) if path.endswith(".toml") else yaml.safe_load(text) or {}
            self._data = {str(k).lower(): v for k, v in raw.items()}

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return {k: v for k, v in self._data.items() if k in self.settings_cls.model_fields}


class Settings(BaseSettings):
    """Every configuration key of the node (see README, "Configuration")."""

    model_config = SettingsConfigDict(env_prefix="DICOM_AGENT_", extra="ignore")

    # identity and network
    ae_title: str = Field("DICOM_AGENT", max_length=16, pattern=r"^[ -\[\]-~]*[!-\[\]-~][ -\[\]-~]*$")
    dicom_host: str = "0.0.0.0"
    dicom_port: int = Field(11112, ge=0, le=65535)
    allowed_peers: CsvList = Field(default_factory=list)
    require_called_ae: bool = True
    max_associations: int = Field(16, ge=1)
    max_pdu_bytes: int = Field(0, ge=0)  # 0 = unlimited: pynetdicom's 16 KB default costs ~1.5x on CT
    max_dataset_bytes: int = Field(2 * 1024**3, ge=1024)
    network_timeout_s: float = Field(60.0, gt=0)
    acse_timeout_s: float = Field(30.0, gt=0)
    dimse_timeout_s: float = Field(60.0, gt=0)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    scp_processes: int = Field(1, ge=1, le=64)

    # storage
    storage_dir: Path = Path("./var/storage")
    min_free_bytes: int = Field(512 * 1024**2, ge=0)
    duplicate_policy: Literal["keep", "overwrite"] = "keep"
    database_url: str = "sqlite:///./var/dicom_agent.db"
    broker_url: str = "sqla+sqlite:///./var/broker.db"
    result_backend: str | None = None

    # studies and routing
    study_quiet_seconds: float = Field(10.0, gt=0)
    study_quiet_overrides: CsvMap = Field(default_factory=dict)
    routing_file: Path | None = None
    destinations: CsvList = Field(default_factory=list)

    # model
    model_dir: Path = PROJECT_ROOT / "models" / "bundled"
    device: str = "auto"
    languages: CsvList = Field(default_factory=lambda: ["en", "zh"])

    # pipeline (Celery queues, time limits, retries, job liveness; docs/pipeline.md)
    default_queue: Literal["", "gpu", "cpu"] = ""  # "" = gpu when DEVICE is cuda*, else cpu
    queue_prefix: str = ""  # prepended to gpu/cpu/export, to share one broker between installations
    infer_time_limit_s: float = Field(900.0, gt=0)  # hard limit; the soft limit is 60 s earlier
    encode_time_limit_s: float = Field(300.0, gt=0)
    export_time_limit_s: float = Field(300.0, gt=0)
    task_max_retries: int = Field(5, ge=0)  # transient errors, exponential backoff
    task_retry_base_s: float = Field(5.0, gt=0)
    job_heartbeat_s: float = Field(5.0, gt=0)  # a running job refreshes its heartbeat this often
    job_stale_s: float = Field(60.0, gt=0)  # a running job silent this long lost its worker: re-queued
    job_resend_s: float = Field(600.0, gt=0)  # a queued job not picked up this long is sent again
    metrics_port: int = Field(0, ge=0, le=65535)  # Prometheus port of a worker/SCP/exporter process; 0 = off

    # export
    export_retry_base_s: float = Field(5.0, gt=0)
    export_retry_cap_s: float = Field(600.0, gt=0)
    export_max_attempts: int = Field(8, ge=1)
    export_default_profile: Literal["full", "sr-only", "key-images", "key-images+gsps"] = "full"  # encode.PROFILES
    export_poll_s: float = Field(2.0, gt=0)  # outbox poll interval of the exporter
    export_timeout_s: float | None = Field(None, gt=0)  # association + DIMSE timeout; default DIMSE_TIMEOUT_S
    manufacturer: str = Field("dicom_agent", max_length=64)  # Manufacturer of the SR/SEG/KOS we write

    # web
    web_host: str = "127.0.0.1"
    web_port: int = Field(8080, ge=0, le=65535)
    secret_key: str | None = None
    production: bool = False
    web_admin_password: str | None = None  # embedded mode only: creates user 'admin' on first start

    # logging
    log_json: bool = False
    log_level: str = "INFO"

    @field_validator("allowed_peers", "destinations", "languages", mode="before")
    @classmethod
    def _csv(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("study_quiet_overrides", mode="before")
    @classmethod
    def _overrides(cls, value: Any) -> Any:
        """Accepts ``CR=3,DX=3,CT=20`` as well as a mapping."""
        if isinstance(value, str):
            pairs = (item.split("=", 1) for item in _split_csv(value))
            return {k.strip().upper(): float(v) for k, v in pairs}
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _FileSource(settings_cls), file_secret_settings

    def quiet_seconds_for(self, modalities: set[str]) -> float:
        """The quiet period of a study: the longest override among its modalities, else the default."""
        known = [self.study_quiet_overrides[m] for m in modalities if m in self.study_quiet_overrides]
        return max(known) if known else self.study_quiet_seconds


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings; tests call ``get_settings.cache_clear()`` after changing the environment."""
    return Settings()
