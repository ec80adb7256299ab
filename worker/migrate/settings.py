"""``[migrate]`` settings: where conversations go (``[migrate.target]``) and the mapping policy.

The destination is configured apart from the source (``[api]``): its own profile, endpoint and
credential. The key comes only from the environment (``THREADSYNC_MIGRATE__TARGET__API_KEY``) or a
file the user names (``migrate.target.api_key_file``); a config file holding it is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from worker.errors import ConfigError

TargetProfile = Literal["openai", "foundry", "azure"]
# worker.config.CredentialKind's choices: that module imports this one, so they are repeated here
# (tests/migrate/test_target_entra.py checks that both lists stay the same).
TargetCredential = Literal[
    "default", "managed-identity", "workload-identity", "client-secret", "azure-cli"
]


class TargetSettings(BaseModel):
    """The Conversations service threads are migrated into."""

    # As every settings section (worker.config.Section, which imports this module): an
    # unknown key is a mistake, never silently dropped.
    model_config = ConfigDict(extra="forbid")

    profile: TargetProfile = Field(
        default="openai",
        description="openai ({endpoint}/v1/conversations), foundry (project endpoint) or azure"
        " (a resource's /openai/v1: unverified by Microsoft's documentation).",
    )
    endpoint: str | None = Field(
        default=None,
        description="https://api.openai.com (openai, the default), https://<resource>.services"
        ".ai.azure.com (foundry) or https://<resource>.openai.azure.com (azure).",
    )
    project: str | None = Field(default=None, description="Foundry project name.")
    auth: Literal["key", "entra"] = Field(
        default="key",
        description="key (api_key or api_key_file) or entra (tokens from azure-identity, the"
        " azure extra; foundry and azure targets).",
    )
    credential: TargetCredential = Field(
        default="default",
        description="With auth=entra, which azure-identity credential gets the target's tokens"
        " (the choices of api.credential, chosen apart: the target may be another tenant).",
    )
    api_key: SecretStr | None = Field(default=None, description="From the environment only.")
    api_key_file: Path | None = Field(default=None, description="A file holding the key.")
    entra_scope: str = Field(
        default="https://ai.azure.com/.default", description="The token scope for auth = entra."
    )
    allow_insecure_http: bool = False
    connect_timeout: float = Field(default=10.0, gt=0)
    read_timeout: float = Field(default=60.0, gt=0)

    def key(self) -> SecretStr | None:
        """The key, from the environment or the named key file."""
        if self.api_key is not None:
            return self.api_key
        if self.api_key_file is None:
            return None
        try:
            text = self.api_key_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"migrate.target.api_key_file: cannot read {self.api_key_file}: {exc.strerror};"
                " name a readable file holding only the key"
            ) from exc
        return SecretStr(text) if text else None


class MigrateSettings(BaseModel):
    """``threadsync migrate``: the target, the mapping policy, pace and parallelism."""

    # As every settings section (worker.config.Section, which imports this module): an
    # unknown key is a mistake, never silently dropped.
    model_config = ConfigDict(extra="forbid")

    target: TargetSettings = TargetSettings()
    annotations: Literal["footnote", "drop"] = Field(
        default="footnote",
        description="Annotations the target cannot hold (file_citation): footnote or drop.",
    )
    attachments: Literal["file", "placeholder", "drop"] = Field(
        default="file", description="Message attachments: input_file, a text placeholder, or none."
    )
    timestamps: Literal["none", "prefix"] = Field(
        default="none", description='prefix writes "[2026-05-01 12:00 UTC] " before each text.'
    )
    concurrency: int = Field(default=8, ge=1, le=256)
    requests_per_second: float = Field(default=10.0, gt=0)


def refuse_file_secret(data: dict[str, Any], path: Path) -> None:
    """A config file must not hold the target's key (called on the parsed TOML)."""
    migrate = data.get("migrate")
    target = migrate.get("target") if isinstance(migrate, dict) else None
    if isinstance(target, dict) and "api_key" in target:
        raise ConfigError(
            f"config file {path}: migrate.target.api_key must not be stored in a config file;"
            " set THREADSYNC_MIGRATE__TARGET__API_KEY, or name a key file with"
            " migrate.target.api_key_file"
        )
