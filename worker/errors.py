"""The project's own error tree.

Lower layers (httpx, SQLAlchemy, the file system) are translated into these exactly once, at the
boundary that talks to them, with ``raise ... from exc``. Everything above the boundary only ever
sees these classes, and the CLI turns them into exit codes and one clear sentence.
"""

from __future__ import annotations

from typing import Any, Literal


class ThreadsyncError(Exception):
    """Base of every error threadsync raises on purpose."""


class WriteRefused(ThreadsyncError):
    """A pass's guard refused its write: this process may no longer write the thread (replicas
    mode: another replica holds it now, see ``worker/daemon/fence.py``). Nothing of the refused
    transaction was written; the pass ends with the result ``lost``."""


class ConfigError(ThreadsyncError):
    """The user's configuration, arguments or environment are wrong; retrying will not help."""


class OutputError(ConfigError):
    """A file or directory the user named could not be written (disk full, read-only, no
    permission, not a kind of file threadsync writes): choose another place or make room."""


class SchemaOutdatedError(ConfigError):
    """The mirror database was made by an older threadsync; `threadsync db upgrade` fixes it."""


class NoMirrorError(ConfigError):
    """A command that only reads found no mirror at the configured URL (and made none)."""


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
        suspect: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.request_id = request_id
        # The setting to check when the answer points at the configuration rather than at one
        # thread (the key, the endpoint, the api-version, the host), else None.
        self.suspect = suspect

    @property
    def fatal(self) -> bool:
        """True when no other thread can do better: the whole run stops at this answer."""
        return False


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


class UnreachableError(TransientError):
    """No connection on any attempt (refused, DNS failure): the host itself is wrong or down."""

    @property
    def fatal(self) -> bool:
        return True


class PermanentError(ApiError):
    """A failure retrying cannot fix: 400, 401, 403, 404, 422 and other 4xx.

    One that names the path or the api-version (``suspect`` set) is the configuration's fault,
    not the thread's, and stops the run.
    """

    @property
    def fatal(self) -> bool:
        return self.suspect is not None


class AuthError(PermanentError):
    """401 or 403: the credential is missing, wrong or lacks the role."""

    @property
    def fatal(self) -> bool:
        return True


NotFoundSubject = Literal["thread", "message", "unknown"]


class NotFoundError(PermanentError):
    """404: the thread or message does not exist (or no longer exists).

    ``subject`` is what the body says is missing: ``thread`` or ``message`` when it names one (or
    the thread's id), ``unknown`` for a generic "Resource not found" or no body at all, which a
    wrong endpoint answers too. A 404 naming the path or the api-version is a configuration
    error instead (a :class:`PermanentError` with ``suspect`` set), never a NotFoundError.
    """

    def __init__(self, message: str, *, subject: NotFoundSubject = "unknown", **kw: Any) -> None:
        super().__init__(message, **kw)
        self.subject: NotFoundSubject = subject

    @property
    def fatal(self) -> bool:
        return False


class MalformedError(PermanentError):
    """An answer that parses but breaks the wire contract: a message without an id, ``content``
    that is not a list of parts, a ``thread_id`` naming another thread. The same request would get
    the same answer, so it is not retried; the message names the field and the message id, never
    a value (values can be conversation content)."""


class PagingError(ThreadsyncError):
    """The server's pages do not advance (a repeated cursor, a page of already-seen ids)."""


class MisconfiguredError(ConfigError):
    """A run stopped because the service's answers point at the configuration: nothing marked.

    ``setting`` names what to check (an environment variable or config key, or the host).
    """

    def __init__(self, message: str, *, setting: str) -> None:
        super().__init__(message)
        self.setting = setting
