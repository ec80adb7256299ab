"""Pushing queued metadata edits: read, merge three ways, write the complete map, record.

For each open edit: GET the message, merge ``base``/``desired``/remote per key
(:mod:`worker.outbox.merge`), apply the conflict policy, and POST the complete resulting map only
if the server does not already hold it. That last check is what makes the effect exactly-once:

- a push killed between the modify and the local commit leaves the edit pending; the next push
  reads the remote, finds the wish already there and completes with no second modify;
- a modify answered by a 5xx, a dropped connection or a cut body may have been applied, so it is
  never repeated blindly: the push reads the message again and decides afresh.

In replicas mode (a ``guard``: the push job's lease, ``worker/daemon/slots.py``) each modify is
preceded by a check, in its own transaction on the database clock, that the lease still holds and
the edit is still the version read; outcomes are recorded only under the same check. A push that
finds its lease lost stops: nothing more is sent or recorded, and the replica now holding the slot
completes the edits by the read above. The modify carries the complete map, so the one case no
check can close (a pause between the check and the request reaching the service, longer than the
lease) repeats the same write at most once (README, "Replicas: what runs exactly once").

Only a 429 (which proves nothing was done) is retried by the client itself. A modify answered
with a malformed message is treated like a cut body (read again); a read answering one fails the
edit, naming the field, and nothing of it reaches the mirror. Permanent errors (400,
401/403, 404) mark the edit failed with the server's message; 401/403 also stop the push, since
every other edit would fail the same way. An edit that keeps failing transiently stays pending.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from worker.client import ApiClient
from worker.client.retry import backoff_delay
from worker.config import RetrySettings
from worker.errors import (
    AuthError,
    ConfigError,
    MalformedError,
    ParkedError,
    PermanentError,
    TransientError,
    WriteRefused,
)
from worker.logs import get_logger
from worker.outbox.limits import check_limits
from worker.outbox.merge import (
    POLICIES,
    Conflict,
    Policy,
    as_metadata,
    changed_keys,
    merge3,
    wire_map,
)
from worker.outbox.record import Guard, Outcome, Snapshot, load_open, still_open, store_outcomes
from worker.store.db import Mirror

log = get_logger()


@dataclass(frozen=True, slots=True)
class EditOutcome:
    """What one push did with one edit. ``result``: applied | conflicted | failed | deferred |
    unrecorded (replicas mode: its answer came but the push's lease was lost before it was
    recorded, so the mirror still holds the edit open; ``written`` says whether a modify was
    sent; the replica now holding the slot settles it by a read)."""

    thread_id: str
    message_id: str
    result: str
    keys: list[str] = field(default_factory=list)
    attempts: int = 0
    requests: int = 0
    written: bool = False  # a modify was sent and answered (False: the server already agreed)
    error: str | None = None


@dataclass
class PushReport:
    """The outcome of one push, for the CLI summary, the daemon and the metrics."""

    outcomes: list[EditOutcome] = field(default_factory=list)
    seconds: float = 0.0
    aborted: str | None = None  # why the push stopped early (an auth failure)

    def _with(self, result: str) -> list[EditOutcome]:
        return [o for o in self.outcomes if o.result == result]

    @property
    def applied(self) -> list[EditOutcome]:
        return self._with("applied")

    @property
    def conflicted(self) -> list[EditOutcome]:
        return self._with("conflicted")

    @property
    def failed(self) -> list[EditOutcome]:
        return self._with("failed")

    @property
    def deferred(self) -> list[EditOutcome]:
        return self._with("deferred")

    @property
    def unrecorded(self) -> list[EditOutcome]:
        return self._with("unrecorded")

    @property
    def requests(self) -> int:
        return sum(o.requests for o in self.outcomes)

    @property
    def ok(self) -> bool:
        """Every edit reached the server; nothing is held, failed or left for later."""
        return self.aborted is None and all(o.result == "applied" for o in self.outcomes)


async def modify_once(
    client: ApiClient, thread_id: str, message_id: str, metadata: dict[str, str]
) -> dict[str, Any]:
    """POST the metadata without the client repeating it after an answer it cannot trust;
    the caller re-reads the message instead, so a write is never sent twice.

    A malformed answer is one not to trust either: the modify may have been applied, but that
    object must not become the mirror's copy. It is handled like a cut body: the message is read
    again (and checked again) before anything is recorded.
    """
    try:
        return await client.modify_message(thread_id, message_id, metadata, repeat=False)
    except MalformedError as exc:
        raise TransientError(f"{exc.message}; reading the message again") from exc


@dataclass
class _Push:
    client: ApiClient
    policy: Policy
    retry: RetrySettings
    sleep: Callable[[float], Awaitable[None]]
    rng: random.Random
    record: MemoryObjectSendStream[Outcome]
    mirror: Mirror
    guard: Guard | None = None
    aborted: str | None = None  # why the push stopped: an auth failure or the lost lease
    lease_lost: bool = False  # only a WriteRefused sets it: the recorder then records nothing
    unrecorded: set[str] = field(default_factory=set)  # message ids whose outcome was dropped

    async def one(self, snap: Snapshot) -> EditOutcome:
        try:
            return await self._one(snap)
        except WriteRefused as exc:  # the lease is lost: nothing more is sent nor recorded
            self.aborted, self.lease_lost = str(exc), True
            log.warning("push.lease_lost", thread=snap.thread_id, message=snap.message_id)
            return EditOutcome(snap.thread_id, snap.message_id, "deferred", error=str(exc))

    async def _one(self, snap: Snapshot) -> EditOutcome:
        requests, error = 0, "not attempted"
        attempts = snap.attempts
        for attempt in range(self.retry.max_attempts):
            if self.aborted is not None:
                break
            attempts += 1
            try:
                remote_obj = await self.client.get_message(snap.thread_id, snap.message_id)
                requests += 1
                remote = as_metadata(remote_obj.get("metadata"))
                # A key the wish lacks but the base had can only be blanked (see merge.wire_map).
                merged = merge3(snap.base, wire_map(snap.desired, snap.base), remote)
                if not merged.clean and self.policy == "fail":
                    return await self._conflicted(snap, merged.conflicts, attempts, requests)
                wanted = wire_map(merged.resolved(self.policy), remote)
                keys = changed_keys(remote, wanted)
                if not keys:
                    return await self._applied(snap, remote_obj, [], attempts, requests, False)
                check_limits(wanted)
                if self.guard is not None and not await self.mirror.run_write(
                    still_open, self.mirror, snap, self.guard
                ):
                    # Edited (or settled) since it was read: send nothing, record nothing;
                    # the next push sends the newer wish.
                    return _deferred(snap, attempts, requests, "edited meanwhile")
                requests += 1
                answer = await modify_once(self.client, snap.thread_id, snap.message_id, wanted)
                return await self._applied(snap, answer, keys, attempts, requests, True)
            except ConfigError as exc:  # the merged map breaks a limit: the server would say 400
                return await self._failed(snap, str(exc), attempts, requests)
            except AuthError as exc:
                self.aborted = exc.message
                return await self._failed(snap, exc.message, attempts, requests)
            except PermanentError as exc:
                return await self._failed(snap, exc.message, attempts, requests)
            except ParkedError as exc:
                error = exc.message
                break
            except TransientError as exc:
                error = exc.message
                if attempt + 1 < self.retry.max_attempts:
                    delay = backoff_delay(
                        attempt, self.retry.initial_delay, self.retry.max_delay, self.rng
                    )
                    await self.sleep(delay)
        await self.record.send(Outcome(snap, "pending", attempts, error=error))
        log.warning(
            "push.deferred",
            thread=snap.thread_id,
            message=snap.message_id,
            keys=changed_keys(snap.base, snap.desired),
            attempts=attempts,
            error=error,
        )
        return _deferred(snap, attempts, requests, error)

    async def _applied(
        self,
        snap: Snapshot,
        obj: dict[str, Any],
        keys: list[str],
        attempts: int,
        requests: int,
        written: bool,
    ) -> EditOutcome:
        await self.record.send(Outcome(snap, "applied", attempts, obj))
        log.info(
            "push.applied",
            thread=snap.thread_id,
            message=snap.message_id,
            keys=keys,
            attempts=attempts,
            written=written,
        )
        return EditOutcome(
            snap.thread_id, snap.message_id, "applied", keys, attempts, requests, written
        )

    async def _conflicted(
        self, snap: Snapshot, conflicts: tuple[Conflict, ...], attempts: int, requests: int
    ) -> EditOutcome:
        keys = [c.key for c in conflicts]
        error = "changed on the server too: " + ", ".join(keys)
        await self.record.send(
            Outcome(snap, "conflicted", attempts, error=error, conflicts=conflicts)
        )
        log.warning(
            "push.conflict",
            thread=snap.thread_id,
            message=snap.message_id,
            keys=keys,
            attempts=attempts,
            policy=self.policy,
        )
        return EditOutcome(
            snap.thread_id, snap.message_id, "conflicted", keys, attempts, requests, error=error
        )

    async def _failed(
        self, snap: Snapshot, error: str, attempts: int, requests: int
    ) -> EditOutcome:
        await self.record.send(Outcome(snap, "failed", attempts, error=error))
        keys = changed_keys(snap.base, snap.desired)
        log.warning(
            "push.failed",
            thread=snap.thread_id,
            message=snap.message_id,
            keys=keys,
            attempts=attempts,
            error=error,
        )
        return EditOutcome(
            snap.thread_id, snap.message_id, "failed", keys, attempts, requests, error=error
        )


async def _recorder(
    mirror: Mirror, receive: MemoryObjectReceiveStream[Outcome], push: _Push
) -> None:
    """Write outcomes in batches: whatever arrived while the previous batch was being written.

    One transaction per edit would serialise the push on SQLite's single writer; batching is safe
    because an outcome lost to a crash only costs the next push one read (the exactly-once check).
    A batch the guard refuses (the lease lost) is dropped, and so is everything after it: the
    push stops, and the replica now holding the slot finds those edits still open.
    """
    async with receive:
        ended = False
        while not ended:
            try:
                batch = [await receive.receive()]
            except anyio.EndOfStream:
                return
            while True:
                try:
                    batch.append(receive.receive_nowait())
                except anyio.WouldBlock:
                    break
                except anyio.EndOfStream:
                    ended = True
                    break
            if push.lease_lost:  # (an auth failure still records its failed edits)
                push.unrecorded.update(o.snap.message_id for o in batch)
                continue  # the lease is lost: drain, record nothing more
            try:
                await mirror.run_write(store_outcomes, mirror, batch, push.guard)
            except WriteRefused as exc:
                push.aborted, push.lease_lost = str(exc), True
                push.unrecorded.update(o.snap.message_id for o in batch)
                log.warning("push.lease_lost", unrecorded=len(batch))


async def push_pending(
    client: ApiClient,
    mirror: Mirror,
    *,
    policy: Policy = "fail",
    retry_failed: bool = False,
    concurrency: int = 8,
    retry: RetrySettings | None = None,
    sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    rng: random.Random | None = None,
    guard: Guard | None = None,
) -> PushReport:
    """Send every open edit (``concurrency`` at once) and record each outcome in the mirror.

    ``retry`` bounds the read-merge-write rounds per edit after an untrusted answer (its
    ``max_attempts``, backoff between rounds); ``sleep`` and ``rng`` are for tests. ``guard``
    (replicas mode): the push job's lease, checked before each modify and in each record.
    """
    if policy not in POLICIES:
        raise ConfigError(f"conflict policy must be one of {', '.join(POLICIES)}, not {policy!r}")
    snaps = await mirror.run_write(load_open, mirror, retry_failed=retry_failed)
    send, receive = anyio.create_memory_object_stream[Outcome](math.inf)
    push = _Push(
        client, policy, retry or RetrySettings(), sleep, rng or random.Random(), send, mirror, guard
    )
    report = PushReport()
    limiter = anyio.CapacityLimiter(concurrency)
    started = time.monotonic()
    # Nothing to push is the daemon's usual minute: not worth a line at info level.
    speak = log.info if snaps else log.debug
    speak("push.started", edits=len(snaps), policy=policy, concurrency=concurrency)

    async def one(snap: Snapshot) -> None:
        async with limiter:
            if push.aborted is None:
                report.outcomes.append(await push.one(snap))

    async with anyio.create_task_group() as tg:
        tg.start_soon(_recorder, mirror, receive, push)
        async with send, anyio.create_task_group() as edits:
            for snap in snaps:
                edits.start_soon(one, snap)
    report.seconds = time.monotonic() - started
    report.aborted = push.aborted
    if push.unrecorded:  # the report says what the mirror holds: those edits are still open
        report.outcomes = [
            _unrecorded(o) if o.message_id in push.unrecorded else o for o in report.outcomes
        ]
    speak(
        "push.finished",
        edits=len(snaps),
        applied=len(report.applied),
        conflicted=len(report.conflicted),
        failed=len(report.failed),
        deferred=len(report.deferred),
        unrecorded=len(report.unrecorded),
        requests=report.requests,
        seconds=round(report.seconds, 3),
        aborted=report.aborted,
    )
    return report


def _deferred(snap: Snapshot, attempts: int, requests: int, error: str) -> EditOutcome:
    """An edit left open for the next push, with why (``error``)."""
    return EditOutcome(
        snap.thread_id,
        snap.message_id,
        "deferred",
        attempts=attempts,
        requests=requests,
        error=error,
    )


def _unrecorded(outcome: EditOutcome) -> EditOutcome:
    """An outcome the lost lease kept out of the mirror (what it would have been: ``error``)."""
    return replace(
        outcome,
        result="unrecorded",
        error=f"{outcome.result}, not recorded (the push's lease was lost)"
        + (f": {outcome.error}" if outcome.error else ""),
    )
