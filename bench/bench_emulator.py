"""Emulator throughput: 100-message list pages per second, served by uvicorn (one worker).

Starts the emulator in a subprocess (uvicorn + httptools + uvloop), seeds one long thread, and
drives it from several client processes that each hold one keep-alive raw socket and replay
precomputed page requests (no JSON parsing on the client side, so the load generator is not the
bottleneck). Run: ``.venv/bin/python -m bench.bench_emulator``.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import subprocess
import sys
import time
from typing import Any

import orjson

API_KEY = "bench-key"
VERSION = "2024-08-01-preview"
MESSAGES = 5_000
LIMIT = 100
CLIENTS = 3
DURATION = 4.0
WARMUP = 0.5


def _serve(port: int) -> None:
    from worker.emulator import Emulator, serve  # noqa: PLC0415 - only the server child needs it

    emulator = Emulator(api_key=API_KEY)
    emulator.seed(seed=7, threads=1, messages=MESSAGES)
    serve(emulator, host="127.0.0.1", port=port)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _request(path: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: bench\r\napi-key: {API_KEY}\r\n"
        "OpenAI-Beta: assistants=v2\r\n\r\n"
    ).encode()


def _read_response(sock: socket.socket, buf: bytearray) -> tuple[int, bytes]:
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(262_144)
        if not chunk:
            raise ConnectionError("server closed the connection")
        buf += chunk
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body = bytearray(rest)
    while len(body) < length:
        chunk = sock.recv(262_144)
        if not chunk:
            raise ConnectionError("server closed mid-body")
        body += chunk
    buf[:] = body[length:]
    return status, bytes(body[:length])


def _client(port: int, requests: list[bytes], start_at: float, stop_at: float, out: Any) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = bytearray()
    pages = 0
    size = 0
    i = 0
    while True:
        now = time.perf_counter()
        if now >= stop_at:
            break
        sock.sendall(requests[i % len(requests)])
        status, body = _read_response(sock, buf)
        if status != 200 or not body.endswith(b"}"):
            raise RuntimeError(f"bad page: status {status}")
        if now >= start_at:
            pages += 1
            size += len(body)
        i += 1
    sock.close()
    out.put((pages, size))


def main() -> dict[str, float]:
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", f"from bench.bench_emulator import _serve; _serve({port})"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    try:
        thread_id = _discover(port)
        requests = _page_requests(port, thread_id)
        ctx = mp.get_context("fork")
        out = ctx.Queue()
        start_at = time.perf_counter() + WARMUP
        stop_at = start_at + DURATION
        procs = [
            ctx.Process(target=_client, args=(port, requests, start_at, stop_at, out))
            for _ in range(CLIENTS)
        ]
        for proc in procs:
            proc.start()
        results = [out.get(timeout=DURATION + 60) for _ in procs]
        pages = sum(r[0] for r in results)
        size = sum(r[1] for r in results) / max(1, pages)
        for proc in procs:
            proc.join()
    finally:
        server.terminate()
        server.wait(timeout=30)
    rate = pages / DURATION
    print(
        f"emulator: {rate:,.0f} list pages/s of {LIMIT} messages "
        f"(~{size / 1024:.0f} KiB each; uvicorn 1 worker, {CLIENTS} keep-alive client "
        f"processes, {DURATION:.0f} s, {os.cpu_count()} cores)"
    )
    return {
        "emulator_pages_per_s": rate,
        "emulator_page_bytes": size,
        "emulator_clients": float(CLIENTS),
    }


def _get(port: int, path: str) -> Any:
    deadline = time.monotonic() + 60
    while True:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)  # the server child is still seeding and starting
    with sock:
        sock.sendall(_request(path))
        status, body = _read_response(sock, bytearray())
    if status != 200:
        raise RuntimeError(f"GET {path}: {status} {body[:200]!r}")
    return orjson.loads(body)


def _discover(port: int) -> str:
    truth = _get(port, "/_emulator/truth")
    return str(next(iter(truth["threads"])))


def _page_requests(port: int, thread_id: str) -> list[bytes]:
    """Every page of the thread in both orders, as ready-to-send request bytes."""
    requests: list[bytes] = []
    for order in ("asc", "desc"):
        base = f"/openai/threads/{thread_id}/messages?api-version={VERSION}&limit={LIMIT}"
        base += f"&order={order}"
        path = base
        while True:
            requests.append(_request(path))
            page = _get(port, path)
            if not page["has_more"]:
                break
            path = f"{base}&after={page['last_id']}"
    return requests


if __name__ == "__main__":
    main()
