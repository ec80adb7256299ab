"""Stopping a one-shot command cleanly on SIGINT or SIGTERM.

The first signal cancels the work: whatever each thread's pass committed stays, the run is recorded
as interrupted (see :mod:`worker.sync.runner`), and the command exits 130. While it winds down the
signal handlers are already gone, so a second Ctrl-C (or SIGTERM) ends the process at once.
"""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

T = TypeVar("T")


def run_interruptible(work: Callable[[], Awaitable[T]]) -> T | None:
    """Run ``work`` to its end (its value) or to the first SIGINT/SIGTERM (None)."""

    async def main() -> T | None:
        stopped = False
        outcome: list[T] = []
        async with anyio.create_task_group() as tg:

            async def stop_on_signal() -> None:
                nonlocal stopped
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for _ in signals:
                        stopped = True
                        tg.cancel_scope.cancel()
                        return

            tg.start_soon(stop_on_signal)
            outcome.append(await work())
            tg.cancel_scope.cancel()
        return None if stopped or not outcome else outcome[0]

    return anyio.run(main)
