"""`threadsync doctor` against the emulator on a loopback port: each failure is the line that
stops it, with exit 2, and nothing is ever created or changed."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from sqlalchemy import text
from typer.testing import CliRunner, Result

from worker.cli.app import app
from worker.emulator import Emulator, serve_in_thread
from worker.store import schema
from worker.store.db import Mirror
from worker.store.repo import track_many

KEY = "doctor-key-DO-NOT-LEAK"


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[Emulator, str]]:
    emulator = Emulator(api_key=KEY, seed=11)
    with serve_in_thread(emulator) as url:
        yield emulator, url


def env_for(url: str, db: Path, **extra: str) -> dict[str, str]:
    env = {
        "AZURE_OPENAI_ENDPOINT": url,
        "AZURE_OPENAI_API_KEY": KEY,
        "OPENAI_API_VERSION": "2024-08-01-preview",
        "OPENAI_API_KEY": "",
        "OPENAI_BASE_URL": "",
        "THREADSYNC_CONFIG": "",
        "THREADSYNC_DATABASE_URL": f"sqlite:///{db}",
    }
    env.update(extra)
    return env


def doctor(env: dict[str, str]) -> Result:
    try:
        return CliRunner().invoke(app, ["doctor"], env=env)
    finally:
        structlog.reset_defaults()


def fingerprint(db: Path) -> str | None:
    """The mirror's bytes (None: no file); WAL and shared-memory files must not be left either."""
    if not db.exists():
        return None
    leftovers = sorted(p.name for p in db.parent.glob(db.name + "-*"))
    return hashlib.sha256(db.read_bytes()).hexdigest() + repr(leftovers)


def make_mirror(db: Path, *thread_ids: str) -> None:
    mirror = Mirror(f"sqlite:///{db}")
    with mirror.write() as session:
        track_many(session, list(thread_ids))
    mirror.dispose()


def lines(result: Result) -> list[str]:
    return result.stdout.splitlines()


def test_all_checks_pass_on_azure_with_a_tracked_thread(
    served: tuple[Emulator, str], tmp_path: Path
) -> None:
    emulator, url = served
    (tid,) = emulator.seed(seed=1, threads=1, messages=2)
    db = tmp_path / "m.db"
    make_mirror(db, tid)
    before = fingerprint(db)
    result = doctor(env_for(url, db))
    assert result.exit_code == 0, result.output
    assert [line.split(":")[0] for line in lines(result)] == [
        "ok    configuration",
        "ok    mirror",
        "ok    endpoint",
        "ok    credential",
        "ok    api-version",
    ]
    assert f"listing one message of {tid}" in result.stdout
    assert fingerprint(db) == before
    assert KEY not in result.output


def test_foundry_also_checks_the_thread_listing(
    served: tuple[Emulator, str], tmp_path: Path
) -> None:
    _, url = served
    db = tmp_path / "m.db"
    make_mirror(db)
    env = env_for(
        url,
        db,
        THREADSYNC_API__PROFILE="foundry",
        THREADSYNC_API__PROJECT="proj",
        OPENAI_API_VERSION="2025-05-01",
    )
    result = doctor(env)
    assert result.exit_code == 0, result.output
    assert lines(result)[-1] == "ok    thread listing: GET /threads answers"
    assert "GET /threads?limit=1" in result.stdout


def test_with_nothing_tracked_it_says_what_was_not_checked(
    served: tuple[Emulator, str], tmp_path: Path
) -> None:
    _, url = served
    db = tmp_path / "m.db"
    make_mirror(db)
    result = doctor(env_for(url, db))
    assert result.exit_code == 0, result.output
    credential = next(line for line in lines(result) if "credential" in line)
    assert "no thread is tracked" in credential
    assert "not 401" in credential


def test_wrong_key_fails_the_credential_check(served: tuple[Emulator, str], tmp_path: Path) -> None:
    _, url = served
    db = tmp_path / "m.db"
    make_mirror(db, "thread_abc")
    before = fingerprint(db)
    result = doctor(env_for(url, db, AZURE_OPENAI_API_KEY="wrong-key-1234"))
    assert result.exit_code == 2
    assert lines(result)[-1].startswith("FAIL  credential: the service refused the credential")
    assert "HTTP 401" in lines(result)[-1]
    assert "AZURE_OPENAI_API_KEY" in lines(result)[-1]
    assert "wrong-key-1234" not in result.output
    assert fingerprint(db) == before


@pytest.mark.parametrize(
    ("profile", "version", "status"),
    [("azure", "2023-01-01-preview", "404"), ("foundry", "2024-01-01", "400")],
)
def test_wrong_api_version_fails_its_check(
    served: tuple[Emulator, str], tmp_path: Path, profile: str, version: str, status: str
) -> None:
    emulator, url = served
    (tid,) = emulator.seed(seed=2, threads=1, messages=1)
    db = tmp_path / "m.db"
    make_mirror(db, tid)
    env = env_for(
        url,
        db,
        OPENAI_API_VERSION=version,
        THREADSYNC_API__PROFILE=profile,
        THREADSYNC_API__PROJECT="proj",
    )
    result = doctor(env)
    assert result.exit_code == 2
    assert lines(result)[-2].startswith("ok    credential")
    last = lines(result)[-1]
    assert last.startswith(f"FAIL  api-version: api-version {version} refused")
    assert f"HTTP {status}" in last
    assert "OPENAI_API_VERSION" in last


def test_an_unresolvable_host_fails_the_endpoint_check(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    make_mirror(db)
    result = doctor(env_for("https://nonexistent.invalid", db))
    assert result.exit_code == 2
    assert lines(result)[-1].startswith(
        "FAIL  endpoint: the name nonexistent.invalid does not resolve"
    )


def test_a_closed_loopback_port_fails_the_endpoint_check(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on: bound, never listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        db = tmp_path / "m.db"
        make_mirror(db)
        result = doctor(env_for(f"http://127.0.0.1:{port}", db))
    assert result.exit_code == 2
    assert lines(result)[-1].startswith(
        f"FAIL  endpoint: nothing answers at 127.0.0.1:{port} (connection refused)"
    )


def test_no_mirror_fails_and_none_is_created(served: tuple[Emulator, str], tmp_path: Path) -> None:
    _, url = served
    db = tmp_path / "absent.db"
    result = doctor(env_for(url, db))
    assert result.exit_code == 2
    assert lines(result)[-1].startswith(f"FAIL  mirror: no mirror at {db}")
    assert not db.exists()
    assert list(tmp_path.iterdir()) == []


def test_an_outdated_schema_fails_and_is_left_as_it_was(
    served: tuple[Emulator, str], tmp_path: Path
) -> None:
    _, url = served
    db = tmp_path / "m.db"
    mirror = Mirror(f"sqlite:///{db}", check=False)
    schema.upgrade(mirror.engine, "0003")
    mirror.dispose()
    before = fingerprint(db)
    result = doctor(env_for(url, db))
    assert result.exit_code == 2
    last = lines(result)[-1]
    assert last.startswith("FAIL  mirror: the mirror's schema is at revision 0003")
    assert "threadsync db upgrade" in last
    assert fingerprint(db) == before
    check = Mirror(f"sqlite:///{db}", check=False)
    with check.read() as session:
        assert session.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0003"
    check.dispose()


def test_a_configuration_error_is_the_first_line(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    result = doctor(env_for("https://x.example", db, THREADSYNC_SYNC__CONCURRENCY="lots"))
    assert result.exit_code == 2
    assert lines(result) == [lines(result)[0]]
    assert lines(result)[0].startswith("FAIL  configuration: sync.concurrency")
    assert not db.exists()


def test_discover_interval_off_foundry_is_a_configuration_failure(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    result = doctor(env_for("https://x.example", db, THREADSYNC_DAEMON__DISCOVER_INTERVAL="60"))
    assert result.exit_code == 2
    assert lines(result)[0].startswith("FAIL  configuration: daemon.discover_interval")


def test_mirror_checks_on_both_backends(served: tuple[Emulator, str], mirror_url: str) -> None:
    """Absent or empty, outdated, then current: the same verdicts on SQLite and PostgreSQL, and
    the doctor never creates or upgrades the schema."""
    _, url = served
    env = env_for(url, Path("unused"), THREADSYNC_DATABASE_URL=mirror_url)
    empty = doctor(env)
    assert empty.exit_code == 2
    assert lines(empty)[-1].startswith("FAIL  mirror: ")
    assert "threadsync" in lines(empty)[-1]
    check = Mirror(mirror_url, check=False)
    assert schema.current_revision(check.engine) is None  # still nothing there
    schema.upgrade(check.engine, "0003")
    old = doctor(env)
    assert old.exit_code == 2
    assert "schema is at revision 0003" in lines(old)[-1]
    assert schema.current_revision(check.engine) == "0003"
    schema.upgrade(check.engine)
    check.dispose()
    current = doctor(env)
    assert current.exit_code == 0, current.output
    assert "schema current" in current.stdout
