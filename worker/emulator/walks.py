"""Which replica walked which thread when: the proof that no thread is walked by two at once.

The daemon in replicas mode sends ``User-Agent: threadsync/<version> replica/<id>``. Every request
naming a thread is recorded with its replica and its span on the server (arrival to response).
A replica's *walk* of a thread is a run of its requests for that thread with at most ``gap``
seconds between one's end and the next's start (a pass's pages follow each other at once; two
passes over one thread are a sync interval apart). Two walks of one thread by different replicas
that overlap in time are what a lease must prevent: :meth:`WalkLog.overlaps` lists them.

:class:`RequestLog` is the budget's witness: each API request's arrival (the emulator's monotonic
clock) and replica, so a test can count the replicas' combined rate over any window. Off by
default; on, it keeps the last ``capacity`` requests (bounded memory).
"""

from __future__ import annotations

import re
import threading
from collections import deque
from dataclasses import dataclass

REPLICA = re.compile(r"\breplica/(\S+)")
DEFAULT_GAP = 0.2


@dataclass(frozen=True)
class Walk:
    replica: str
    start: float
    end: float
    requests: int


class WalkLog:
    """Per thread, each replica's request spans (requests without a replica are not recorded)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: dict[str, list[tuple[str, float, float]]] = {}

    def record(self, thread_id: str, user_agent: str, start: float, end: float) -> None:
        found = REPLICA.search(user_agent)
        if found is None:
            return
        with self._lock:
            self._spans.setdefault(thread_id, []).append((found.group(1), start, end))

    def reset(self) -> None:
        with self._lock:
            self._spans = {}

    def replicas(self) -> set[str]:
        with self._lock:
            return {r for spans in self._spans.values() for r, _, _ in spans}

    def walks(self, thread_id: str, gap: float = DEFAULT_GAP) -> list[Walk]:
        with self._lock:
            spans = sorted(self._spans.get(thread_id, []), key=lambda s: s[1])
        open_walks: dict[str, Walk] = {}
        done: list[Walk] = []
        for replica, start, end in spans:
            walk = open_walks.get(replica)
            if walk is not None and start - walk.end <= gap:
                open_walks[replica] = Walk(
                    replica, walk.start, max(walk.end, end), walk.requests + 1
                )
                continue
            if walk is not None:
                done.append(walk)
            open_walks[replica] = Walk(replica, start, end, 1)
        return sorted(done + list(open_walks.values()), key=lambda w: w.start)

    def overlaps(self, gap: float = DEFAULT_GAP) -> list[tuple[str, Walk, Walk]]:
        """``(thread, walk, walk)`` for every two walks of one thread by different replicas
        that overlap in time."""
        with self._lock:
            threads = list(self._spans)
        found = []
        for thread_id in threads:
            walks = self.walks(thread_id, gap)
            for i, a in enumerate(walks):
                for b in walks[i + 1 :]:
                    if b.start >= a.end:
                        continue  # sorted by start; a later one may still overlap a long `a`
                    if a.replica != b.replica:
                        found.append((thread_id, a, b))
        return found


class RequestLog:
    """Arrival time and replica ("" for none) of each API request, the last ``capacity`` of them."""

    def __init__(self, capacity: int = 0) -> None:
        self._lock = threading.Lock()
        self._entries: deque[tuple[float, str]] = deque(maxlen=max(0, capacity))

    @property
    def capacity(self) -> int:
        return self._entries.maxlen or 0

    def start(self, capacity: int) -> None:
        """Record from now on, keeping the last ``capacity`` requests (0: off); forgets the past."""
        with self._lock:
            self._entries = deque(maxlen=max(0, capacity))

    def record(self, at: float, user_agent: str) -> None:
        if not self._entries.maxlen:
            return  # off: the hot path takes no lock
        found = REPLICA.search(user_agent)
        with self._lock:
            self._entries.append((at, "" if found is None else found.group(1)))

    def entries(self) -> list[tuple[float, str]]:
        """``(arrival, replica)`` in arrival order."""
        with self._lock:
            return sorted(self._entries)
