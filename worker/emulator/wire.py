"""Error answers in the vendor's shape, and the JSON encoding every answer goes through."""

from __future__ import annotations

from typing import Any

from worker.jsontext import dumps as _dumps


class WireError(Exception):
    """An error answer: HTTP status plus the ``{"error": {code, message, param, type}}`` body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        type_: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
        bare: bool = False,
    ) -> None:
        super().__init__(message)
        self.bare = bare  # answered with an empty body (a proxy, a host that is not the API)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type_
        self.headers = headers or {}

    def body(self) -> bytes:
        if self.bare:
            return b""
        return dumps(
            {
                "error": {
                    "code": self.code,
                    "message": self.message,
                    "param": self.param,
                    "type": self.type,
                }
            }
        )


def dumps(obj: Any) -> bytes:
    return _dumps(obj)  # a lone surrogate in a stored object goes out escaped, as JSON allows


def bad_request(message: str, *, code: str | None = None, param: str | None = None) -> WireError:
    return WireError(400, message, code=code, param=param)


def not_found(message: str) -> WireError:
    # The OpenAI platform answers unknown objects with type invalid_request_error and a null code.
    return WireError(404, message)


def resource_not_found(*, param: str | None = None) -> WireError:
    """Azure's answer to a path or api-version it does not serve: code "404", nothing named."""
    return WireError(404, "Resource not found", code="404", param=param)


def bare_not_found() -> WireError:
    return WireError(404, "", bare=True)
