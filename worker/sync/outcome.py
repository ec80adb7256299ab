"""What one pass over one thread did, and the words its failures are told in."""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field

from sqlalchemy.exc import DBAPIError

from worker.errors import ApiError, NotFoundError, ParkedError
from worker.logs import redact_message
from worker.store.db import translate_store_error
from worker.sync.plan import Counts


@dataclass
class ThreadOutcome:
    """What one pass over one thread did.

    ``result``: synced | gone | parked | failed | skipped, or, until the run decides (see
    ``worker/sync/runner.py``), ``missing`` (a 404: gone, a failure, or a sign of a wrong
    configuration, depending on what the rest of the run saw) and ``stopped`` (an answer that
    stops the whole run: a wrong key, no connection, a path or api-version the service rejects).
    """

    thread_id: str
    result: str
    counts: Counts = field(default_factory=Counts)
    requests: int = 0
    error: str | None = None
    rescans: int = 0
    seconds: float = 0.0
    cause: str | None = None  # what failed, without the thread's details: summaries group by it
    answered: bool = False  # the service answered at least one of this pass's requests with 2xx
    not_found: NotFoundError | None = None  # the 404 of a ``missing`` outcome
    fatal: ApiError | None = None  # the answer of a ``stopped`` outcome
    synced_before: bool = False  # the thread had synced before this pass (a 404 may mean gone)
    was_gone: bool = False  # a re-check of a thread marked gone

    @property
    def ok(self) -> bool:
        return self.result in {"synced", "skipped"}


def describe(exc: BaseException) -> str:
    """One line for status and summaries: never a credential (the client scrubs its messages).

    An API error's message already says its status once (``GET /threads/...: HTTP 401: ...``).
    """
    if isinstance(exc, ParkedError):
        return f"server asked to wait {exc.retry_after:.0f}s; parked for a later pass"
    if isinstance(exc, ApiError):
        return exc.message
    return redact_message(exc) or type(exc).__name__  # never a SQL parameter or message text


def cause_of(exc: BaseException) -> str:
    """What failed, in words shared by every thread it failed: a run summary groups by it."""
    if isinstance(exc, ParkedError):
        return "parked: the server asked to wait"
    if isinstance(exc, ApiError) and exc.status is not None:
        return f"HTTP {exc.status}" + (
            f" {exc.code}" if exc.code and exc.code != str(exc.status) else ""
        )
    if isinstance(exc, ApiError):
        # The client names a transport failure by its kind: "... no usable answer (ConnectError)".
        _, _, kind = exc.message.partition("no usable answer (")
        return kind.split(")")[0] if kind else "no usable answer"
    return type(exc).__name__


def unexpected(exc: BaseException) -> str:
    """One line for an error no walk expects, naming its kind and never its text: a database
    error's text quotes the statement's parameters, which are message content."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]  # from a task group of the walk: the error itself is the news
    known = translate_store_error(exc)
    if known is not None:  # a full disk, a read-only file: said in words the user can act on
        return str(known)
    if isinstance(exc, DBAPIError):
        kind = type(exc.orig).__name__ if exc.orig is not None else type(exc).__name__
        return (
            f"the mirror database refused this thread's write ({kind}); the next pass retries"
            " the thread"
        )
    return f"unexpected error ({type(exc).__name__}); the next pass retries the thread"


def raised_at(exc: BaseException) -> str:
    """Where ``exc`` was raised, as ``file:line`` (for a bug report)."""
    frames = traceback.extract_tb(exc.__traceback__)
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
