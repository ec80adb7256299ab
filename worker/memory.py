"""Process-wide memory settings, applied once by the `threadsync` entry point.

glibc gives every thread that allocates its own malloc arena (up to 8 per core). The sync's
database work runs in worker threads, so a 100,000-message sync spread its short-lived page
objects over a dozen arenas, each keeping freed memory resident: about 8 MB of peak RSS above
what two arenas need, for no measurable speed. Two arenas suit a two-stage pipeline (the event
loop parsing pages, worker threads writing them). Elsewhere (musl, macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
import os

_M_ARENA_MAX = -8  # from glibc's malloc.h
ARENAS = 2


def limit_malloc_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas unless the user set ``MALLOC_ARENA_MAX``; True if applied."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter already loaded
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_ARENA_MAX, arenas))
