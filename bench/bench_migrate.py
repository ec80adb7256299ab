"""Migration throughput: 1,000 threads x 50 messages into the Conversations API of the emulator
(a child process, 20 ms latency), `threadsync migrate` measured as a subprocess.

Targets (issue 19): requests = one create per thread plus one append per further 20 messages;
the configured rate (``migrate.requests_per_second``) held within 10 %; peak RSS under 100 MB.
Run: ``.venv/bin/python -m bench migrate`` (``THREADSYNC_BENCH_SCALE`` shrinks the thread count).
"""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path

from bench._common import (
    API_KEY,
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


def expected_requests(threads: int, messages: int) -> int:
    """One create carrying the first 20, then one append per further 20 (or part of it)."""
    return threads * (1 + math.ceil(max(0, messages - 20) / 20))


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
            emulator.reset_stats()
            env.update(
                THREADSYNC_MIGRATE__TARGET__PROFILE="openai",
                THREADSYNC_MIGRATE__TARGET__ENDPOINT=emulator.base_url,
                THREADSYNC_MIGRATE__TARGET__API_KEY=API_KEY,
                THREADSYNC_MIGRATE__REQUESTS_PER_SECOND=str(RATE),
                THREADSYNC_MIGRATE__CONCURRENCY=str(CONCURRENCY),
            )
            run = run_measured(threadsync_cmd("migrate"), env=env)
            if run.returncode != 0:
                raise RuntimeError(f"migrate failed: {run.stderr[-2000:]}")
            routes = emulator.stats()["routes"]
        # The target's requests only: the source (the same emulator here) is also asked once
        # per thread for the thread's own metadata.
        target = {r: by for r, by in routes.items() if "/conversations" in r}
        requests = sum(sum(int(n) for n in by.values()) for by in target.values())
        posts = sum(
            sum(int(n) for n in by.values()) for r, by in target.items() if r.startswith("POST")
        )
        source_reads = sum(
            sum(int(n) for n in by.values()) for r, by in routes.items() if r not in target
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    wanted = expected_requests(threads, MESSAGES)
    achieved = requests / run.seconds  # the process's start-up is in the wall time: a bias down
    summary = Summary(
        f"migrate: {threads} threads x {MESSAGES} messages, 20 ms latency, rate {RATE:g}/s",
        header=("figure", "value"),
        rows=[
            ("wall time (s)", f"{run.seconds:.1f}"),
            ("requests", str(requests)),
            ("item-carrying POSTs", str(posts)),
            ("source reads (thread metadata)", str(source_reads)),
            ("achieved rate (/s)", f"{achieved:.1f}"),
            ("peak RSS (MiB)", f"{run.peak_rss_mib:.1f}"),
        ],
        targets=[
            Target("requests == creates + appends", requests, wanted, "=="),
            Target("rate >= 0.9 x configured", achieved, 0.9 * RATE, ">=", "/s"),
            Target("rate <= 1.1 x configured", achieved, 1.1 * RATE, "<=", "/s"),
            Target("peak RSS", run.peak_rss_mib, 100.0, "<=", " MiB"),
        ],
    )
    summary.print()
    return {
        "scale": factor,
        "threads": float(threads),
        "messages_per_thread": float(MESSAGES),
        "migrate_s": run.seconds,
        "requests": float(requests),
        "expected_requests": float(wanted),
        "configured_rate": RATE,
        "achieved_rate": achieved,
        "peak_rss_mib": run.peak_rss_mib,
    }


if __name__ == "__main__":
    main()
