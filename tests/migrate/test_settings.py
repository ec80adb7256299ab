"""The example configuration documents every `[migrate]` key and loads as it stands."""

from __future__ import annotations

import tomllib
from pathlib import Path

from worker.config import load_settings
from worker.migrate.settings import MigrateSettings, TargetSettings

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "threadsync.example.toml"


def test_example_documents_every_migrate_key() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    data = tomllib.loads(text)
    documented = set(data["migrate"]) | {f"target.{k}" for k in data["migrate"]["target"]}
    # Commented-out keys count as documented: `# endpoint = ...`.
    for key in TargetSettings.model_fields:
        if f"target.{key}" not in documented and key != "api_key":
            assert f"# {key} = " in text, key
    for key in MigrateSettings.model_fields:
        assert key in documented or key == "target", key
    assert "# migrate_interval = " in text
    settings = load_settings(EXAMPLE)
    assert settings.migrate == MigrateSettings()
