"""Opening the mirror: engine per backend, SQLite pragmas and file permissions, transactions.

SQLModel sessions are synchronous; async code drives them through :meth:`Mirror.run` which runs the
work in a worker thread (``anyio.to_thread``) and shields the commit or rollback from cancellation,
so a cancelled task never leaves a half-finished transaction. On SQLite, writers are serialised in
process (one writer at a time is all SQLite allows) and each write transaction starts with
``BEGIN IMMEDIATE`` so two processes never deadlock upgrading a read lock.

:meth:`Mirror.write_grouped` is group commit for the sync's many small writes: work that arrives
while a write transaction is running waits and then shares the next one, each piece in its own
savepoint so one failing piece never takes the others down with it (unless the piece opts
out: work a rerun converges from, such as a sync page, needs no savepoint). Pieces of one kind
queued with a ``together`` function (the passes' closing states) run at once, in one savepoint,
and each alone if that fails.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from hashlib import blake2b
from pathlib import Path
from typing import Any, Generic, ParamSpec, TypeVar, cast

import anyio
import anyio.to_thread
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
from sqlmodel import Session

from worker.errors import ConfigError, NoMirrorError, StoreError, ThreadsyncError
from worker.store.schema import ensure_schema

READERS = 2  # read transactions running at once (see Mirror.run)
# SQLite page cache per connection, by the kind of transaction it runs. Reads keep 1 MB (the OS
# caches the file too; a full walk's readers would otherwise grow several caches). The writer
# keeps 4 MB: a first sync's inserts land all over the id and order indexes, and with 1 MB it
# re-read their pages so often that its INSERTs took 2.3 - 2.8 s of CPU for 100,000 messages
# (bench_sync); with 4 MB, 1.5 s. 8 MB measured no faster.
READ_CACHE_KIB = 1024
WRITE_CACHE_KIB = 4096
P = ParamSpec("P")
T = TypeVar("T")
# What a statement on the mirror may raise, through SQLAlchemy or straight from the driver (the hot
# paths of ``worker/store`` call the DB-API connection): callers outside the package catch these,
# never a driver's exception by name.
STORE_ERRORS: tuple[type[Exception], ...] = (SQLAlchemyError, sqlite3.Error)


def normalise_url(url: str) -> URL:
    """Accept ``postgresql://`` and ``postgres://`` and use psycopg 3 for them."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(f"database_url: {url!r} is not a database URL") from exc
    if parsed.get_backend_name() == "sqlite" and parsed.host:
        raise ConfigError(
            f"database_url: {url!r} has two slashes, so {parsed.host!r} reads as a host name; a"
            f" file is sqlite:///{parsed.host} (relative to the current directory) or"
            " sqlite:////absolute/path.db"
        )
    if parsed.drivername in {"postgresql", "postgres"}:
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def sqlite_path(url: URL) -> Path | None:
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database)


def _create_private_file(path: Path) -> None:
    """Create the SQLite file owner-only before SQLite does (it would follow the umask)."""
    if path.exists():
        return
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise ConfigError(
            f"database_url: {parent} is a file, not a directory; choose a path in a directory"
        )
    if not parent.exists():
        raise ConfigError(
            f"database_url: the directory {parent} does not exist; create it or choose another"
        )
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except OSError as exc:
        why = "the directory is read-only" if exc.errno in {errno.EACCES, errno.EROFS} else None
        raise ConfigError(
            f"database_url: cannot create the mirror {path} ({why or exc.strerror}); choose a"
            " path in a directory you can write to"
        ) from exc
    os.close(fd)


def _sqlite_engine(url: URL, *, create: bool = True) -> Engine:
    path = sqlite_path(url)
    if path is not None:
        if create:
            _create_private_file(path)
        elif not path.is_file():
            # SQLite would create it on connect: a command that only reads must not.
            raise NoMirrorError(f"no mirror at {url.render_as_string(hide_password=True)}")
    engine = create_engine(
        url,
        connect_args={"isolation_level": None, "check_same_thread": False, "timeout": 30},
        hide_parameters=True,  # a statement's parameters are message content: never in errors
    )

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        # Checkpoint every 32 MB of WAL instead of 4 MB: a first sync writes hundreds of MB, and
        # each checkpoint copies and fsyncs; measured 25-30% less write time on bulk pages. The
        # WAL file is cut back to 32 MB after a checkpoint so it never stays large.
        cur.execute("PRAGMA wal_autocheckpoint=8192")
        cur.execute("PRAGMA journal_size_limit=33554432")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA cache_size=-{READ_CACHE_KIB}")
        record.info["cache_kib"] = READ_CACHE_KIB
        record.info["temp_store"] = "DEFAULT"
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        # The driver is in autocommit mode; we issue BEGIN ourselves so writes take the lock first.
        options = conn.get_execution_options()
        write = bool(options.get("threadsync_write"))
        cache = WRITE_CACHE_KIB if write else READ_CACHE_KIB
        if conn.info.get("cache_kib") != cache:  # lowering it frees the pages over the new size
            conn.exec_driver_sql(f"PRAGMA cache_size=-{cache}")
            conn.info["cache_kib"] = cache
        # Statement and savepoint journals in memory for the sync's small grouped writes: a
        # page's multi-row INSERT (which may fail on a stored id) keeps the pages it changes in
        # a sub-journal, and on disk that was a new temporary file per transaction: 450 MB of
        # writes for a 100,000-message first sync (a third of all its I/O) and a third of its
        # INSERT time. Only for those: a sub-journal holds every page its statement changes,
        # and one statement over a whole mirror (a migration, a restore's DELETE) would hold
        # the mirror in memory.
        store = "MEMORY" if options.get("threadsync_small") else "DEFAULT"
        if conn.info.get("temp_store") != store:
            conn.exec_driver_sql(f"PRAGMA temp_store={store}")
            conn.info["temp_store"] = store
        conn.exec_driver_sql(f"BEGIN {'IMMEDIATE' if write else 'DEFERRED'}")

    return engine


# Runs several queued pieces (their ``fn``s, in queue order) at once, with the same effect as
# running each in turn; if it raises, its savepoint rolls back and each piece runs alone.
Together = Callable[[Session, list[Any]], None]


@dataclass(eq=False)
class _Grouped(Generic[T]):
    """One piece of work waiting for a shared write transaction."""

    fn: Callable[[Session], T]
    result: T | None = None
    error: BaseException | None = None
    committed: bool = False
    finished: bool = False
    detached: bool = False  # queued without a waiter: a failure is kept for flush_grouped
    isolated: bool = True  # in a savepoint of its own (see Mirror.write_grouped)
    thread_id: str | None = None  # the thread whose rows it writes (see lock_threads)
    together: Together | None = None  # runs the transaction's pieces of its kind at once


@dataclass(eq=False)
class _Group:
    queue: list[_Grouped[Any]] = field(default_factory=list)
    flushing: bool = False
    idle: anyio.Event | None = None
    failures: list[BaseException] = field(default_factory=list)


class _TransactionLost(Exception):
    """The database rolled the whole transaction back under a failing piece."""


def _still_open(session: Session) -> bool:
    """Whether the transaction survived a failed piece. SQLite rolls the whole transaction back
    on some errors (disk full, I/O error, out of memory); a savepoint issued after that would
    start and commit a transaction of its own, and the pieces before would be lost unnoticed."""
    if session.get_bind().dialect.name != "sqlite":
        return True  # PostgreSQL keeps it, aborted: the commit then fails for every piece
    try:
        driver: Any = session.connection().connection.driver_connection
        return bool(driver.in_transaction)
    except Exception:  # a session that cannot even tell has lost it
        return False


def _thread_key(thread_id: str) -> int:
    """A thread's advisory lock key: 64 bits of a hash, as PostgreSQL's signed bigint."""
    digest = blake2b(b"threadsync.thread:" + thread_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


_LOCK_THREADS_SQL = "SELECT pg_advisory_xact_lock(k) FROM unnest(CAST(%s AS bigint[])) AS k"


def lock_threads(session: Session, thread_ids: Iterable[str]) -> None:
    """On PostgreSQL, take each thread's transaction-scoped advisory lock, in key order.

    Several processes may write one PostgreSQL mirror at once (syncs, a daemon, pushes): a page
    is planned from what its transaction reads and then written, so two passes over one thread
    must not interleave there (each would insert the messages the other's plan had not seen).
    Whoever writes a thread's rows takes its lock first, all of a transaction's at its start and
    in one order (sorted keys, locked in array order), so two writers never wait on each other
    in a circle. The locks end with the transaction: nothing is held across HTTP requests, and a
    killed process holds nothing. SQLite has one writer at a time already.
    """
    if session.get_bind().dialect.name != "postgresql":
        return
    keys = sorted({_thread_key(t) for t in thread_ids})
    if keys:  # to the driver: through the ORM's execute this cost more than the lock itself
        session.connection().exec_driver_sql(_LOCK_THREADS_SQL, (keys,))


def _run_piece(session: Session, job: _Grouped[Any]) -> None:
    try:
        if job.isolated:
            with session.begin_nested():
                job.result = job.fn(session)
        else:
            job.result = job.fn(session)
    except Exception as exc:
        job.error = exc
        if not _still_open(session):
            # The savepoint's rollback failed too; the first error is the cause.
            job.error = exc.__context__ or exc
            raise _TransactionLost from job.error


def _run_together(session: Session, together: Together, jobs: list[_Grouped[Any]]) -> None:
    """``jobs`` (pieces of one kind) in one call and one savepoint; each alone if that fails."""
    try:
        with session.begin_nested():
            together(session, [job.fn for job in jobs])
    except Exception as exc:
        if not _still_open(session):
            for job in jobs:
                job.error = exc.__context__ or exc
            raise _TransactionLost from (exc.__context__ or exc)
        for job in jobs:  # which piece failed, and the others' work: as if never batched
            _run_piece(session, job)


def _write_group(mirror: Mirror, batch: list[_Grouped[Any]]) -> None:
    """Run ``batch`` in one write transaction, one savepoint per isolated piece; the pieces
    that share a ``together`` run at once, in one savepoint, where the first of them is."""
    kinds: dict[Together, list[_Grouped[Any]]] = {}
    for job in batch:
        if job.together is not None:
            kinds.setdefault(job.together, []).append(job)
    try:
        with mirror.write(small=True) as session:  # a sync's pages and closing states
            lock_threads(session, (job.thread_id for job in batch if job.thread_id is not None))
            for job in batch:
                if job.together is None:
                    _run_piece(session, job)
                elif (jobs := kinds.pop(job.together, None)) is not None:
                    _run_together(session, job.together, jobs)
    except Exception as exc:
        failure: BaseException = exc
        if isinstance(exc, _TransactionLost) and exc.__cause__ is not None:
            failure = exc.__cause__
        for job in batch:
            if job.error is None:
                job.error = failure
        return
    for job in batch:
        job.committed = job.error is None


class Mirror:
    """An opened mirror database."""

    def __init__(self, url: str, *, create: bool = True, check: bool = True) -> None:
        self.url = normalise_url(url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        try:
            self._open(create=create, check=check)
        except NoMirrorError:
            raise NoMirrorError(
                f"no mirror at {self.safe_url}; track a thread with `threadsync threads add ID`"
                " and run `threadsync sync` to create one"
            ) from None

    def _open(self, *, create: bool, check: bool) -> None:
        if self.is_sqlite:
            self.engine = _sqlite_engine(self.url, create=create)
        else:
            self.engine = create_engine(
                self.url, pool_pre_ping=True, pool_size=10, max_overflow=20, hide_parameters=True
            )
        self._writers = anyio.CapacityLimiter(1) if self.is_sqlite else None
        # Reads are short; a few at a time keep both cores busy. Without a bound, a full walk's
        # eight passes spread their page reads over as many threads, each holding its own
        # connection and page cache: about 12 MB more peak memory for no speed.
        self._readers = anyio.CapacityLimiter(READERS)
        self._group = _Group()
        if check:
            try:
                ensure_schema(self.engine, create=create)
            except DBAPIError as exc:
                self.engine.dispose()
                raise opening_error(self.safe_url, exc) from exc

    @property
    def safe_url(self) -> str:
        """The URL as the user writes it (no driver name), password hidden."""
        plain = self.url.set(drivername=self.url.get_backend_name())
        return plain.render_as_string(hide_password=True)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def write(self, *, small: bool = False) -> Iterator[Session]:
        """A write transaction: committed on success, rolled back on any exception.

        ``small``: every statement changes a few pages at most (SQLite then journals them in
        memory; see ``_sqlite_engine``).
        """
        options = {"threadsync_write": True, "threadsync_small": small}
        with (
            Session(self.engine.execution_options(**options), expire_on_commit=False) as session,
            session.begin(),
        ):
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only unit of work (one snapshot on SQLite WAL while the transaction is open)."""
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            yield session

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run blocking read work in a worker thread; shielded so it always finishes cleanly."""

        def call() -> T:
            return fn(*args, **kwargs)

        with anyio.CancelScope(shield=True):
            result = await anyio.to_thread.run_sync(call, limiter=self._readers)
        return result  # noqa: RET504 - mypy cannot see past the shielded scope

    async def run_write(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Like :meth:`run` for work that writes: one writer at a time on SQLite.

        The shield means a cancelled caller still waits for the commit (or rollback): an in-flight
        page transaction always finishes, which is what graceful shutdown relies on.
        """

        def call() -> T:
            return fn(*args, **kwargs)

        with anyio.CancelScope(shield=True):
            result = await anyio.to_thread.run_sync(call, limiter=self._writers)
        return result  # noqa: RET504 - mypy cannot see past the shielded scope

    async def write_grouped(
        self, fn: Callable[[Session], T], *, isolated: bool = True, thread_id: str | None = None
    ) -> T:
        """Run ``fn(session)`` in a write transaction, shared with whatever else is waiting.

        When no grouped write is running, ``fn`` goes at once, alone. Otherwise it queues, and
        when the running transaction ends, one waiter takes everything queued into the next one:
        eight sync passes writing pages then commit about once per round instead of eight times.
        Each ``fn`` runs in its own savepoint, so its exception rolls back its own work only, and
        is raised here; if the commit itself fails, every ``fn`` of that transaction raises it.
        Shielded like :meth:`run_write`: once queued, the work is committed or rolled back.

        ``isolated=False`` spares ``fn`` its savepoint, for work whose every partial effect is
        one a rerun converges from (a sync page: rows upserted by id, the cursor advanced last).
        If it raises, what it wrote before the error is committed with the others; the error is
        still raised here. On SQLite a savepoint and its release are two more trips through the
        driver, each handing the GIL over and waiting to get it back from the event loop: about
        a tenth of a 100,000-message first sync (bench_sync).

        ``thread_id``: the thread whose rows ``fn`` writes; on PostgreSQL the transaction takes
        that thread's lock before any piece runs (:func:`lock_threads`).
        """
        job: _Grouped[T] = _Grouped(fn, isolated=isolated, thread_id=thread_id)
        self._group.queue.append(job)
        await self._drain(lambda: job.finished)
        if job.error is not None:
            raise job.error
        return cast(T, job.result)  # set: fn returned and its transaction committed

    @property
    def grouped_waiting(self) -> int:
        """Pieces queued for the next grouped write transaction."""
        return len(self._group.queue)

    def queue_grouped(
        self,
        fn: Callable[[Session], None],
        *,
        isolated: bool = True,
        thread_id: str | None = None,
        together: Together | None = None,
    ) -> None:
        """Queue ``fn`` for the next grouped write transaction without waiting for it.

        For bookkeeping nothing else waits on (a sync pass's closing state): it rides along with
        the next page another pass writes, or with :meth:`flush_grouped`, which the owner of the
        work must call before it reports the work done. ``isolated`` as for
        :meth:`write_grouped` (a single statement needs no savepoint on SQLite: it fails whole).

        ``together``: the transaction's pieces queued with this same function run in one call,
        ``together(session, fns)`` (the ``fn`` objects, in queue order), in one savepoint, at
        the place of the first of them, instead of a savepoint each: many passes' closing
        states become one statement (a savepoint and its release were two round trips per
        pass on PostgreSQL). It must have the effect of running each ``fn`` in turn; if it
        raises, its savepoint rolls back and each ``fn`` then runs alone, as without it.
        """
        self._group.queue.append(
            _Grouped(fn, detached=True, isolated=isolated, thread_id=thread_id, together=together)
        )

    async def flush_grouped(self) -> None:
        """Commit everything queued; raise the first failure of work nobody waited for."""
        group = self._group
        await self._drain(lambda: not group.queue and not group.flushing)
        failures, group.failures = group.failures, []
        if failures:
            raise failures[0]

    async def _drain(self, done: Callable[[], bool]) -> None:
        group = self._group
        with anyio.CancelScope(shield=True):
            while not done():
                if group.flushing:
                    assert group.idle is not None
                    await group.idle.wait()
                    continue
                group.flushing, group.idle = True, anyio.Event()
                batch, group.queue = group.queue, []
                try:
                    await self.run_write(_write_group, self, batch)
                finally:
                    for job in batch:
                        job.finished = True
                        if not job.committed and job.error is None:
                            job.error = StoreError("a grouped write ended without committing")
                        if job.detached and job.error is not None:
                            group.failures.append(job.error)
                    group.flushing = False
                    group.idle.set()

    def dispose(self) -> None:
        self.engine.dispose()


# SQLite's primary result codes (https://sqlite.org/rescode.html) the boundary translates.
_SQLITE_READONLY, _SQLITE_IOERR, _SQLITE_CORRUPT = 8, 10, 11
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_FULL, _SQLITE_CANTOPEN, _SQLITE_NOTADB = 5, 6, 13, 14, 26
_INTACT = "the mirror is intact (its last transaction rolled back)"


def _driver_error(exc: BaseException) -> BaseException:
    return exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc


def _first_line(exc: BaseException) -> str:
    """The driver's own sentence, without SQL, parameters or a server's DETAIL (row content)."""
    text = str(exc).strip().splitlines()
    return text[0].strip() if text else type(exc).__name__


def opening_error(safe_url: str, exc: DBAPIError) -> ThreadsyncError:
    """One sentence for a mirror that cannot be opened at all."""
    orig = _driver_error(exc)
    code = getattr(orig, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    if primary == _SQLITE_NOTADB:
        return ConfigError(
            f"database_url: {safe_url} is not a SQLite database ({_first_line(orig)}); point"
            " it at a threadsync mirror or at a new file name"
        )
    if primary in {_SQLITE_CANTOPEN, _SQLITE_READONLY}:
        return ConfigError(
            f"database_url: cannot open the mirror {safe_url} ({_first_line(orig)}); check that"
            " the file and its directory exist and are writable"
        )
    reason = _first_line(orig).removeprefix("connection failed: ")
    if any(said in reason for said in _WRONG_URL):
        return ConfigError(f"database_url: cannot open the mirror at {safe_url}: {reason}")
    return translate_store_error(exc) or StoreError(
        f"cannot open the mirror at {safe_url}: {reason}; check that the server runs and that"
        " database_url names it"
    )


# What a PostgreSQL server says when the URL itself is wrong (the connection error carries no
# SQLSTATE): no retry helps, so it is a configuration error (exit 2).
_WRONG_URL = ("does not exist", "authentication failed", "no password supplied")


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def translate_store_error(exc: BaseException) -> ThreadsyncError | None:
    """The project's error for a database failure the user can act on, or None.

    Used at the boundaries (the CLI, the daemon's jobs): a disk filling up in the middle of a
    sync arrives from the driver, possibly inside a task group's exception group.
    """
    for leaf in _leaves(exc):
        found = _translate_one(_driver_error(leaf))
        if found is not None:
            return found
    return None


def _translate_one(orig: BaseException) -> ThreadsyncError | None:
    if isinstance(orig, sqlite3.Error):
        code = getattr(orig, "sqlite_errorcode", None)
        primary = code & 0xFF if isinstance(code, int) else None
        if primary is None and "database or disk is full" in str(orig):
            primary = _SQLITE_FULL
        return _from_sqlite(primary, orig)
    sqlstate = getattr(orig, "sqlstate", None)
    if isinstance(sqlstate, str):
        return _from_sqlstate(sqlstate, orig)
    return None


def _from_sqlite(primary: int | None, orig: BaseException) -> ThreadsyncError | None:
    if primary == _SQLITE_FULL:
        return StoreError(
            f"the disk holding the mirror is full; {_INTACT}; free space and run again"
        )
    if primary == _SQLITE_READONLY:
        return ConfigError(
            f"the mirror is read-only ({_first_line(orig)}); {_INTACT}; make the file and its"
            " directory writable, then run again"
        )
    if primary == _SQLITE_IOERR:
        return StoreError(
            f"the disk failed while writing the mirror ({_first_line(orig)}); check the disk,"
            " then run again (SQLite rolls an unfinished transaction back)"
        )
    if primary in {_SQLITE_CORRUPT, _SQLITE_NOTADB}:
        return StoreError(
            f"the mirror database is damaged ({_first_line(orig)}); restore it from a backup"
            " with `threadsync restore`"
        )
    if primary in {_SQLITE_BUSY, _SQLITE_LOCKED}:
        return StoreError(
            "the mirror stayed locked by another process; run again when it has finished"
        )
    return None


def _from_sqlstate(sqlstate: str, orig: BaseException) -> ThreadsyncError | None:
    if sqlstate == "53100":  # disk_full
        return StoreError(
            f"the PostgreSQL server's disk is full; {_INTACT}; free space on the server and"
            " run again"
        )
    if sqlstate.startswith("53"):  # insufficient resources: memory, connections
        return StoreError(
            f"the PostgreSQL server is out of resources ({_first_line(orig)}); {_INTACT}; run"
            " again later"
        )
    if sqlstate.startswith("08"):  # connection exceptions
        return StoreError(
            f"lost the connection to PostgreSQL ({_first_line(orig)}); {_INTACT}; run again"
        )
    if sqlstate == "25006":  # read_only_sql_transaction: a standby
        return ConfigError(
            "the PostgreSQL server accepts no writes (a read-only standby?); point database_url"
            " at the primary"
        )
    return None
