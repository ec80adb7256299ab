"""The project's own error tree.

Lower layers (httpx, SQLAlchemy, the file system) are translated into these exactly once, at the
boundary that talks to them, with ``raise ... from exc``. Everything above the boundary only ever
sees these classes, and the CLI turns them into exit codes and one clear sentence.
"""

from __future__ import annotations


class ThreadsyncError(Exception):
    """Base of every error threadsync raises on purpose."""


class ConfigError(ThreadsyncError):
    """The user's configuration, arguments or environment are wrong; retrying will not help."""


class SchemaOutdatedError(ConfigError):
    """The mirror database was made by an older threadsync; `threadsync db upgrade` fixes it."""


class StoreError(ThreadsyncError):
    """The mirror database failed in a way that is not the user's configuration."""


class ApiError(ThreadsyncError):
    """An answer (or a missing answer) from the Assistants API.

    ``status`` is the HTTP status (None for a transport failure), ``code`` and ``message`` come from
    the vendor's error body when there is one, ``request_id`` from the server's request id header.
    None of these ever contain a credential.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.request_id = request_id


class TransientError(ApiError):
    """A failure that may pass: 408, 409, 429, 5xx, timeouts, dropped connections, broken JSON."""


class CredentialError(TransientError):
    """No Entra token could be had: the credential is unavailable or refused, or its token
    endpoint is down. Transient for the thread that met it: the next pass asks again."""


class ParkedError(TransientError):
    """The server asked to wait longer than the configured cap: try the thread on a later pass."""

    def __init__(self, message: str, *, retry_after: float, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.retry_after = retry_after


class PermanentError(ApiError):
    """A failure retrying cannot fix: 400, 401, 403, 404, 422 and other 4xx."""


class AuthError(PermanentError):
    """401 or 403: the credential is missing, wrong or lacks the role."""


class NotFoundError(PermanentError):
    """404: the thread or message does not exist (or no longer exists)."""


class PagingError(ThreadsyncError):
    """The server's pages do not advance (a repeated cursor, a page of already-seen ids)."""
