"""`threadsync migrate` as a user runs it, against the emulator on a loopback port: dry run,
migrate, status, map, verify catching a missing, extra or reordered item, and SIGKILL at random
moments ending identical to a clean migration."""

from __future__ import annotations

import csv
import gzip
import random
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.harness import KEY, run, user_env
from worker.emulator import Emulator, FaultRule, serve_in_thread
from worker.migrate.mapping import canonical

TARGET_KEY = "sk-target-DO-NOT-LEAK-77aa"
PROJECT = "proj"


@pytest.fixture
def served() -> Iterator[tuple[Emulator, Emulator, str, str]]:
    """The source (Assistants) and the target (Conversations) on two loopback servers."""
    source = Emulator(api_key=KEY, seed=3)
    target = Emulator(api_key=TARGET_KEY, seed=4)
    with serve_in_thread(source) as source_url, serve_in_thread(target) as target_url:
        yield source, target, source_url, target_url


def migrate_env(source_url: str, target_url: str, db: Path, profile: str) -> dict[str, str]:
    env = user_env(source_url, db)
    env.update(
        THREADSYNC_MIGRATE__TARGET__PROFILE=profile,
        THREADSYNC_MIGRATE__TARGET__ENDPOINT=target_url,
        THREADSYNC_MIGRATE__TARGET__PROJECT=PROJECT,
        THREADSYNC_MIGRATE__TARGET__API_KEY=TARGET_KEY,
        THREADSYNC_MIGRATE__REQUESTS_PER_SECOND="1000",
    )
    return env


def mirrored(source: Emulator, tmp: Path, env: dict[str, str], sizes: list[int]) -> list[str]:
    ids = [source.seed(seed=20 + i, threads=1, messages=n)[0] for i, n in enumerate(sizes)]
    run(["threads", "add", *ids], env, tmp)
    run(["sync"], env, tmp)
    return ids


def status_rows(env: dict[str, str], tmp: Path) -> dict[str, Any]:
    proc = run(["migrate", "status", "--json"], env, tmp)
    return {r["thread_id"]: r for r in map(orjson.loads, proc.stdout.splitlines())}


def snapshot(target: Emulator, rows: dict[str, Any]) -> dict[str, Any]:
    """What a user of the target sees through the map: each thread's items, by content."""
    return {
        t: [canonical(i) for i in target.conversations.get(r["conversation_id"]).items]
        for t, r in rows.items()
    }


def test_dry_run_migrate_status_map_verify(
    served: tuple[Emulator, Emulator, str, str], tmp_path: Path
) -> None:
    source, target, source_url, target_url = served
    env = migrate_env(source_url, target_url, tmp_path / "m.db", "openai")
    ids = mirrored(source, tmp_path, env, [0, 21, 45])

    # openai: each create is empty (a lost one could never be found again, so it must hold
    # nothing), then every 20 messages or part: 1 + (1 + 2) + (1 + 3) requests.
    dry = run(["migrate", "--dry-run"], env, tmp_path)
    assert target.stats()["routes"] == {}  # --dry-run sends nothing
    assert "dry run, nothing sent: 3 threads, 66 items in 8 requests" in dry.stdout
    assert status_rows(env, tmp_path) == {}  # ...and records nothing

    done = run(["migrate"], env, tmp_path)
    assert "3/3 threads ok; 66 items in 8 requests" in done.stdout
    assert "unknown outcome" not in done.stdout
    rows = status_rows(env, tmp_path)
    assert [rows[t]["items"] for t in ids] == [0, 21, 45]
    assert all(r["state"] == "migrated" and r["last_error"] is None for r in rows.values())

    out = tmp_path / "map.csv"
    run(["migrate", "map", "--out", str(out)], env, tmp_path)
    with out.open() as fh:
        table = list(csv.DictReader(fh))
    assert [(r["thread_id"], r["conversation_id"], r["messages"], r["items"]) for r in table] == [
        (t, rows[t]["conversation_id"], str(n), str(n))
        for t, n in zip(ids, [0, 21, 45], strict=True)
    ]
    assert all(r["migrated_at"].endswith("Z") for r in table)

    assert "3 identical, 0 not" in run(["migrate", "verify"], env, tmp_path).stdout
    items = target.conversations.get(rows[ids[2]]["conversation_id"]).items

    items.insert(10, items.pop(20))  # reordered
    proc = run(["migrate", "verify", "--thread", ids[2]], env, tmp_path, check=False)
    assert proc.returncode == 1
    assert "item 10 is out of order" in proc.stdout
    items.insert(20, items.pop(10))

    extra = items.pop()  # missing
    proc = run(["migrate", "verify", "--thread", ids[2]], env, tmp_path, check=False)
    assert proc.returncode == 1
    assert "item 44 is missing" in proc.stdout
    items.append(extra)

    items.append({**extra, "id": "msg_extra"})  # extra
    proc = run(["migrate", "verify"], env, tmp_path, check=False)
    assert proc.returncode == 1
    assert "item 45 is extra: item msg_extra" in proc.stdout
    assert "2 identical, 1 not" in proc.stdout

    everything = dry.stdout + dry.stderr + done.stdout + done.stderr + proc.stdout + proc.stderr
    assert TARGET_KEY not in everything
    assert TARGET_KEY not in out.read_text()


def control_conversations(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/_emulator/conversations") as answer:
        every: dict[str, Any] = orjson.loads(answer.read())
    return every


def test_a_lost_create_is_reported_by_the_run_and_by_status(
    served: tuple[Emulator, Emulator, str, str], tmp_path: Path
) -> None:
    """OpenAI cannot list conversations: the create whose answer was lost is sent again, and
    the run, `migrate status` and its JSON say an empty conversation may be left behind."""
    source, target, source_url, target_url = served
    env = migrate_env(source_url, target_url, tmp_path / "m.db", "openai")
    [thread_id] = mirrored(source, tmp_path, env, [25])
    target.add_fault(FaultRule(fault="500_after_apply", route="conversation.create", times=1))
    done = run(["migrate"], env, tmp_path)
    assert "1/1 threads ok; 25 items in 4 requests" in done.stdout
    assert "1 create(s) of unknown outcome, sent again: an empty conversation" in done.stdout
    [row] = status_rows(env, tmp_path).values()
    assert row["lost_creates"] == 1
    [sent] = row["lost_create_times"]
    assert sent.endswith("Z")
    table = run(["migrate", "status"], env, tmp_path)
    assert "1 create(s) of unknown outcome: an empty conversation" in table.stderr
    every = control_conversations(target_url)
    [orphan] = [c for c in every if c != row["conversation_id"]]
    assert every[orphan]["metadata"]["source_thread_id"] == thread_id
    assert every[orphan]["items"] == []
    assert len(every[row["conversation_id"]]["items"]) == 25


def test_bad_target_configuration_exits_2_naming_it(tmp_path: Path) -> None:
    env = user_env("http://127.0.0.1:9", tmp_path / "m.db")
    env["THREADSYNC_MIGRATE__TARGET__PROFILE"] = "foundry"
    proc = run(["migrate"], env, tmp_path, check=False)
    assert proc.returncode == 2
    assert "migrate.target.endpoint is not set" in proc.stderr
    env["THREADSYNC_MIGRATE__TARGET__ENDPOINT"] = "http://example.com"
    env["THREADSYNC_MIGRATE__TARGET__PROJECT"] = "p"
    proc = run(["migrate"], env, tmp_path, check=False)
    assert proc.returncode == 2
    assert "plain http://" in proc.stderr
    config = tmp_path / "c.toml"
    config.write_text('[migrate.target]\napi_key = "sk-x"\n')
    proc = run(["--config", str(config), "migrate", "status"], env, tmp_path, check=False)
    assert proc.returncode == 2
    assert "migrate.target.api_key must not be stored in a config file" in proc.stderr
    env["THREADSYNC_MIGRATE__TARGET__ENDPOINT"] = "https://res.services.ai.azure.com"
    proc = run(["migrate"], env, tmp_path, check=False)
    assert proc.returncode == 2
    assert "no key for the foundry migration target" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("profile", ["foundry", "openai"])
def test_migrate_killed_at_random_moments_ends_like_a_clean_migration(
    served: tuple[Emulator, Emulator, str, str], tmp_path: Path, profile: str
) -> None:
    """SIGKILL `migrate` at random instants (faults after apply too), rerun: every thread's
    conversation holds exactly its messages, once, in order; Foundry never has two."""
    source, target, source_url, target_url = served
    env = migrate_env(source_url, target_url, tmp_path / "m.db", profile)
    env["THREADSYNC_MIGRATE__CONCURRENCY"] = "3"
    env["THREADSYNC_MIGRATE__REQUESTS_PER_SECOND"] = "12"  # ~4 s of work: kills land mid-way
    ids = mirrored(source, tmp_path, env, [5, 20, 21, 64, 99, 130, 0, 41, 60, 77, 88, 61])
    target.add_fault(FaultRule(fault="latency", times=None, latency_ms=4, jitter_ms=4))
    for fault in ("500_after_apply", "drop", "500"):
        target.add_fault(FaultRule(fault=fault, times=None, probability=0.05))
    rng = random.Random(19)
    for round_ in range(8):
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "migrate"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(0.2, 1.2))  # a random instant is the point of this test
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if round_ == 0:  # the first kill came before the work was done
            confirmed = sum(r["items"] for r in status_rows(env, tmp_path).values())
            assert confirmed < sum(len(source.truth()["threads"][t]) for t in ids)
        if round_ % 3 == 0:  # the mirror grows between crashes: incremental appends
            source.append_messages(ids[round_ % len(ids)], n=7)
            run(["sync"], env, tmp_path)
    target.clear_faults()
    run(["migrate"], env, tmp_path)
    rows = status_rows(env, tmp_path)
    got = snapshot(target, rows)

    clean = Emulator(api_key=TARGET_KEY, seed=4)
    with serve_in_thread(clean) as clean_url:
        clean_env = migrate_env(source_url, clean_url, tmp_path / "m.db", profile)
        clean_env["THREADSYNC_MIGRATE__TARGET__PROJECT"] = "clean"  # another ledger target
        run(["migrate"], clean_env, tmp_path)
        assert snapshot(clean, status_rows(clean_env, tmp_path)) == got
    assert "identical, 0 not" in run(["migrate", "verify"], env, tmp_path).stdout
    # Every conversation on the target, as its control endpoint reports them.
    every = control_conversations(target_url)
    assert set(every) == set(target.conversations.by_id)
    for t in ids:
        made = [c for c, v in every.items() if v["metadata"]["source_thread_id"] == t]
        others = [c for c in made if c != rows[t]["conversation_id"]]
        assert rows[t]["conversation_id"] in made
        assert len(rows[t]["lost_create_times"]) == rows[t]["lost_creates"]
        if profile == "foundry":
            assert rows[t]["lost_creates"] == 0
            assert others == []
        else:
            # A create killed before its answer was committed cannot be found on OpenAI; it was
            # created empty, so whatever it left holds no item, and each one is counted.
            assert len(others) <= rows[t]["lost_creates"]
            assert [every[c]["items"] for c in others] == [[] for _ in others]


def test_import_cli_round_trip_and_a_bad_line(
    served: tuple[Emulator, Emulator, str, str], tmp_path: Path
) -> None:
    source, _, source_url, target_url = served
    env = migrate_env(source_url, target_url, tmp_path / "a.db", "openai")
    mirrored(source, tmp_path, env, [12, 3])
    exported = tmp_path / "all.jsonl.gz"
    run(["export", "--include-deleted", "--out", str(exported)], env, tmp_path)
    fresh = dict(env, THREADSYNC_DATABASE_URL=f"sqlite:///{tmp_path / 'b.db'}")
    done = run(["import", str(exported)], fresh, tmp_path)
    assert "imported 15 messages of 2 threads: 15 added" in done.stdout
    again = tmp_path / "again.jsonl.gz"
    run(["export", "--include-deleted", "--out", str(again)], fresh, tmp_path)
    assert gzip.decompress(again.read_bytes()) == gzip.decompress(exported.read_bytes())
    status = run(["status", "--json"], fresh, tmp_path)
    assert {orjson.loads(line)["state"] for line in status.stdout.splitlines()} == {"imported"}

    bad = tmp_path / "bad.jsonl"
    lines = gzip.decompress(exported.read_bytes()).splitlines()
    bad.write_bytes(b"\n".join([*lines[:3], b'{"id": 1}', *lines[3:]]) + b"\n")
    empty = dict(env, THREADSYNC_DATABASE_URL=f"sqlite:///{tmp_path / 'c.db'}")
    proc = run(["import", str(bad)], empty, tmp_path, check=False)
    assert proc.returncode == 2
    assert f"{bad} line 4: no string id; nothing was imported" in proc.stderr
    assert run(["status", "--json"], empty, tmp_path).stdout == ""
