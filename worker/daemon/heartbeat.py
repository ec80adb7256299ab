"""The daemon's heartbeat: ``mirror_meta['daemon.heartbeat']`` = ``<ISO time> pid=<pid>``.

The daemon rewrites it every ``daemon.heartbeat_interval``; `threadsync check` (a container
HEALTHCHECK, a probe) reads it. Kept in the mirror rather than in a file so that the check works
the same for SQLite and PostgreSQL, and proves the daemon can still write the database.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime

from worker.daemon.due import aware
from worker.store.db import Mirror
from worker.store.repo import delete_meta, get_meta, set_meta

HEARTBEAT_KEY = "daemon.heartbeat"
# Why the daemon's last pass stopped (a configuration error), ``<ISO time> <reason>``; absent
# while passes run normally. Read by `threadsync check` alongside the heartbeat.
PROBLEM_KEY = "daemon.problem"
# A beat older than this many intervals means the daemon is gone or stuck.
STALE_AFTER_BEATS = 3


STOPPED = "stopped"


@dataclass(frozen=True)
class Beat:
    at: datetime
    pid: int | None
    stopped: bool = False  # the daemon's last word: it exited on purpose at ``at``


def encode(at: datetime, pid: int, *, stopped: bool = False) -> str:
    return f"{STOPPED + ' ' if stopped else ''}{at.isoformat()} pid={pid}"


def decode(value: str) -> Beat | None:
    """The stored beat, or None when the value is not one (never written by us)."""
    text = value.strip()
    stopped = text.startswith(STOPPED + " ")
    stamp, _, rest = text.removeprefix(STOPPED + " ").partition(" ")
    try:
        at = aware(datetime.fromisoformat(stamp))
    except ValueError:
        return None
    assert at is not None
    pid: int | None = None
    if rest.startswith("pid="):
        try:
            pid = int(rest[4:])
        except ValueError:
            pid = None
    return Beat(at, pid, stopped)


def judge(value: str | None, now: datetime, interval: float) -> str | None:
    """None when the heartbeat is fresh, else the reason it is not (one sentence for a probe)."""
    if value is None:
        return "no daemon heartbeat in this mirror: is `threadsync run` running?"
    beat = decode(value)
    if beat is None:
        return f"the heartbeat record is unreadable: {value[:60]!r}"
    who = f" (pid {beat.pid})" if beat.pid is not None else ""
    if beat.stopped:
        return f"the daemon{who} stopped at {beat.at.strftime('%Y-%m-%dT%H:%M:%SZ')}"
    age = (now - beat.at).total_seconds()
    limit = STALE_AFTER_BEATS * interval
    if age > limit:
        return (
            f"the daemon heartbeat{who} is {age:.0f} s old, more than {limit:g} s"
            f" ({STALE_AFTER_BEATS} x heartbeat_interval): the daemon is stopped or stuck"
        )
    return None


def write_beat(mirror: Mirror, now: datetime, *, stopped: bool = False) -> None:
    """Blocking: run it through ``mirror.run_write``. ``stopped``: the daemon's last beat, so
    `threadsync check` says at once that it stopped instead of waiting for the beat to age."""
    with mirror.write() as session:
        set_meta(session, HEARTBEAT_KEY, encode(now, os.getpid(), stopped=stopped))


def read_beat(mirror: Mirror) -> str | None:
    with mirror.read() as session:
        return get_meta(session, HEARTBEAT_KEY)


def write_problem(mirror: Mirror, reason: str | None, now: datetime) -> None:
    """Record (or, with None, clear) why passes stop. Blocking: run it through ``run_write``."""
    with mirror.write() as session:
        if reason is None:
            delete_meta(session, PROBLEM_KEY)
        else:
            set_meta(session, PROBLEM_KEY, f"{now.isoformat()} {reason}")


def read_problem(mirror: Mirror) -> str | None:
    """The recorded problem as ``reason (since <time>)``, or None."""
    with mirror.read() as session:
        value = get_meta(session, PROBLEM_KEY)
    if value is None:
        return None
    stamp, _, reason = value.partition(" ")
    return f"{reason} (since {stamp})" if reason else stamp
