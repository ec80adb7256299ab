"""What the sync benchmarks share: the emulator in its own process, its control plane, the
``threadsync`` CLI as a measured subprocess, the bench scale, and the summary table.

The emulator runs under uvicorn (httptools + uvloop) in a child process, so the worker under test
and the server never share an interpreter or a GIL, as in production. Peak RSS of a child is its
own ``VmHWM`` (see :func:`run_measured` for why not ``ru_maxrss``).
"""

from __future__ import annotations

import gc
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anyio
import httpx
from pydantic import SecretStr

from worker import logs
from worker.client import ApiClient
from worker.config import ApiSettings, RetrySettings
from worker.memory import tune_collector
from worker.store.db import Mirror
from worker.store.repo import add_threads
from worker.sync.runner import RunReport, sync_threads

API_KEY = "bench-key-not-a-secret"
API_VERSION = "2024-08-01-preview"
LATENCY_MS = 20.0
SCALE_ENV = "THREADSYNC_BENCH_SCALE"
RSS_SAMPLE_S = 0.02

T = TypeVar("T")


def scale() -> float:
    """``THREADSYNC_BENCH_SCALE`` (default 1.0): shrinks every count for a quick smoke run."""
    raw = os.environ.get(SCALE_ENV, "1.0")
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit(f"{SCALE_ENV} must be a number, not {raw!r}") from None
    if not 0 < value <= 1000:
        raise SystemExit(f"{SCALE_ENV} must be within (0, 1000], not {value}")
    return value


def scaled(n: int, factor: float) -> int:
    """``n`` scaled, never below one."""
    return max(1, round(n * factor))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a child: this checkout importable, no stray proxy settings."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


@dataclass
class EmulatorProcess:
    """A running emulator child and a synchronous client of its control plane."""

    base_url: str
    proc: subprocess.Popen[bytes]
    control: httpx.Client

    def seed(self, *, seed: int, threads: int, messages: int) -> list[str]:
        body = {"seed": seed, "threads": threads, "messages": messages}
        return list(self._call("POST", "seed", body)["thread_ids"])

    def append(self, thread_id: str, n: int) -> int:
        answer = self._call("POST", f"threads/{thread_id}/messages", {"n": n})
        return len(answer["messages"])

    def stats(self) -> dict[str, Any]:
        return dict(self._call("GET", "stats"))

    def reset_stats(self) -> None:
        self._call("DELETE", "stats")

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        response = self.control.request(method, f"/_emulator/{path}", json=body)
        response.raise_for_status()
        return response.json()


@contextmanager
def emulator_process(*, latency_ms: float = LATENCY_MS) -> Iterator[EmulatorProcess]:
    """``threadsync emulator`` in a child process (empty; seed it through the control plane)."""
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "worker",
        "--log-level",
        "warning",
        "emulator",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--api-key",
        API_KEY,
        "--latency-ms",
        str(latency_ms),
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=child_env()
    )
    base_url = f"http://127.0.0.1:{port}"
    control = httpx.Client(base_url=base_url, timeout=600.0, trust_env=False)
    try:
        _wait_ready(control, proc)
        yield EmulatorProcess(base_url, proc, control)
    finally:
        control.close()
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_ready(control: httpx.Client, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the emulator exited at start-up with status {proc.returncode}")
        try:
            control.get("/_emulator/behaviour").raise_for_status()
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)  # the child is still importing; there is no readiness signal to await
        else:
            return


def count_requests(stats: dict[str, Any]) -> dict[str, int]:
    """API requests by kind (``list``, ``get``, ...) and ``total``, from the emulator's stats."""
    out: dict[str, int] = {"total": 0}
    for route, by_status in stats["routes"].items():
        n = sum(int(v) for v in by_status.values())
        kind = route_kind(str(route))
        out[kind] = out.get(kind, 0) + n
        out["total"] += n
    return out


def route_kind(route: str) -> str:
    """``GET .../messages`` is a list, ``GET .../messages/{id}`` a get; anything else by name."""
    method, _, path = route.partition(" ")
    path = path.rstrip("/")
    if path.endswith("/messages"):
        return "list" if method in ("GET", "") else "create"
    if "/messages/" in path:
        return {"GET": "get", "POST": "modify", "DELETE": "delete"}.get(method, route)
    return route


@dataclass(frozen=True)
class ChildRun:
    """A finished child process: wall time, exit status, peak RSS (MiB), captured stderr and
    stdout (where a command's summary goes)."""

    seconds: float
    returncode: int
    peak_rss_mib: float
    stderr: str
    stdout: str = ""


def run_measured(cmd: Sequence[str], *, env: dict[str, str]) -> ChildRun:
    """Run ``cmd`` to completion, sampling its own peak RSS (``VmHWM``) until it exits.

    Not ``getrusage(RUSAGE_CHILDREN)`` nor ``wait4``'s ``ru_maxrss``: on Linux a child's
    ``ru_maxrss`` starts from its parent's resident size at ``fork`` (exec keeps the old mm's high
    water mark), so a child of a large benchmark process would report the benchmark's size.
    ``VmHWM`` belongs to the child's own address space, created at exec, and only ever grows, so
    the last sample before exit is the peak up to the sampling interval.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=err, env=env)
        peak_kib = 0
        while True:
            peak_kib = max(peak_kib, _vm_hwm_kib(proc.pid))
            try:
                proc.wait(timeout=RSS_SAMPLE_S)
            except subprocess.TimeoutExpired:
                continue
            break
        seconds = time.perf_counter() - started
        err.seek(0)
        stderr = err.read().decode(errors="replace")
        out.seek(0)
        stdout = out.read().decode(errors="replace")
    return ChildRun(seconds, proc.returncode, peak_kib / 1024, stderr, stdout)


def _vm_hwm_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass  # the child is exiting; the previous sample stands
    return 0


def threadsync_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "worker", "--log-level", "warning", *args]


def threadsync_env(emulator: EmulatorProcess, database_url: str) -> dict[str, str]:
    return child_env(
        AZURE_OPENAI_ENDPOINT=emulator.base_url,
        AZURE_OPENAI_API_KEY=API_KEY,
        OPENAI_API_VERSION=API_VERSION,
        THREADSYNC_DATABASE_URL=database_url,
    )


# -- the summary ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One pass/fail line: ``measured`` against ``limit`` with a comparison in words."""

    name: str
    measured: float
    limit: float
    kind: str  # "<=", ">=", "=="
    unit: str = ""

    @property
    def passed(self) -> bool:
        if math.isnan(self.measured):
            return False
        if self.kind == "<=":
            return self.measured <= self.limit
        if self.kind == ">=":
            return self.measured >= self.limit
        return self.measured == self.limit


@dataclass
class Summary:
    """Rows of figures plus targets, printed as two aligned tables."""

    title: str
    rows: list[tuple[str, ...]] = field(default_factory=list)
    header: tuple[str, ...] = ()
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def print(self) -> None:
        print(f"\n== {self.title} ==")
        if self.header:
            print_table(self.header, self.rows)
        if self.targets:
            print()
            print_table(
                ("target", "measured", "wanted", "result"),
                [
                    (
                        t.name,
                        f"{t.measured:,.2f}{t.unit}",
                        f"{t.kind} {t.limit:,.2f}{t.unit}",
                        "PASS" if t.passed else "FAIL",
                    )
                    for t in self.targets
                ],
            )
        for note in self.notes:
            print(f"  note: {note}")


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [len(h) for h in header]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    line = "  ".join("{:<%d}" % w for w in widths)  # noqa: UP031 - a format built from widths
    print(line.format(*header))
    print(line.format(*("-" * w for w in widths)))
    for row in rows:
        print(line.format(*row))


def rate(count: float, seconds: float) -> float:
    return count / seconds if seconds > 0 else math.nan


# -- the floor: a bare client listing pages -------------------------------------------------------


@dataclass
class Listing:
    """What a bare listing pass did: time, pages, size in bytes, and (when kept) the page bodies."""

    seconds: float = 0.0
    pages: int = 0
    size: int = 0
    bodies: list[tuple[str, bytes]] = field(default_factory=list)


def _cursor(body: bytes) -> tuple[str | None, bool]:
    """``last_id`` and ``has_more`` without parsing: both follow ``data`` in the page object.

    Inside a JSON string every quote is escaped, so the unescaped ``"last_id":`` found last is the
    page's own field.
    """
    more = body.rfind(b'"has_more":true') != -1
    at = body.rfind(b'"last_id":"')
    if at == -1:
        return None, False
    start = at + len(b'"last_id":"')
    return body[start : body.index(b'"', start)].decode(), more


async def list_every_page(
    base_url: str,
    thread_ids: Sequence[str],
    *,
    concurrency: int,
    order: str = "asc",
    keep: bool = False,
) -> Listing:
    """Every page of every thread with a pooled ``httpx.AsyncClient``, ``concurrency`` at once."""
    out = Listing()
    limiter = anyio.CapacityLimiter(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=base_url,
        headers={"api-key": API_KEY},
        params={"api-version": API_VERSION},
        limits=limits,
        timeout=120.0,
        trust_env=False,
    ) as http:

        async def one(thread_id: str) -> None:
            async with limiter:
                after: str | None = None
                while True:
                    params = {"limit": "100", "order": order}
                    if after is not None:
                        params["after"] = after
                    response = await http.get(
                        f"/openai/threads/{thread_id}/messages", params=params
                    )
                    if response.status_code != 200:
                        raise RuntimeError(f"list {thread_id}: HTTP {response.status_code}")
                    body = response.content
                    out.pages += 1
                    out.size += len(body)
                    if keep:
                        out.bodies.append((thread_id, body))
                    after, more = _cursor(body)
                    if not more or after is None:
                        return

        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for thread_id in thread_ids:
                tg.start_soon(one, thread_id)
        out.seconds = time.perf_counter() - started
    return out


# -- threadsync in this process ------------------------------------------------------------------


def quiet_logs() -> None:
    """Per-thread info lines would swamp the summary (and cost time): warnings only."""
    logs.configure(level="warning")


def track(database_url: str, thread_ids: Sequence[str]) -> None:
    """Create the mirror and track ``thread_ids``, as ``threadsync threads add`` does."""
    mirror = Mirror(database_url)
    try:
        with mirror.write() as session:
            add_threads(session, list(thread_ids))
    finally:
        mirror.dispose()


def sqlite_url(directory: Path, name: str) -> str:
    return f"sqlite:///{directory / name}"


@dataclass
class Breakdown:
    """Where a threadsync pass spent its time, for the owner of the engine when a target fails.

    Database work is timed inside the worker thread (so waiting for SQLite's single writer is not
    counted); API calls are timed from the caller's side (latency, transfer and parsing, with the
    concurrent calls overlapping). ``loop_cpu`` is CPU burnt by the event-loop thread: parsing,
    digests and httpx; ``process_cpu`` adds the database threads.
    """

    wall: float = 0.0
    loop_cpu: float = 0.0
    process_cpu: float = 0.0
    api: float = 0.0
    api_calls: int = 0
    db_write: float = 0.0
    db_writes: int = 0
    db_read: float = 0.0
    db_reads: int = 0

    def attach(self, client: ApiClient, mirror: Mirror) -> None:
        for name in ("list_messages", "get_message"):
            setattr(client, name, self._timed_call(getattr(client, name)))
        setattr(mirror, "run_write", self._timed_db(mirror.run_write, write=True))  # noqa: B010 - patching one instance's method
        setattr(mirror, "run", self._timed_db(mirror.run, write=False))  # noqa: B010 - ditto

    def _timed_call(self, call: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        async def timed(*args: Any, **kwargs: Any) -> T:
            started = time.perf_counter()
            try:
                return await call(*args, **kwargs)
            finally:
                self.api += time.perf_counter() - started
                self.api_calls += 1

        return timed

    def _timed_db(
        self, run: Callable[..., Awaitable[T]], *, write: bool
    ) -> Callable[..., Awaitable[T]]:
        def measured(fn: Callable[..., T]) -> Callable[..., T]:
            def inner(*args: Any, **kwargs: Any) -> T:
                started = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    spent = time.perf_counter() - started
                    if write:
                        self.db_write += spent
                        self.db_writes += 1
                    else:
                        self.db_read += spent
                        self.db_reads += 1

            return inner

        async def timed(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
            return await run(measured(fn), *args, **kwargs)

        return timed

    def describe(self) -> str:
        return (
            f"wall {self.wall:.2f}s; event-loop thread CPU {self.loop_cpu:.2f}s; process CPU"
            f" {self.process_cpu:.2f}s; DB writes {self.db_write:.2f}s in {self.db_writes:,}"
            f" transactions; DB reads {self.db_read:.2f}s in {self.db_reads:,}; API calls"
            f" {self.api:.2f}s summed over {self.api_calls:,} (overlapping)"
        )


async def threadsync_pass(
    base_url: str, mirror: Mirror, *, full: bool = False, concurrency: int = 8
) -> tuple[RunReport, Breakdown]:
    """One ``sync_threads`` run with a real :class:`ApiClient` over the loopback socket, under
    the collector settings the ``threadsync`` entry point applies (restored afterwards, so the
    baselines measured in the same process run under CPython's defaults)."""
    api = ApiSettings(endpoint=base_url, api_key=SecretStr(API_KEY), api_version=API_VERSION)
    breakdown = Breakdown()
    thresholds = tune_collector()
    try:
        async with ApiClient(api, RetrySettings()) as client:
            breakdown.attach(client, mirror)
            started, cpu, loop_cpu = time.perf_counter(), time.process_time(), time.thread_time()
            report = await sync_threads(client, mirror, full=full, concurrency=concurrency)
            breakdown.wall = time.perf_counter() - started
            breakdown.process_cpu = time.process_time() - cpu
            breakdown.loop_cpu = time.thread_time() - loop_cpu
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()
    return report, breakdown
