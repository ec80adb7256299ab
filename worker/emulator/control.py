"""The control plane under ``/_emulator/...``: no auth, outside the API namespace.

Every operation here is also a method on :class:`~worker.emulator.state.Emulator`; this module
only maps HTTP onto those methods.
"""

from __future__ import annotations

from typing import Any

from worker.emulator.faults import FaultRule, Faults
from worker.emulator.state import Emulator
from worker.emulator.wire import WireError, bad_request

PREFIX = "/_emulator"


def _obj(body: Any) -> dict[str, Any]:
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise bad_request("control bodies are JSON objects")
    return body


def handle(emulator: Emulator, method: str, path: str, body: Any) -> Any:
    """Answer one control request with a JSON-able value (WireError on misuse)."""
    parts = path[len(PREFIX) :].strip("/").split("/")
    args = _obj(body)
    try:
        return _dispatch(emulator, method, parts, args)
    except (ValueError, TypeError) as exc:
        raise bad_request(str(exc), code="invalid_control_request") from exc


def _dispatch(emulator: Emulator, method: str, parts: list[str], args: dict[str, Any]) -> Any:
    head, n = parts[0], len(parts)
    if (method, head, n) == ("POST", "reset", 1):
        emulator.reset()
        return {"ok": True}
    if (method, head, n) == ("POST", "seed", 1):
        return {"thread_ids": emulator.seed(**args)}
    if (method, head, n) == ("GET", "truth", 1):
        return emulator.truth()
    if head == "stats" and n == 1 and method in ("GET", "DELETE"):
        if method == "DELETE":
            emulator.reset_stats()
        return emulator.stats()
    if head == "behaviour" and n == 1 and method in ("GET", "POST"):
        if method == "POST":
            emulator.set_behaviour(**args)
        return emulator.behaviour.to_dict()
    if head == "faults" and n == 1:
        return _faults(emulator, method, args)
    if head == "identity" and n == 1 and method in ("GET", "POST"):
        if method == "POST":
            return emulator.configure_identity(**args)
        with emulator.lock:
            return emulator.identity.to_dict()
    if (method, head, n) == ("POST", "clock", 1):
        return _clock(emulator, args)
    if (method, head, n) == ("GET", "conversations", 1):
        with emulator.lock:
            return emulator.conversations.to_dict()
    if head == "requests" and n == 1 and method in ("GET", "POST"):
        if method == "POST":  # {"capacity": n}: record the last n requests from now on (0: off)
            emulator.requests.start(int(args.get("capacity", 0)))
        return {"capacity": emulator.requests.capacity, "requests": emulator.requests.entries()}
    if head == "threads":
        return _threads(emulator, method, parts[1:], args)
    raise WireError(404, f"No control route {method} /{'/'.join(parts)}", code="not_found")


def _faults(emulator: Emulator, method: str, args: dict[str, Any]) -> Any:
    if method == "POST":  # replace the whole fault configuration
        emulator.set_faults(Faults.from_dict(args))
    elif method == "PATCH":  # add one rule
        emulator.add_fault(FaultRule.from_dict(args))
    elif method == "DELETE":
        emulator.clear_faults()
    elif method != "GET":
        raise WireError(405, "method not allowed")
    with emulator.lock:
        return emulator.faults.to_dict()


def _clock(emulator: Emulator, args: dict[str, Any]) -> Any:
    if "set" in args:
        emulator.set_clock(float(args["set"]))
    if "advance" in args:
        emulator.advance_clock(float(args["advance"]))
    return {"now": emulator.now()}


def _threads(emulator: Emulator, method: str, rest: list[str], args: dict[str, Any]) -> Any:
    if not rest and method == "POST":
        return emulator.create_thread(args)
    if len(rest) == 1 and method == "DELETE":
        return emulator.delete_thread(rest[0])
    if len(rest) == 2 and rest[1] == "messages" and method == "POST":
        messages = emulator.append_messages(
            rest[0], n=int(args.get("n", 0)), messages=args.get("messages")
        )
        return {"messages": messages}
    if len(rest) == 3 and rest[1] == "messages" and method == "DELETE":
        return emulator.delete_message(rest[0], rest[2])
    if len(rest) == 4 and rest[1] == "messages" and method == "POST":
        if rest[3] == "metadata":
            return emulator.edit_metadata(rest[0], rest[2], args.get("metadata"))
        if rest[3] == "finish":
            return emulator.finish_message(rest[0], rest[2], **args)
    raise WireError(404, f"No control route {method} threads/{'/'.join(rest)}", code="not_found")
