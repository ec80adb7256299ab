"""The emulator's in-memory state and every operation on it, usable straight from Python tests.

HTTP (``worker.emulator.asgi``) is a thin layer over this class. All operations hold one
re-entrant lock so that a test thread may drive the control methods while uvicorn serves
requests from its own thread.
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from worker.emulator import persistence, seeding
from worker.emulator.behaviour import Behaviour
from worker.emulator.conversations import Conversations
from worker.emulator.faults import FaultRule, Faults, Gate
from worker.emulator.identity import Identity
from worker.emulator.objects import deleted_object, message_object, thread_object
from worker.emulator.timeline import Order, Page, Record, Timeline, list_page
from worker.emulator.validation import (
    MESSAGE_MODIFY_FIELDS,
    THREAD_CREATE_FIELDS,
    THREAD_MODIFY_FIELDS,
    Profile,
    apply_metadata,
    check_create_message,
    check_fields,
    check_metadata,
    check_tool_resources,
    text_part,
)
from worker.emulator.walks import RequestLog, WalkLog
from worker.emulator.wire import (
    WireError,
    bad_request,
    bare_not_found,
    not_found,
    resource_not_found,
)

DEFAULT_API_KEY = "emulator-key"
_CONTROL_EXTRAS = ("status", "assistant_id", "run_id")


class ManualClock:
    """A clock for tests: stands still until told to move."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Emulator:
    """Threads and messages, behaviours, faults and request statistics."""

    def __init__(
        self,
        *,
        api_key: str = DEFAULT_API_KEY,
        behaviour: Behaviour | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        seed: int = 0,
        state_path: Path | None = None,
        identity: Identity | None = None,
    ) -> None:
        self.api_key = api_key
        self.identity = identity or Identity()
        self.behaviour = behaviour or Behaviour()
        self.monotonic = monotonic
        self.state_path = state_path
        self.lock = threading.RLock()
        self.faults = Faults()
        self.fault_rng = random.Random(seed + 1)
        self._clock = clock
        self._offset = 0.0
        self._ids = random.Random(seed)
        self.used_ids: set[str] = set()  # every id ever issued: ids are never reused
        self.seq = 0
        self.threads = Timeline()
        self.messages: dict[str, Timeline] = {}
        self.conversations = Conversations()
        self.request_counts: Counter[tuple[str, int]] = Counter()
        self.modify_calls: list[dict[str, Any]] = []
        self.walks = WalkLog()  # replicas' walks per thread (worker/emulator/walks.py)
        self.gate = Gate()  # requests held by `gate` faults (worker/emulator/faults.py)
        self.requests = RequestLog()  # off until started: each request's arrival and replica
        if state_path is not None and state_path.exists():
            persistence.load(self, state_path)

    # -- clock -------------------------------------------------------------------------------

    def now(self) -> float:
        return self._clock() + self._offset

    def wall(self) -> float:
        """The clock without the control plane's offset: Entra tokens expire in real time,
        as azure-identity, reading ``time.time()``, expects."""
        return self._clock()

    def set_clock(self, seconds: float) -> float:
        with self.lock:
            self._offset = seconds - self._clock()
            return self.now()

    def advance_clock(self, seconds: float) -> float:
        with self.lock:
            self._offset += seconds
            return self.now()

    # -- housekeeping ------------------------------------------------------------------------

    def new_id(self, prefix: str, rng: random.Random | None = None) -> str:
        """A fresh id, unique across threads and messages, including deleted ones.

        Seeded generators are deterministic, so two seeds can draw the same sequence: a collision
        is drawn again rather than handed out twice.
        """
        while True:
            candidate = seeding.new_id(prefix, rng or self._ids)
            if candidate not in self.used_ids:
                self.used_ids.add(candidate)
                return candidate

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def changed(self) -> None:
        """Persist after a mutation when a state file is configured (atomic write)."""
        if self.state_path is not None:
            persistence.save(self, self.state_path)

    def reset(self) -> None:
        """Forget every thread, fault and statistic (behaviour and key stay)."""
        with self.lock:
            self.threads = Timeline()
            self.messages = {}
            self.conversations = Conversations()
            self.faults = Faults()
            self.gate.release()
            self.reset_stats()
            self.changed()

    def set_behaviour(self, **changes: Any) -> Behaviour:
        with self.lock:
            self.behaviour = self.behaviour.updated(changes)
            self.changed()
            return self.behaviour

    def configure_identity(self, **changes: Any) -> dict[str, Any]:
        """Token lifetime, Entra mode, token endpoint outage (see ``identity``)."""
        with self.lock:
            self.identity.configure(**changes)
            return self.identity.to_dict()

    def set_faults(self, faults: Faults) -> None:
        with self.lock:
            self.faults = faults

    def add_fault(self, rule: FaultRule) -> None:
        with self.lock:
            self.faults.rules.append(rule)

    def clear_faults(self) -> None:
        self.set_faults(Faults())

    # -- threads -----------------------------------------------------------------------------

    def thread(self, thread_id: str) -> Record:
        record = self.threads.live(thread_id)
        if record is None:
            mode = self.behaviour.unknown_thread
            if mode == "resource":
                raise resource_not_found()
            if mode == "bare":
                raise bare_not_found()
            raise not_found(f"No thread found with id '{thread_id}'.")
        return record

    def create_thread(self, body: Any = None, profile: Profile = "openai") -> dict[str, Any]:
        """POST /threads: optional initial ``messages``, ``metadata`` and ``tool_resources``."""
        body = check_fields({} if body is None else body, THREAD_CREATE_FIELDS)
        metadata = body.get("metadata")
        metadata = {} if metadata is None else check_metadata(metadata)
        tools = check_tool_resources(body.get("tool_resources"))
        initial = body.get("messages") or []
        if not isinstance(initial, list):
            raise bad_request("Invalid type for 'messages'.", code="invalid_type", param="messages")
        drafts = [check_create_message(m, profile) for m in initial]
        with self.lock:
            created = int(self.now())
            thread_id = self.new_id("thread_")
            data = thread_object(
                thread_id=thread_id, created_at=created, metadata=metadata, tool_resources=tools
            )
            self.threads.add(Record(data, self.next_seq()))
            self.messages[thread_id] = Timeline()
            for draft in drafts:
                self._insert_message(thread_id, created, draft)
            self.changed()
            return data

    def modify_thread(self, thread_id: str, body: Any) -> dict[str, Any]:
        body = check_fields(body, THREAD_MODIFY_FIELDS)
        with self.lock:
            record = self.thread(thread_id)
            data = dict(record.data)
            if "metadata" in body:
                data["metadata"] = apply_metadata(
                    data["metadata"], body["metadata"], self.behaviour.metadata
                )
            if "tool_resources" in body:
                data["tool_resources"] = check_tool_resources(body["tool_resources"]) or {}
            record.data = data
            record.changed()
            self.changed()
            return data

    def delete_thread(self, thread_id: str) -> dict[str, Any]:
        with self.lock:
            self.thread(thread_id)
            self.threads.delete(thread_id)
            del self.messages[thread_id]
            self.changed()
            return deleted_object(thread_id, "thread.deleted")

    def list_threads(
        self,
        *,
        limit: int = 20,
        order: Order = "desc",
        after: str | None = None,
        before: str | None = None,
    ) -> Page:
        with self.lock:
            return list_page(
                self.threads,
                order=order,
                ties=self.behaviour.ties,
                cursor_missing=self.behaviour.cursor_missing,
                limit=limit,
                after=after,
                before=before,
                noun="thread",
            )

    # -- messages ----------------------------------------------------------------------------

    def timeline(self, thread_id: str) -> Timeline:
        self.thread(thread_id)
        return self.messages[thread_id]

    def message(self, thread_id: str, message_id: str) -> Record:
        record = self.timeline(thread_id).live(message_id)
        if record is None:
            raise not_found(f"No message found with id '{message_id}'.")
        return record

    def _insert_message(
        self, thread_id: str, created_at: int, fields: dict[str, Any], **extra: Any
    ) -> dict[str, Any]:
        data = message_object(
            message_id=self.new_id("msg_"),
            thread_id=thread_id,
            created_at=created_at,
            **fields,
            **extra,
        )
        self.messages[thread_id].add(Record(data, self.next_seq()))
        return data

    def create_message(
        self, thread_id: str, body: Any, profile: Profile = "openai"
    ) -> dict[str, Any]:
        """POST /threads/{id}/messages, validated for ``profile``."""
        fields = check_create_message(body, profile)
        with self.lock:
            self.thread(thread_id)
            data = self._insert_message(thread_id, int(self.now()), fields)
            self.changed()
            return data

    def modify_message(self, thread_id: str, message_id: str, body: Any) -> dict[str, Any]:
        """POST /threads/{id}/messages/{id}: metadata only, merged or replaced per behaviour."""
        body = check_fields(body, MESSAGE_MODIFY_FIELDS)
        with self.lock:
            record = self.message(thread_id, message_id)
            if "metadata" not in body:
                return record.data
            data = dict(record.data)
            data["metadata"] = apply_metadata(
                data["metadata"], body["metadata"], self.behaviour.metadata
            )
            record.data = data
            record.changed()
            self.changed()
            return data

    def delete_message(self, thread_id: str, message_id: str) -> dict[str, Any]:
        with self.lock:
            self.message(thread_id, message_id)
            self.messages[thread_id].delete(message_id)
            self.changed()
            return deleted_object(message_id, "thread.message.deleted")

    def list_messages(
        self,
        thread_id: str,
        *,
        limit: int = 20,
        order: Order = "desc",
        after: str | None = None,
        before: str | None = None,
        run_id: str | None = None,
    ) -> Page:
        with self.lock:
            timeline = self.timeline(thread_id)
            keep = None if run_id is None else (lambda r: r.data["run_id"] == run_id)
            return list_page(
                timeline,
                order=order,
                ties=self.behaviour.ties,
                cursor_missing=self.behaviour.cursor_missing,
                limit=limit,
                after=after,
                before=before,
                keep=keep,
            )

    # -- control operations ------------------------------------------------------------------

    def seed(self, *, seed: int = 0, threads: int = 1, messages: int = 20) -> list[str]:
        """Add ``threads`` threads of ``messages`` varied messages each, deterministically."""
        rng = random.Random(seed)
        ids: list[str] = []
        with self.lock:
            now = int(self.now())
            for _ in range(threads):
                created, drafts = seeding.draft_thread(rng, now, messages)
                thread_id = self.new_id("thread_", rng)
                meta = seeding.metadata(rng)
                data = thread_object(thread_id=thread_id, created_at=created, metadata=meta)
                self.threads.add(Record(data, self.next_seq()))
                timeline = self.messages[thread_id] = Timeline()
                for draft in drafts:
                    fields = dataclasses.asdict(draft)
                    fields["message_id"] = self.new_id("msg_", rng)
                    fields["thread_id"] = thread_id
                    timeline.add(Record(message_object(**fields), self.next_seq()))
                ids.append(thread_id)
            self.changed()
        return ids

    def append_messages(
        self, thread_id: str, *, n: int = 0, messages: list[dict[str, Any]] | None = None
    ) -> list[dict[str, Any]]:
        """Append ``n`` random messages and/or the given create bodies, all stamped now.

        Given bodies may also set ``status``, ``assistant_id`` and ``run_id`` (e.g. to plant an
        in-progress assistant message that :meth:`finish_message` completes later).
        """
        with self.lock:
            self.thread(thread_id)
            created = int(self.now())
            out: list[dict[str, Any]] = []
            for given in messages or []:
                body = dict(given)
                extra = {k: body.pop(k) for k in _CONTROL_EXTRAS if k in body}
                if extra.get("status", "completed") not in ("completed", "in_progress"):
                    raise bad_request("status must be completed or in_progress", param="status")
                fields = check_create_message(body, "openai")
                out.append(self._insert_message(thread_id, created, fields, **extra))
            for _ in range(n):
                draft = seeding.text_value(self._ids)
                role = self._ids.choice(["user", "assistant"])
                fields = {"role": role, "content": [text_part(draft)], "attachments": []}
                out.append(self._insert_message(thread_id, created, fields))
            self.changed()
            return out

    def edit_metadata(self, thread_id: str, message_id: str, metadata: Any) -> dict[str, Any]:
        """A remote edit (someone else changed the message): same validation as the API."""
        return self.modify_message(thread_id, message_id, {"metadata": metadata})

    def finish_message(
        self,
        thread_id: str,
        message_id: str,
        *,
        status: str = "completed",
        text: str | None = None,
        reason: str = "max_tokens",
    ) -> dict[str, Any]:
        """Complete an in-progress message: its text grows, its status and timestamps settle."""
        if status not in ("completed", "incomplete"):
            raise bad_request("status must be completed or incomplete", param="status")
        with self.lock:
            record = self.message(thread_id, message_id)
            if record.data["status"] != "in_progress":
                raise WireError(400, f"Message '{message_id}' is not in progress.", param="status")
            data = dict(record.data)
            content = [dict(p) for p in data["content"]]
            grown = text if text is not None else " " + seeding.sentence(self._ids, 12)
            for part in content:
                if part["type"] == "text":
                    part["text"] = {**part["text"], "value": part["text"]["value"] + grown}
                    break
            else:
                content.append(text_part(grown))
            now = int(self.now())
            data["content"] = content
            data["status"] = status
            if status == "completed":
                data["completed_at"] = now
            else:
                data["incomplete_at"] = now
                data["incomplete_details"] = {"reason": reason}
            record.data = data
            record.changed()
            self.changed()
            return data

    def truth(self) -> dict[str, Any]:
        """Every live thread's live messages in server ascending order, as API objects."""
        with self.lock:
            return {
                "threads": {
                    t.id: [r.data for r in self.messages[t.id].live_asc()]
                    for t in self.threads.live_asc()
                }
            }

    # -- statistics --------------------------------------------------------------------------

    def record_request(self, route: str, status: int) -> None:
        with self.lock:
            self.request_counts[(route, status)] += 1

    def record_modify(
        self, thread_id: str, message_id: str, body: Any, *, applied: bool, status: int
    ) -> None:
        with self.lock:
            self.modify_calls.append(
                {
                    "thread_id": thread_id,
                    "message_id": message_id,
                    "body": body,
                    "applied": applied,
                    "status": status,
                }
            )

    def stats(self) -> dict[str, Any]:
        """Counts by route template and status, and every modify call received."""
        with self.lock:
            routes: dict[str, dict[str, int]] = {}
            for (route, status), count in sorted(self.request_counts.items()):
                routes.setdefault(route, {})[str(status)] = count
            return {"routes": routes, "modify_calls": list(self.modify_calls)}

    def reset_stats(self) -> None:
        with self.lock:
            self.request_counts.clear()
            self.modify_calls.clear()
