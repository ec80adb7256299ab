"""Configuration: one validated settings object from a TOML file, the environment, defaults.

Precedence (highest first): explicit CLI options, ``THREADSYNC_*`` environment variables
(nested keys with ``__``, e.g. ``THREADSYNC_API__PROFILE``), the openai SDK's conventional variables
(``AZURE_OPENAI_ENDPOINT``, ``AZURE_OPENAI_API_KEY``, ``OPENAI_API_VERSION``, ``OPENAI_API_KEY``,
``OPENAI_ORG_ID``, ``OPENAI_PROJECT_ID``,
``OPENAI_BASE_URL``), the TOML file (``--config`` or ``THREADSYNC_CONFIG``), then defaults.

Secrets are never read from the TOML file: ``api.api_key`` comes from the environment or from a file
the user names (``api.api_key_file``). A bad value is reported as a :class:`ConfigError` that names
the key, where it came from and what is wanted.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from worker.errors import ConfigError
from worker.migrate.settings import MigrateSettings, refuse_file_secret

ENV_PREFIX = "THREADSYNC_"
DEFAULT_DATABASE_URL = "sqlite:///threadsync.db"


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_duration(value: str | float) -> float:
    """Seconds from ``90``, ``90s``, ``2.5s``, ``30m``, ``1h30m`` or ``500ms`` (a number alone is
    seconds); raises ValueError naming the accepted forms."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        text = str(value).strip().lower().replace(" ", "")
        try:
            seconds = float(text)
        except ValueError:
            parts = _DURATION_PART.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise ValueError(
                    f"{value!r} is not a duration; wanted e.g. 90s, 30m, 1h30m or seconds"
                ) from None
            seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{value!r} is not a positive duration; wanted e.g. 90s, 30m or 1h")
    return seconds


def format_duration(seconds: float) -> str:
    """``120 s``, ``0.5 s``: how a duration is named back to the user."""
    return f"{seconds:g} s"


class Profile(StrEnum):
    """Which service family the client talks to (path family, version parameter, auth form)."""

    AZURE = "azure"
    OPENAI = "openai"
    FOUNDRY = "foundry"


Auth = Literal["api-key", "bearer", "entra"]
CredentialKind = Literal[
    "default", "managed-identity", "workload-identity", "client-secret", "azure-cli"
]

# The Entra audience each profile asks for (api.token_scope overrides). Azure OpenAI's classic
# pages and Microsoft's own migration tool use the cognitiveservices audience for
# *.openai.azure.com; Foundry projects (and the newest docs for .../openai/v1) use ai.azure.com.
DEFAULT_TOKEN_SCOPE: dict[Profile, str] = {
    Profile.AZURE: "https://cognitiveservices.azure.com/.default",
    Profile.OPENAI: "https://cognitiveservices.azure.com/.default",
    Profile.FOUNDRY: "https://ai.azure.com/.default",
}

DEFAULT_API_VERSION: dict[Profile, str | None] = {
    Profile.AZURE: "2024-08-01-preview",
    Profile.OPENAI: None,
    Profile.FOUNDRY: "2025-05-01",
}


class Section(BaseModel):
    """A ``[section]`` of the settings: an unknown key is a mistake, never silently dropped."""

    model_config = ConfigDict(extra="forbid")


class ApiSettings(Section):
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
    auth: Auth | None = Field(
        default=None,
        description="api-key or bearer: how the static key is sent (default api-key for azure,"
        " else bearer); entra: Entra ID tokens from azure-identity (the azure extra).",
    )
    credential: CredentialKind = Field(
        default="default",
        description="With auth=entra, which azure-identity credential gets the tokens.",
    )
    token_scope: str | None = Field(
        default=None,
        description="With auth=entra, the scope asked for; defaults per profile.",
    )
    organization: str | None = Field(
        default=None, description="openai profile: OpenAI-Organization header (OPENAI_ORG_ID)."
    )
    openai_project: str | None = Field(
        default=None, description="openai profile: OpenAI-Project header (OPENAI_PROJECT_ID)."
    )
    allow_insecure_http: bool = Field(
        default=False, description="Allow plain http:// to a non-loopback host."
    )
    connect_timeout: float = Field(default=10.0, gt=0)
    read_timeout: float = Field(default=60.0, gt=0)
    request_timeout: float = Field(
        default=120.0,
        gt=0,
        description="Overall bound on one request attempt: connect, send and the whole body"
        " (seconds, or a duration such as 2m). A server trickling bytes never trips"
        " read_timeout, which bounds each read only.",
    )
    max_connections: int = Field(default=32, ge=1, le=1000)

    @field_validator("request_timeout", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return parse_duration(value) if isinstance(value, str) else value

    @field_validator("api_key", mode="before")
    @classmethod
    def _clean_key(cls, value: Any) -> Any:
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if not isinstance(text, str):
            return value
        text = text.strip()  # a key pasted with a newline, or read from a file, still works
        problem = key_problem(text)
        if problem is not None:
            raise ValueError(f"the API key {problem}; copy the key again (it is never printed)")
        return text or None

    def effective_api_version(self) -> str | None:
        return self.api_version or DEFAULT_API_VERSION[self.profile]

    def effective_auth(self) -> Auth:
        if self.auth is not None:
            return self.auth
        return "api-key" if self.profile is Profile.AZURE else "bearer"

    def effective_token_scope(self) -> str:
        return self.token_scope or DEFAULT_TOKEN_SCOPE[self.profile]

    def secret(self) -> SecretStr | None:
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
            problem = key_problem(text)
            if problem is not None:
                raise ConfigError(
                    f"api.api_key_file: the key in {self.api_key_file} {problem}; the file must"
                    " hold only the key (it is never printed)"
                )
            return SecretStr(text) if text else None
        return None


def key_problem(key: str) -> str | None:
    """Why ``key`` cannot be sent in an HTTP header (it never says what the key is), or None.

    Keys are printable ASCII; anything else is a copy-and-paste accident (a smart quote, a
    non-breaking space, a line break) that would otherwise fail deep inside the HTTP client.
    """
    for position, char in enumerate(key, start=1):
        if not char.isascii():
            return f"has a non-ASCII character (character {position})"
        if not char.isprintable():
            return f"has a control character (character {position})"
        if char.isspace():
            return f"has a space inside it (character {position})"
    return None


class RetrySettings(Section):
    """Exponential backoff with jitter for requests that are safe to repeat."""

    max_attempts: int = Field(default=6, ge=1, le=50)
    initial_delay: float = Field(default=0.5, gt=0)
    max_delay: float = Field(default=20.0, gt=0)
    max_server_wait: float = Field(
        default=60.0, ge=0, description="A server asking for longer parks the thread."
    )


class SyncSettings(Section):
    """How threads are paged and how many sync at once."""

    concurrency: int = Field(default=8, ge=1, le=256)
    page_limit: int = Field(default=100, ge=1, le=100)
    progress_interval: float = Field(
        default=30.0, gt=0, description="Off a terminal: seconds between sync.progress events."
    )
    gone_recheck_interval: float = Field(
        default=86400.0,
        gt=0,
        description="Seconds between two looks at a thread marked gone (it resumes if it answers).",
    )


class PushSettings(Section):
    """Metadata write-back."""

    conflict_policy: Literal["fail", "local", "remote"] = "fail"
    concurrency: int = Field(default=8, ge=1, le=256)


class DaemonSettings(Section):
    """The long-running `threadsync run`."""

    dispatch_interval: float = Field(default=5.0, gt=0)
    sync_interval: float = Field(default=300.0, gt=0)
    sync_jitter: float = Field(default=0.1, ge=0, le=1)
    max_backoff: float = Field(default=3600.0, gt=0)
    reconcile_cron: str = "17 3 * * *"
    push_interval: float = Field(default=60.0, gt=0)
    backup_cron: str | None = None
    requests_per_second: float = Field(default=20.0, gt=0)
    # Freshness under a budget (README "Freshness under a request budget"): unset, min and max
    # are sync_interval (a fixed interval, as before) and the budget is requests_per_second.
    min_interval: float | None = Field(
        default=None, gt=0, description="Seconds: how soon a thread that changed is checked again."
    )
    max_interval: float | None = Field(
        default=None, gt=0, description="Seconds: the longest an idle thread waits between checks."
    )
    interval_stretch: float = Field(
        default=2.0, ge=1, le=10, description="Each idle check multiplies the interval by this."
    )
    active_hold: float = Field(
        default=3600.0,
        ge=0,
        description="Seconds after a change during which a thread stays at min_interval.",
    )
    max_requests_per_second: float | None = Field(
        default=None,
        gt=0,
        description="The request budget every request of the daemon shares (default"
        " requests_per_second).",
    )
    shutdown_timeout: float = Field(default=20.0, gt=0)
    heartbeat_interval: float = Field(default=10.0, gt=0)
    run_history_days: float = Field(default=30.0, gt=0)
    health_host: str = "127.0.0.1"
    health_port: int | None = Field(default=None, ge=0, le=65535)
    discover_interval: float | None = Field(
        default=None,
        gt=0,
        description="Foundry classic only: seconds between discoveries of new threads"
        " (GET /threads); unset, the daemon discovers none.",
    )
    migrate_interval: float | None = Field(default=None, gt=0)  # off unless set
    # single: one daemon per mirror (a lock). replicas: several daemons share a PostgreSQL mirror
    # through row leases (see worker/daemon/replicas.py); refused on SQLite.
    mode: Literal["single", "replicas"] = "single"
    lease_ttl: float = Field(default=60.0, gt=0)  # replicas: seconds a lease lasts unrenewed

    @model_validator(mode="after")
    def _bounds_in_order(self) -> DaemonSettings:
        low, high = self.min_interval, self.max_interval
        if low is not None and high is not None and low > high:
            raise ValueError(f"min_interval ({low:g}) is above max_interval ({high:g})")
        return self

    @property
    def interval_bounds(self) -> tuple[float, float]:
        """(min, max) check interval: unset bounds fall back to ``sync_interval``."""
        high = self.max_interval
        low = self.min_interval
        if low is None:
            low = self.sync_interval if high is None else min(self.sync_interval, high)
        if high is None:
            high = max(low, self.sync_interval)
        return low, high

    @property
    def request_budget(self) -> float:
        """Requests per second the whole daemon may send."""
        if self.max_requests_per_second is not None:
            return self.max_requests_per_second
        return self.requests_per_second


class BackupSettings(Section):
    """Snapshots and their retention (restic's meaning)."""

    dest: Path | None = None
    keep_last: int = Field(default=7, ge=0)
    keep_daily: int = Field(default=7, ge=0)
    keep_weekly: int = Field(default=4, ge=0)
    keep_monthly: int = Field(default=12, ge=0)


class LogSettings(Section):
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
        return (
            init_settings,
            _Unshadowed(settings_cls, env_settings),
            _SdkEnvSource(settings_cls),
        )


# The environment twins of commands' own options (``THREADSYNC_SYNC__FULL``): the CLI registers
# them at start. They follow the settings' naming, so they must not be read as settings (where
# ``sync.full`` would be an unknown key).
COMMAND_VARIABLES: set[str] = set()


class _Unshadowed(PydanticBaseSettingsSource):
    """The ``THREADSYNC_*`` environment without the commands' option twins."""

    def __init__(self, settings_cls: type[BaseSettings], inner: PydanticBaseSettingsSource):
        super().__init__(settings_cls)
        self._inner = inner

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        data = self._inner()
        for name in COMMAND_VARIABLES:
            if name.startswith(ENV_PREFIX):
                *parents, leaf = name[len(ENV_PREFIX) :].lower().split("__")
                node: Any = data
                for part in parents:
                    node = node.get(part) if isinstance(node, dict) else None
                if isinstance(node, dict):
                    node.pop(leaf, None)
        return data


class _SdkEnvSource(PydanticBaseSettingsSource):
    """The openai SDK's conventional variables, below ``THREADSYNC_*`` in precedence.

    Read as the SDK client of the chosen profile reads them: ``OpenAI()`` (the openai profile)
    takes ``OPENAI_API_KEY``, ``OPENAI_BASE_URL``, ``OPENAI_ORG_ID`` and ``OPENAI_PROJECT_ID``;
    ``AzureOpenAI()`` (azure, foundry) takes ``AZURE_OPENAI_*`` and ``OPENAI_API_VERSION``. The
    other family's variables are a fallback only, so a shell holding both never mixes them up.
    """

    def __init__(self, settings_cls: type[BaseSettings], fallback: dict[str, Any] | None = None):
        super().__init__(settings_cls)
        self._fallback = fallback or {}

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def _profile(self) -> str:
        for source in (self.current_state, self._fallback):
            api = source.get("api")
            if isinstance(api, dict) and api.get("profile"):
                return str(api["profile"]).lower()
        return Profile.AZURE.value

    def __call__(self) -> dict[str, Any]:
        env = os.environ
        openai = self._profile() == Profile.OPENAI.value
        endpoints = ("OPENAI_BASE_URL", "AZURE_OPENAI_ENDPOINT")
        keys = ("OPENAI_API_KEY", "AZURE_OPENAI_API_KEY")
        if not openai:
            endpoints, keys = endpoints[::-1], keys[::-1]
        api: dict[str, Any] = {}
        endpoint = next((env[name] for name in endpoints if env.get(name)), None)
        if endpoint:
            api["endpoint"] = endpoint
        key = next((env[name] for name in keys if env.get(name)), None)
        if key:
            api["api_key"] = key
        if env.get("OPENAI_API_VERSION"):
            api["api_version"] = env["OPENAI_API_VERSION"]
        if openai and env.get("OPENAI_ORG_ID"):
            api["organization"] = env["OPENAI_ORG_ID"]
        if openai and env.get("OPENAI_PROJECT_ID"):
            api["openai_project"] = env["OPENAI_PROJECT_ID"]
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
    except IsADirectoryError as exc:
        raise ConfigError(
            f"config file {path} is a directory; pass the TOML file itself to --config"
        ) from exc
    except OSError as exc:
        raise ConfigError(
            f"config file {path} cannot be read ({exc.strerror}); pass a readable TOML file"
        ) from exc
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
    for name in _SDK_VARIABLES.get(tuple(loc), ()):
        if os.environ.get(name):
            return f"environment variable {name}"
    return "command line or default"


# The openai SDK's variables each setting is read from, in the order _SdkEnvSource tries them.
_SDK_VARIABLES: dict[tuple[int | str, ...], tuple[str, ...]] = {
    ("api", "endpoint"): ("AZURE_OPENAI_ENDPOINT", "OPENAI_BASE_URL"),
    ("api", "api_key"): ("AZURE_OPENAI_API_KEY", "OPENAI_API_KEY"),
    ("api", "api_version"): ("OPENAI_API_VERSION",),
    ("api", "organization"): ("OPENAI_ORG_ID",),
    ("api", "openai_project"): ("OPENAI_PROJECT_ID",),
}


def setting_paths(
    model: type[BaseModel], prefix: tuple[str, ...] = ()
) -> Iterator[tuple[str, ...]]:
    """Every settings key, sections included: ``("sync",)``, ``("sync", "concurrency")``..."""
    for name, info in model.model_fields.items():
        path = (*prefix, name)
        yield path
        kind = info.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            yield from setting_paths(kind, path)


def setting_variable(path: tuple[int | str, ...]) -> str:
    """The environment variable of a settings key: ``THREADSYNC_SYNC__CONCURRENCY``."""
    return ENV_PREFIX + "__".join(str(p) for p in path).upper()


def setting_variables(model: type[BaseModel] | None = None) -> set[str]:
    """Every ``THREADSYNC_*`` variable the settings read (derived from the fields)."""
    return {setting_variable(path) for path in setting_paths(model or Settings)}


def closest(name: str, candidates: Iterator[str] | list[str] | set[str]) -> str | None:
    """The valid name ``name`` was most likely meant to be, if any is close."""
    found = difflib.get_close_matches(name, sorted(candidates), n=1, cutoff=0.6)
    return found[0] if found else None


def _section(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model holding the key at ``loc`` (None when a section in the path is unknown)."""
    model: type[BaseModel] = Settings
    for part in loc[:-1]:
        info = model.model_fields.get(str(part))
        kind = info.annotation if info is not None else None
        if not (isinstance(kind, type) and issubclass(kind, BaseModel)):
            return None
        model = kind
    return model


def _unknown_key(loc: tuple[int | str, ...], file_data: dict[str, Any], path: Path | None) -> str:
    """One sentence for a key no settings model has, with the closest valid name."""
    key = ".".join(str(p) for p in loc)
    model = _section(loc)
    names = list(model.model_fields) if model is not None else []
    guess = closest(str(loc[-1]), names)
    where = _describe_source(loc, file_data, path)
    if where.startswith("environment variable"):
        variable = setting_variable(loc)
        hint = f"; did you mean {setting_variable((*loc[:-1], guess))}?" if guess else ""
        return f"unknown variable {variable}{hint}"
    hint = f"; did you mean {'.'.join((*map(str, loc[:-1]), guess))}?" if guess else ""
    return f"unknown setting {key} (from {where}){hint}"


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
        # Not chained: pydantic's own text repeats the input, which may be the API key.
        err = exc.errors()[0]
        loc = tuple(p for p in err["loc"] if p != "_file_data")
        if err["type"] == "extra_forbidden" and loc:
            raise ConfigError(_unknown_key(loc, file_data, path)) from None
        key = ".".join(str(p) for p in loc)
        where = _describe_source(loc, file_data, path)
        msg = err["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{key} (from {where}): {msg}") from None
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
            _Unshadowed(settings_cls, env_settings),
            _SdkEnvSource(settings_cls, cls._pending_file),
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
