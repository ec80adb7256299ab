"""Faults on demand: scripted ("the next 3 list calls on thread X answer 503"), probabilistic
(seeded), added latency, an answer trickled a byte at a time, a per-key token-bucket rate limit,
and hostile answers: a 200 whose message objects break the contract (``malform``: fields set or
removed, or the whole item replaced) or list one message twice (``duplicate`` within a page;
``relist``: a listing after a cursor also lists the cursor's own message first, as a server whose
cursor is inclusive would). A ``gate`` holds a matching request, before it is handled, until the
test releases it, and tells the test it holds it (:class:`Gate`): a client provably has that
request in flight (a replica mid-page, a push mid-read) while the test kills or pauses it. Rules
may match on the client's ``User-Agent`` (``agent``: a substring, such as ``replica/<id>``).
No rule is in force unless added.

This module only decides *which* fault a request meets; the ASGI layer acts it out.
"""

from __future__ import annotations

import copy
import random
import threading
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

import orjson

from worker.emulator.conversations import KINDS as CONVERSATION_KINDS

FaultKind = Literal[
    "400",
    "429",
    "500",
    "503",
    "500_after_apply",
    "drop",
    "truncate",
    "latency",
    "malform",
    "duplicate",
    "relist",
    "trickle",
    "gate",
]
FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)
# Route kinds a rule can match; message routes are bare, thread routes carry a prefix, and the
# Conversations API's are its own (conversations.KINDS).
ROUTE_KINDS = (
    frozenset(
        {
            "list",
            "get",
            "create",
            "modify",
            "delete",
            "thread.list",
            "thread.get",
            "thread.create",
            "thread.modify",
            "thread.delete",
        }
    )
    | CONVERSATION_KINDS
)


@dataclass(slots=True)
class FaultRule:
    """A fault and the requests it hits.

    ``times``: answer the next N matching requests, then retire (None: unlimited).
    ``probability``: hit a matching request with this chance (None: always).
    ``method``/``route``/``thread_id``: None matches anything; ``agent``: a substring of the
    request's ``User-Agent`` (None matches anything).

    Hostile answers act on the ``index``-th message of a list answer (Python indexing: -1 is the
    last; a page without that item is answered as it is), or on the message a get, create or
    modify answers. ``malform`` sets ``fields`` on it, removes the keys in ``drop``, or, with
    ``item``, replaces it whole by that JSON value; ``duplicate`` lists a copy of it right after
    it (``fields`` then apply to the copy only: the same id with other content), and ``relist``
    lists the cursor's message again (``fields`` apply to that copy). ``relist`` needs the
    emulator's state, so the ASGI layer acts it out (:func:`relisted`).
    ``trickle``: the headers at once, then the body one byte every ``byte_interval_ms`` (a slow
    or wedged proxy: each read succeeds long before any read timeout, the answer never ends).
    ``gate``: the request waits, before it is handled, until :meth:`Gate.release`; then it is
    answered as usual (if its client is still there).
    """

    fault: FaultKind
    times: int | None = 1
    probability: float | None = None
    method: str | None = None
    route: str | None = None
    thread_id: str | None = None
    retry_after: float = 1.0
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    index: int = 0
    fields: dict[str, Any] | None = None
    drop: list[str] | None = None
    item: Any = None
    byte_interval_ms: float = 2000.0
    agent: str | None = None

    def __post_init__(self) -> None:
        if self.fields is not None and not isinstance(self.fields, dict):
            raise TypeError("fields must be an object of the message fields to set")
        if self.drop is not None and not (
            isinstance(self.drop, list) and all(isinstance(k, str) for k in self.drop)
        ):
            raise TypeError("drop must be a list of field names")
        if not isinstance(self.index, int) or isinstance(self.index, bool):
            raise TypeError("index must be an integer")
        if self.byte_interval_ms <= 0:
            raise ValueError("byte_interval_ms must be positive")
        if self.fault not in FAULT_KINDS:
            raise ValueError(f"fault must be one of {FAULT_KINDS}, not {self.fault!r}")
        if self.route is not None and self.route not in ROUTE_KINDS:
            raise ValueError(f"route must be one of {sorted(ROUTE_KINDS)}, not {self.route!r}")
        if self.probability is not None and not 0.0 <= self.probability <= 1.0:
            raise ValueError("probability must be within 0..1")
        if self.times is not None and self.times < 1:
            raise ValueError("times must be at least 1")
        if self.method is not None:
            self.method = self.method.upper()

    def matches(self, method: str, route: str, thread_id: str | None, agent: str = "") -> bool:
        return (
            (self.method is None or self.method == method)
            and (self.route is None or self.route == route)
            and (self.thread_id is None or self.thread_id == thread_id)
            and (self.agent is None or self.agent in agent)
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FaultRule:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown fault rule fields: {sorted(unknown)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


HOSTILE: frozenset[str] = frozenset({"malform", "duplicate"})


def relisted(payload: bytes, cursor: dict[str, Any], rule: FaultRule) -> bytes:
    """A list answer with the message its ``after`` cursor names listed again, first (with
    ``rule``'s ``fields`` and ``drop`` applied to that copy: the same id, other content)."""
    body = orjson.loads(payload)
    cursor = _changed(cursor, rule)
    body["data"].insert(0, cursor)
    if body.get("first_id") is not None:
        body["first_id"] = cursor["id"]
    return orjson.dumps(body)


def hostile(payload: bytes, rule: FaultRule, *, listing: bool) -> bytes:
    """A 200 answer's body with ``rule``'s hostile change made (see :class:`FaultRule`)."""
    body = orjson.loads(payload)
    if listing:
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list) or not -len(data) <= rule.index < len(data):
            return payload
        at = rule.index % len(data)
        if rule.fault == "duplicate":
            data.insert(at + 1, _changed(copy.deepcopy(data[at]), rule))
        else:
            data[at] = _changed(data[at], rule)
    elif rule.fault == "duplicate":
        return payload  # one message answered: nothing to list twice
    else:
        body = _changed(body, rule)
    return orjson.dumps(body)


def _changed(obj: Any, rule: FaultRule) -> Any:
    if rule.item is not None:
        return copy.deepcopy(rule.item)
    if not isinstance(obj, dict):
        return obj
    obj.update(copy.deepcopy(rule.fields or {}))
    for key in rule.drop or ():
        obj.pop(key, None)
    return obj


@dataclass(slots=True)
class RateLimit:
    rps: float
    burst: float

    def __post_init__(self) -> None:
        if self.rps <= 0 or self.burst < 1:
            raise ValueError("rate limit needs rps > 0 and burst >= 1")


@dataclass(slots=True)
class TokenBucket:
    """Classic token bucket; ``take`` answers 0 when allowed, else the honest wait in seconds."""

    limit: RateLimit
    tokens: float
    stamp: float

    def take(self, now: float) -> float:
        elapsed = max(0.0, now - self.stamp)
        self.tokens = min(self.limit.burst, self.tokens + elapsed * self.limit.rps)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.limit.rps


@dataclass(slots=True)
class Faults:
    """The fault configuration in force plus its mutable counters."""

    rules: list[FaultRule] = field(default_factory=list)
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    rate_limit: RateLimit | None = None
    buckets: dict[str, TokenBucket] = field(default_factory=dict)

    def pick(
        self,
        method: str,
        route: str,
        thread_id: str | None,
        rng: random.Random,
        agent: str = "",
    ) -> FaultRule | None:
        """The first rule hitting this request; scripted rules count down and retire."""
        for rule in self.rules:
            if not rule.matches(method, route, thread_id, agent):
                continue
            if rule.probability is not None and rng.random() >= rule.probability:
                continue
            if rule.times is not None:
                rule.times -= 1
                if rule.times == 0:
                    self.rules.remove(rule)
            return rule
        return None

    def throttle(self, key: str, now: float) -> float:
        """Seconds to wait before ``key`` may call again (0: go ahead)."""
        if self.rate_limit is None:
            return 0.0
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = TokenBucket(self.rate_limit, self.rate_limit.burst, now)
            self.buckets[key] = bucket
        return bucket.take(now)

    def latency(self, rng: random.Random) -> float:
        """The added latency in seconds for one request (fixed plus uniform jitter)."""
        ms = self.latency_ms + (rng.uniform(0.0, self.jitter_ms) if self.jitter_ms else 0.0)
        return ms / 1000.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "rules": [r.to_dict() for r in self.rules],
            "latency_ms": self.latency_ms,
            "jitter_ms": self.jitter_ms,
            "rate_limit": None if self.rate_limit is None else asdict(self.rate_limit),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Faults:
        unknown = set(data) - {"rules", "latency_ms", "jitter_ms", "rate_limit"}
        if unknown:
            raise ValueError(f"unknown fault settings: {sorted(unknown)}")
        limit = data.get("rate_limit")
        return cls(
            rules=[FaultRule.from_dict(r) for r in data.get("rules", [])],
            latency_ms=float(data.get("latency_ms", 0.0)),
            jitter_ms=float(data.get("jitter_ms", 0.0)),
            rate_limit=None if limit is None else RateLimit(**limit),
        )


@dataclass(slots=True)
class HeldRequest:
    """A request a ``gate`` fault holds: which route, thread and client."""

    route: str
    thread_id: str | None
    agent: str
    released: threading.Event = field(default_factory=threading.Event)


class Gate:
    """Where ``gate`` faults hold their requests; thread-safe (the server may run in a thread of
    its own). A test waits for :meth:`wait_held`, acts, then calls :meth:`release`."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._held: list[HeldRequest] = []
        self._seen = 0

    def hold(self, request: HeldRequest) -> None:
        """Blocking (a worker thread of the server): wait until released."""
        with self._cond:
            self._held.append(request)
            self._cond.notify_all()
        request.released.wait()

    def wait_held(self, timeout: float) -> HeldRequest:
        """The next request held (in the order they were held); TimeoutError after ``timeout``."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._held) > self._seen, timeout):
                raise TimeoutError(f"no request was held within {timeout} s")
            request = self._held[self._seen]
            self._seen += 1
            return request

    def release(self) -> None:
        """Let every request held so far go on."""
        with self._cond:
            for request in self._held:
                request.released.set()
