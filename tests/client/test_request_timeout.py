"""``api.request_timeout``: one deadline over a whole attempt, against a real loopback server that
trickles its answer a byte at a time (each read arrives well inside ``read_timeout``, so only an
overall deadline can end the request)."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import anyio
import anyio.abc
import pytest
from pydantic import SecretStr

from worker.client import ApiClient
from worker.config import ApiSettings, RetrySettings
from worker.errors import TransientError
from worker.testing import FakeClock

pytestmark = pytest.mark.anyio

HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n"
BYTE_EVERY = 0.02  # the server's pace: far inside read_timeout below
MOST_BYTES = 5_000  # a bound on the trickle, so a client without the deadline fails, not hangs


@dataclass
class Trickler:
    """A raw HTTP/1.1 server: the headers at once, then the body one byte every ``BYTE_EVERY``."""

    port: int = 0
    connections: int = 0
    bytes_sent: int = 0
    closed: list[anyio.Event] = field(default_factory=list)

    async def serve(self, stream: anyio.abc.SocketStream) -> None:
        self.connections += 1
        gone = anyio.Event()
        self.closed.append(gone)
        try:
            request = b""
            while b"\r\n\r\n" not in request:
                request += await stream.receive()
            await stream.send(HEAD)
            for _ in range(MOST_BYTES):
                await stream.send(b"{")
                self.bytes_sent += 1
                await anyio.sleep(BYTE_EVERY)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream):
            pass  # the client gave up on this answer and closed the connection
        finally:
            gone.set()
            await stream.aclose()


@pytest.fixture
async def trickler() -> AsyncIterator[Trickler]:
    server = Trickler()
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    server.port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, server.serve)
        yield server
        tg.cancel_scope.cancel()


def client_for(server: Trickler, *, attempts: int, clock: FakeClock) -> ApiClient:
    api = ApiSettings(
        profile="openai",
        endpoint=f"http://127.0.0.1:{server.port}/v1",
        api_key=SecretStr("sk-test"),
        read_timeout=30.0,  # never trips: a byte arrives every BYTE_EVERY seconds
        request_timeout=0.4,
    )
    retry = RetrySettings(max_attempts=attempts, initial_delay=0.5, max_delay=1.0)
    return ApiClient(api, retry, rng=random.Random(1), sleep=clock.sleep, clock=clock.now)


async def test_a_trickling_answer_ends_at_the_request_deadline(trickler: Trickler) -> None:
    """Each attempt ends at api.request_timeout; the retries are spent; the error names it."""
    clock = FakeClock()
    async with client_for(trickler, attempts=2, clock=clock) as client:
        with pytest.raises(TransientError) as caught:
            await client.list_messages("thread_1")
    message = caught.value.message
    assert "request exceeded api.request_timeout (0.4 s)" in message
    assert "gave up after 2 attempts" in message
    assert caught.value.status is None
    # Retried like any transient failure, each attempt on a fresh connection (the cancelled
    # one is closed, never handed back to the pool half read).
    assert trickler.connections == 2
    assert len(clock.sleeps) == 1
    for gone in trickler.closed:
        await gone.wait()
    assert 0 < trickler.bytes_sent < 2 * MOST_BYTES


async def test_a_create_is_not_resent_after_the_request_deadline(trickler: Trickler) -> None:
    """The deadline may pass after the server applied a create: it is never sent twice."""
    async with client_for(trickler, attempts=5, clock=FakeClock()) as client:
        with pytest.raises(TransientError) as caught:
            await client.create_message("thread_1", role="user", content="hi")
    assert "request exceeded api.request_timeout" in caught.value.message
    assert "not repeated" in caught.value.message
    assert trickler.connections == 1


def test_request_timeout_takes_a_duration() -> None:
    assert ApiSettings(request_timeout="2m").request_timeout == 120.0
    assert ApiSettings().request_timeout == 120.0  # the documented default
