"""``manifest.json``: what a snapshot holds and how to check it.

It records the tool and schema versions, when the snapshot was taken, per-thread message counts
(live and deleted) with the newest live message id, and the size and SHA-256 of every other file.
The manifest checks itself too: ``manifest_sha256`` is the SHA-256 of the canonical JSON of every
other key (sorted keys, no whitespace): an edited manifest is told apart from a damaged data file.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

FORMAT = "threadsync-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DATABASE = "mirror.db"
MESSAGES = "messages.jsonl"
SELF_KEY = "manifest_sha256"
CHUNK = 1 << 20


@dataclass
class ThreadCount:
    """One thread's messages in a snapshot (server order decides ``newest``)."""

    messages: int = 0
    deleted: int = 0
    newest_message_id: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "deleted": self.deleted,
            "newest_message_id": self.newest_message_id,
        }


@dataclass
class Manifest:
    tool_version: str
    schema_revision: str
    created_at: str
    source_dialect: str
    threads: dict[str, ThreadCount] = field(default_factory=dict)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "tool": "threadsync",
            "tool_version": self.tool_version,
            "schema_revision": self.schema_revision,
            "created_at": self.created_at,
            "source_dialect": self.source_dialect,
            "totals": {
                "threads": len(self.threads),
                "messages": sum(t.messages for t in self.threads.values()),
                "deleted": sum(t.deleted for t in self.threads.values()),
            },
            "threads": {k: v.as_json() for k, v in sorted(self.threads.items())},
            "files": dict(sorted(self.files.items())),
        }


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def self_digest(document: dict[str, Any]) -> str:
    body = {k: v for k, v in document.items() if k != SELF_KEY}
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def render(manifest: Manifest) -> bytes:
    """The manifest file's bytes, with its self-checksum."""
    document = manifest.as_json()
    document[SELF_KEY] = self_digest(document)
    return orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def parse_threads(document: dict[str, Any]) -> dict[str, ThreadCount]:
    return {
        thread_id: ThreadCount(int(t["messages"]), int(t["deleted"]), t.get("newest_message_id"))
        for thread_id, t in document["threads"].items()
    }


@dataclass(frozen=True)
class Totals:
    """What a snapshot's manifest says it holds (as written; ``backup verify`` checks it)."""

    threads: int
    messages: int
    deleted: int
    bytes: int


def read_totals(snapshot: Path) -> Totals | None:
    """The totals of ``snapshot``'s manifest, or None when it has none or it cannot be read."""
    try:
        document = orjson.loads((snapshot / MANIFEST).read_bytes())
        totals = document["totals"]
        size = sum(int(f["bytes"]) for f in document["files"].values())
        return Totals(int(totals["threads"]), int(totals["messages"]), int(totals["deleted"]), size)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
