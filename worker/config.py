"""Configuration: one validated settings object from a TOML file, the environment, defaults.

Precedence (highest first): explicit CLI options, ``THREADSYNC_*`` environment variables
(nested keys with ``__``, e.g. ``THREADSYNC_API__PROFILE``), the openai SDK's conventional variables
(``AZURE_OPENAI_ENDPOINT``, ``AZURE_OPENAI_API_KEY``, ``OPENAI_API_VERSION``, ``OPENAI_API_KEY``,
``OPENAI_BASE_URL``), the TOML file (``--config`` or ``THREADSYNC_CONFIG``), then defaults.

Secrets are never read from the TOML file: ``api.api_key`` comes from the environment or from a file
the user names (``api.api_key_file``). A bad value is reported as a :class:`ConfigError` that names
the key, where it came from and what is wanted.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from worker.errors import ConfigError
from worker.migrate.settings import MigrateSettings, refuse_file_secret

ENV_PREFIX = "THREADSYNC_"
DEFAULT_DATABASE_URL = "sqlite:///threadsync.db"


class Profile(StrEnum):
    """Which service family the client talks to (path family, version parameter, auth form)."""

    AZURE = "azure"
    OPENAI = "openai"
    FOUNDRY = "foundry"


DEFAULT_API_VERSION: dict[Profile, str | None] = {
    Profile.AZURE: "2024-08-01-preview",
    Profile.OPENAI: None,
    Profile.FOUNDRY: "2025-05-01",
}


class ApiSettings(BaseModel):
    """Where the Assistants API is and how to authenticate."""

    profile: Profile = Profile.AZURE
    endpoint: str | None = Field(
        default=None,
        description="Base URL: https://<resource>.openai.azure.com (azure), https://api.openai.com"
        " (openai) or https://<aiservices>.services.ai.azure.com (foundry).",
    )
    project: str | None = Field(default=None, description="Foundry project name.")
    api_version: str | None = Field(
        default=None, description="api-version query parameter; defaults per profile."
    )
    api_key: SecretStr | None = Field(default=None, description="From the environment only.")
    api_key_file: Path | None = Field(default=None, description="A file holding the API key.")
    auth: Literal["api-key", "bearer"] | None = Field(
        default=None, description="How the key is sent; default api-key for azure, else bearer."
    )
    allow_insecure_http: bool = Field(
        default=False, description="Allow plain http:// to a non-loopback host."
    )
    connect_timeout: float = Field(default=10.0, gt=0)
    read_timeout: float = Field(default=60.0, gt=0)
    max_connections: int = Field(default=32, ge=1, le=1000)

    def effective_api_version(self) -> str | None:
        return self.api_version or DEFAULT_API_VERSION[self.profile]

    def effective_auth(self) -> Literal["api-key", "bearer"]:
        if self.auth is not None:
            return self.auth
        return "api-key" if self.profile is Profile.AZURE else "bearer"

    def credential(self) -> SecretStr | None:
        """The API key, from the environment or the named key file."""
        if self.api_key is not None:
            return self.api_key
        if self.api_key_file is not None:
            try:
                text = self.api_key_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(
                    f"api.api_key_file: cannot read {self.api_key_file}: {exc.strerror};"
                    " name a readable file holding only the key"
                ) from exc
            return SecretStr(text) if text else None
        return None


class RetrySettings(BaseModel):
    """Exponential backoff with jitter for requests that are safe to repeat."""

    max_attempts: int = Field(default=6, ge=1, le=50)
    initial_delay: float = Field(default=0.5, gt=0)
    max_delay: float = Field(default=20.0, gt=0)
    max_server_wait: float = Field(
        default=60.0, ge=0, description="A server asking for longer parks the thread."
    )


class SyncSettings(BaseModel):
    """How threads are paged and how many sync at once."""

    concurrency: int = Field(default=8, ge=1, le=256)
    page_limit: int = Field(default=100, ge=1, le=100)


class PushSettings(BaseModel):
    """Metadata write-back."""

    conflict_policy: Literal["fail", "local", "remote"] = "fail"
    concurrency: int = Field(default=8, ge=1, le=256)


class DaemonSettings(BaseModel):
    """The long-running `threadsync run`."""

    dispatch_interval: float = Field(default=5.0, gt=0)
    sync_interval: float = Field(default=300.0, gt=0)
    sync_jitter: float = Field(default=0.1, ge=0, le=1)
    max_backoff: float = Field(default=3600.0, gt=0)
    reconcile_cron: str = "17 3 * * *"
    push_interval: float = Field(default=60.0, gt=0)
    backup_cron: str | None = None
    requests_per_second: float = Field(default=20.0, gt=0)
    shutdown_timeout: float = Field(default=20.0, gt=0)
    heartbeat_interval: float = Field(default=10.0, gt=0)
    run_history_days: float = Field(default=30.0, gt=0)
    health_host: str = "127.0.0.1"
    health_port: int | None = Field(default=None, ge=0, le=65535)
    migrate_interval: float | None = Field(default=None, gt=0)  # off unless set


class BackupSettings(BaseModel):
    """Snapshots and their retention (restic's meaning)."""

    dest: Path | None = None
    keep_last: int = Field(default=7, ge=0)
    keep_daily: int = Field(default=7, ge=0)
    keep_weekly: int = Field(default=4, ge=0)
    keep_monthly: int = Field(default=12, ge=0)


class LogSettings(BaseModel):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class Settings(BaseSettings):
    """Everything threadsync can be told."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", case_sensitive=False
    )

    database_url: str = Field(default=DEFAULT_DATABASE_URL, description="The mirror database.")
    api: ApiSettings = ApiSettings()
    retry: RetrySettings = RetrySettings()
    sync: SyncSettings = SyncSettings()
    push: PushSettings = PushSettings()
    daemon: DaemonSettings = DaemonSettings()
    backup: BackupSettings = BackupSettings()
    log: LogSettings = LogSettings()
    migrate: MigrateSettings = MigrateSettings()

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        scheme = value.split(":", 1)[0].split("+", 1)[0]
        if scheme not in {"sqlite", "postgresql", "postgres"}:
            raise ValueError("wanted a sqlite:/// or postgresql:// URL")
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
        return (init_settings, env_settings, _SdkEnvSource(settings_cls))


class _SdkEnvSource(PydanticBaseSettingsSource):
    """The openai SDK's conventional variables, below ``THREADSYNC_*`` in precedence."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        env = os.environ
        api: dict[str, Any] = {}
        if env.get("AZURE_OPENAI_ENDPOINT"):
            api["endpoint"] = env["AZURE_OPENAI_ENDPOINT"]
        elif env.get("OPENAI_BASE_URL"):
            api["endpoint"] = env["OPENAI_BASE_URL"]
        key = env.get("AZURE_OPENAI_API_KEY") or env.get("OPENAI_API_KEY")
        if key:
            api["api_key"] = key
        if env.get("OPENAI_API_VERSION"):
            api["api_version"] = env["OPENAI_API_VERSION"]
        return {"api": api} if api else {}


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist; pass an existing --config") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    api = data.get("api", {})
    if isinstance(api, dict) and "api_key" in api:
        raise ConfigError(
            f"config file {path}: api.api_key must not be stored in a config file; set"
            " AZURE_OPENAI_API_KEY (or THREADSYNC_API__API_KEY), or name a key file with"
            " api.api_key_file"
        )
    refuse_file_secret(data, path)
    return data


def _describe_source(
    loc: tuple[int | str, ...], file_data: dict[str, Any], path: Path | None
) -> str:
    env_name = ENV_PREFIX + "__".join(str(p).upper() for p in loc)
    if env_name in {k.upper() for k in os.environ}:
        return f"environment variable {env_name}"
    node: Any = file_data
    for part in loc:
        if not isinstance(node, dict) or part not in node:
            break
        node = node[part]
    else:
        return f"config file {path}"
    sdk: dict[tuple[int | str, ...], str] = {
        ("api", "endpoint"): "AZURE_OPENAI_ENDPOINT",
        ("api", "api_version"): "OPENAI_API_VERSION",
    }
    if tuple(loc) in sdk and sdk[tuple(loc)] in os.environ:
        return f"environment variable {sdk[tuple(loc)]}"
    return "command line or default"


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings; ``overrides`` are CLI options (nested dicts allowed), highest first."""
    path = config_file or (
        Path(os.environ["THREADSYNC_CONFIG"]) if os.environ.get("THREADSYNC_CONFIG") else None
    )
    file_data = _read_toml(path) if path is not None else {}
    cli = {k: v for k, v in overrides.items() if v is not None}
    try:
        settings = _SettingsWithFile(_file_data=file_data, **cli)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(p for p in err["loc"] if p != "_file_data")
        key = ".".join(str(p) for p in loc)
        where = _describe_source(loc, file_data, path)
        raise ConfigError(f"{key} (from {where}): {err['msg']}") from exc
    check_endpoint(settings.api)
    return settings


class _SettingsWithFile(Settings):
    """Settings whose lowest-precedence source is an already-parsed TOML mapping."""

    def __init__(self, _file_data: dict[str, Any] | None = None, **values: Any) -> None:
        type(self)._pending_file = _file_data or {}
        super().__init__(**values)

    _pending_file: Any = {}

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            _SdkEnvSource(settings_cls),
            _DictSource(settings_cls, cls._pending_file),
        )


class _DictSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return self._data


def is_loopback(host: str) -> bool:
    if host in {"localhost", "localhost.localdomain"}:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_endpoint(api: ApiSettings) -> None:
    """Refuse plain http:// to anything but loopback unless the user said so explicitly."""
    if api.endpoint is None:
        return
    parts = urlsplit(api.endpoint)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ConfigError(
            f"api.endpoint: {api.endpoint!r} is not an http(s) URL; wanted e.g."
            " https://myres.openai.azure.com"
        )
    if parts.scheme == "http" and not is_loopback(parts.hostname) and not api.allow_insecure_http:
        raise ConfigError(
            f"api.endpoint: plain http:// to {parts.hostname} would send the key unencrypted;"
            " use https://, or set THREADSYNC_API__ALLOW_INSECURE_HTTP=true if you really mean it"
        )
