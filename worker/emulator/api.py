"""The API operations behind each route kind: validated query/body in, wire bytes out."""

from __future__ import annotations

from typing import Any

from worker.emulator import conversations
from worker.emulator.objects import list_body
from worker.emulator.routes import Route
from worker.emulator.state import Emulator
from worker.emulator.validation import check_limit_order
from worker.emulator.wire import dumps


def _cursors(query: dict[str, str]) -> dict[str, Any]:
    limit, order = check_limit_order(query.get("limit"), query.get("order"))
    return {
        "limit": limit,
        "order": order,
        "after": query.get("after") or None,
        "before": query.get("before") or None,
    }


def handle(emulator: Emulator, route: Route, query: dict[str, str], body: Any) -> bytes:
    """Perform ``route`` on the emulator and answer the 200 body; WireError for the rest."""
    kind, tid, mid = route.kind, route.thread_id or "", route.message_id or ""
    if route.conversation:
        with emulator.lock:
            return conversations.handle(emulator, kind, route.profile, tid, mid, query, body)
    full = route.profile != "foundry"
    if kind == "list":
        cursors = _cursors(query)
        with emulator.lock:  # render under the lock so no edit can slip between page and bytes
            page = emulator.list_messages(tid, run_id=query.get("run_id") or None, **cursors)
            return list_body(page, full=full)
    if kind == "get":
        with emulator.lock:
            return emulator.message(tid, mid).json()
    if kind == "create":
        return dumps(emulator.create_message(tid, body, route.profile))
    if kind == "modify":
        return dumps(emulator.modify_message(tid, mid, body))
    if kind == "delete":
        return dumps(emulator.delete_message(tid, mid))
    if kind == "thread.list":
        cursors = _cursors(query)
        with emulator.lock:
            return list_body(emulator.list_threads(**cursors), full=full)
    if kind == "thread.create":
        return dumps(emulator.create_thread(body, route.profile))
    if kind == "thread.get":
        with emulator.lock:
            return emulator.thread(tid).json()
    if kind == "thread.modify":
        return dumps(emulator.modify_thread(tid, body))
    if kind == "thread.delete":
        return dumps(emulator.delete_thread(tid))
    raise AssertionError(f"unrouted kind {kind}")
