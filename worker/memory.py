"""Process-wide memory settings, applied once by the `threadsync` entry point.

Malloc arenas: glibc gives every thread that allocates its own malloc arena (up to 8 per core).
The sync's database work runs in worker threads, so a large sync spreads its short-lived page
objects over a dozen arenas, each keeping freed memory resident: peak RSS above what two arenas
need, for no speed. Two arenas suit a two-stage pipeline (the event loop parsing pages, worker
threads writing them). Elsewhere (musl, macOS) this does nothing.

The cycle collector: a listed page of 100 messages parses into about 2,000 dicts and lists, so
CPython's default (a young collection every 700 new containers) runs two young collections per
page, each walking a page that is still in use into an older generation, and every tenth of those
a larger one, and now and then a full one over every object the imports made, all of it on the
event loop. Parsed pages hold no reference cycles (they are freed by reference counting alone),
so collecting ten times less often frees nothing later; start-up objects are frozen out of full
collections. Measured by ``bench_reconcile`` (collections and time in a reconcile of 100,000
unchanged messages); the figures are in the README, "Benchmarks".
"""

from __future__ import annotations

import ctypes
import gc
import os

_M_ARENA_MAX = -8  # from glibc's malloc.h
ARENAS = 2
YOUNG_COLLECTION_EVERY = 10_000  # new container objects between young collections (CPython: 700)


def limit_malloc_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas unless the user set ``MALLOC_ARENA_MAX``; True if applied."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter already loaded
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_ARENA_MAX, arenas))


def tune_collector() -> tuple[int, int, int]:
    """Young collections every :data:`YOUNG_COLLECTION_EVERY` allocations, start-up objects
    frozen out of full collections; returns the thresholds it replaced."""
    previous = gc.get_threshold()
    # No collection first: after the imports it found 5 objects of garbage among 116,000 and
    # took 90 ms of a start-up's CPU (freezing those 5 keeps them, harmlessly).
    gc.freeze()
    gc.set_threshold(YOUNG_COLLECTION_EVERY, previous[1], previous[2])
    return previous
