"""Migration throughput: 1,000 threads x 50 messages into the Conversations API of the emulator
(a child process, 20 ms latency), `threadsync migrate` measured as a subprocess, once per target
family: Foundry, then OpenAI (two ledger targets over the same mirror).

Targets (issue 19): requests = one create per thread plus one append per further 20 messages
(Foundry, whose create carries the first 20); the configured rate
(``migrate.requests_per_second``) held within 10 %; peak RSS under 100 MB. OpenAI cannot list
conversations, so a create whose answer was lost could never be found again: there the create is
empty (an orphan would hold nothing) and every 20 messages (or part) are one append, one request
more per thread: ``threads x (1 + ceil(messages / 20))``, asserted as such.
Run: ``.venv/bin/python -m bench migrate`` (``THREADSYNC_BENCH_SCALE`` shrinks the thread count).
"""

from __future__ import annotations

import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench._common import (
    API_KEY,
    EmulatorProcess,
    Summary,
    Target,
    emulator_process,
    run_measured,
    scale,
    scaled,
    threadsync_cmd,
    threadsync_env,
)

THREADS = 1000
MESSAGES = 50
RATE = 100.0  # requests per second asked of the pacer
CONCURRENCY = 16  # threads in flight: at 20 ms a request, 8 cannot fill 100 requests a second
PROFILES = ("foundry", "openai")


def expected_requests(threads: int, messages: int, profile: str = "foundry") -> int:
    """Foundry: one create carrying the first 20, then one append per further 20 (or part).
    OpenAI: an empty create, then one append per 20 (or part): a lost create holds nothing."""
    if profile == "foundry":
        return threads * (1 + math.ceil(max(0, messages - 20) / 20))
    return threads * (1 + math.ceil(messages / 20))


@dataclass(frozen=True)
class Measured:
    profile: str
    seconds: float
    requests: int
    posts: int
    source_reads: int
    peak_rss_mib: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds  # start-up is in the wall time: a bias down


def migrate_once(emulator: EmulatorProcess, env: dict[str, str], profile: str) -> Measured:
    emulator.reset_stats()
    env = dict(
        env,
        THREADSYNC_MIGRATE__TARGET__PROFILE=profile,
        THREADSYNC_MIGRATE__TARGET__ENDPOINT=emulator.base_url,
        THREADSYNC_MIGRATE__TARGET__PROJECT="bench",
        THREADSYNC_MIGRATE__TARGET__API_KEY=API_KEY,
        THREADSYNC_MIGRATE__REQUESTS_PER_SECOND=str(RATE),
        THREADSYNC_MIGRATE__CONCURRENCY=str(CONCURRENCY),
    )
    run = run_measured(threadsync_cmd("migrate"), env=env)
    if run.returncode != 0:
        raise RuntimeError(f"migrate to {profile} failed: {run.stderr[-2000:]}")
    routes = emulator.stats()["routes"]
    # The target's requests only: the source (the same emulator here) is also asked once
    # per thread for the thread's own metadata.
    target = {r: by for r, by in routes.items() if "/conversations" in r}
    return Measured(
        profile=profile,
        seconds=run.seconds,
        requests=sum(sum(int(n) for n in by.values()) for by in target.values()),
        posts=sum(
            sum(int(n) for n in by.values()) for r, by in target.items() if r.startswith("POST")
        ),
        source_reads=sum(
            sum(int(n) for n in by.values()) for r, by in routes.items() if r not in target
        ),
        peak_rss_mib=run.peak_rss_mib,
    )


def main() -> dict[str, float]:
    factor = scale()
    threads = scaled(THREADS, factor)
    work = Path(tempfile.mkdtemp(prefix="bench-migrate-"))
    try:
        with emulator_process() as emulator:
            ids = emulator.seed(seed=42, threads=threads, messages=MESSAGES)
            env = threadsync_env(emulator, f"sqlite:///{work / 'mirror.db'}")
            for args in (("threads", "add", *ids), ("sync", "--concurrency", "32")):
                done = run_measured(threadsync_cmd(*args), env=env)
                if done.returncode != 0:
                    raise RuntimeError(f"{args[0]} failed: {done.stderr[-2000:]}")
            runs = {p: migrate_once(emulator, env, p) for p in PROFILES}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows: list[tuple[str, ...]] = []
    targets: list[Target] = []
    for m in runs.values():
        rows += [
            (f"{m.profile}: wall time (s)", f"{m.seconds:.1f}"),
            (f"{m.profile}: requests", str(m.requests)),
            (f"{m.profile}: POSTs (creates + appends)", str(m.posts)),
            (f"{m.profile}: source reads (thread metadata)", str(m.source_reads)),
            (f"{m.profile}: achieved rate (/s)", f"{m.rate:.1f}"),
            (f"{m.profile}: peak RSS (MiB)", f"{m.peak_rss_mib:.1f}"),
        ]
        wanted = expected_requests(threads, MESSAGES, m.profile)
        formula = "creates + appends" if m.profile == "foundry" else "empty creates + appends"
        targets += [
            Target(f"{m.profile}: requests == {formula}", m.requests, wanted, "=="),
            Target(f"{m.profile}: rate >= 0.9 x configured", m.rate, 0.9 * RATE, ">=", "/s"),
            Target(f"{m.profile}: rate <= 1.1 x configured", m.rate, 1.1 * RATE, "<=", "/s"),
            Target(f"{m.profile}: peak RSS", m.peak_rss_mib, 100.0, "<=", " MiB"),
        ]
    summary = Summary(
        f"migrate: {threads} threads x {MESSAGES} messages, 20 ms latency, rate {RATE:g}/s",
        header=("figure", "value"),
        rows=rows,
        targets=targets,
    )
    summary.print()
    foundry, openai = runs["foundry"], runs["openai"]
    return {
        "scale": factor,
        "threads": float(threads),
        "messages_per_thread": float(MESSAGES),
        "configured_rate": RATE,
        # Foundry: the formula.
        "migrate_s": foundry.seconds,
        "requests": float(foundry.requests),
        "expected_requests": float(expected_requests(threads, MESSAGES, "foundry")),
        "achieved_rate": foundry.rate,
        "peak_rss_mib": foundry.peak_rss_mib,
        # OpenAI: one empty create more per thread (a lost create must hold nothing).
        "openai_migrate_s": openai.seconds,
        "openai_requests": float(openai.requests),
        "openai_expected_requests": float(expected_requests(threads, MESSAGES, "openai")),
        "openai_achieved_rate": openai.rate,
        "openai_peak_rss_mib": openai.peak_rss_mib,
    }


if __name__ == "__main__":
    main()
