"""``EmulatorControl``: an async client of the control plane, for the worker's tests and demos."""

from __future__ import annotations

from types import TracebackType
from typing import Any

import httpx

from worker.emulator.faults import FaultRule, Faults
from worker.emulator.wire import WireError


class EmulatorControl:
    """Drives ``/_emulator/...`` over HTTP (a real base_url, or an httpx transport in-process)."""

    def __init__(
        self,
        base_url: str = "http://emulator",
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 30.0,
    ) -> None:
        self._http = httpx.AsyncClient(base_url=base_url, transport=transport, timeout=timeout)

    async def __aenter__(self) -> EmulatorControl:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        response = await self._http.request(method, "/_emulator/" + path, json=body)
        data = response.json()
        if response.status_code != 200:
            error = data.get("error", {})
            raise WireError(
                response.status_code,
                error.get("message", "control request failed"),
                code=error.get("code"),
                param=error.get("param"),
            )
        return data

    async def reset(self) -> None:
        await self._call("POST", "reset")

    async def seed(self, *, seed: int = 0, threads: int = 1, messages: int = 20) -> list[str]:
        answer = await self._call(
            "POST", "seed", {"seed": seed, "threads": threads, "messages": messages}
        )
        return list(answer["thread_ids"])

    async def create_thread(self, metadata: dict[str, str] | None = None) -> dict[str, Any]:
        body = {} if metadata is None else {"metadata": metadata}
        return dict(await self._call("POST", "threads", body))

    async def delete_thread(self, thread_id: str) -> None:
        await self._call("DELETE", f"threads/{thread_id}")

    async def append_messages(
        self, thread_id: str, *, n: int = 0, messages: list[dict[str, Any]] | None = None
    ) -> list[dict[str, Any]]:
        body = {"n": n, "messages": messages or []}
        return list((await self._call("POST", f"threads/{thread_id}/messages", body))["messages"])

    async def delete_message(self, thread_id: str, message_id: str) -> None:
        await self._call("DELETE", f"threads/{thread_id}/messages/{message_id}")

    async def edit_metadata(
        self, thread_id: str, message_id: str, metadata: dict[str, Any]
    ) -> dict[str, Any]:
        path = f"threads/{thread_id}/messages/{message_id}/metadata"
        return dict(await self._call("POST", path, {"metadata": metadata}))

    async def finish_message(
        self, thread_id: str, message_id: str, *, status: str = "completed", text: str | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"status": status}
        if text is not None:
            body["text"] = text
        path = f"threads/{thread_id}/messages/{message_id}/finish"
        return dict(await self._call("POST", path, body))

    async def behaviour(self) -> dict[str, str]:
        return dict(await self._call("GET", "behaviour"))

    async def set_behaviour(self, **changes: str) -> dict[str, str]:
        return dict(await self._call("POST", "behaviour", changes))

    async def set_faults(self, faults: Faults | dict[str, Any]) -> dict[str, Any]:
        body = faults.to_dict() if isinstance(faults, Faults) else faults
        return dict(await self._call("POST", "faults", body))

    async def add_fault(self, rule: FaultRule | dict[str, Any]) -> dict[str, Any]:
        body = rule.to_dict() if isinstance(rule, FaultRule) else rule
        return dict(await self._call("PATCH", "faults", body))

    async def clear_faults(self) -> None:
        await self._call("DELETE", "faults")

    async def set_clock(self, seconds: float) -> float:
        return float((await self._call("POST", "clock", {"set": seconds}))["now"])

    async def advance_clock(self, seconds: float) -> float:
        return float((await self._call("POST", "clock", {"advance": seconds}))["now"])

    async def truth(self) -> dict[str, list[dict[str, Any]]]:
        return dict((await self._call("GET", "truth"))["threads"])

    async def stats(self) -> dict[str, Any]:
        return dict(await self._call("GET", "stats"))

    async def reset_stats(self) -> None:
        await self._call("DELETE", "stats")

    async def identity(self) -> dict[str, Any]:
        """Entra settings and counters: lifetime, entra mode, outage, tokens issued/refused."""
        return dict(await self._call("GET", "identity"))

    async def configure_identity(self, **changes: Any) -> dict[str, Any]:
        """``lifetime=``, ``entra="off"|"foundry"|"all"``, ``outage={"status", "times"}|None``."""
        return dict(await self._call("POST", "identity", changes))
