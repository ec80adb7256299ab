"""`threadsync doctor`: is everything in place to sync? One line per check, in order, stopping at
the first failure with what to do about it. Exit 0 when every check passed, 2 otherwise.

The checks, each a small function: the configuration loads; the mirror exists, opens and has the
current schema; the endpoint's name resolves and it answers on its port (with a TLS handshake for
https); the service accepts the credential and the api-version (one cheap GET); for Foundry, the
thread listing answers. The doctor changes nothing: it never creates the mirror, never writes to
it, and sends only GET requests, without retries (a retry would hide what it is there to show).
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
import httpx
import typer
from rich.markup import escape
from sqlalchemy.exc import SQLAlchemyError

from worker.cli.common import EXIT_CONFIG, Globals, command, globals_of, out_console, run_async
from worker.client import ApiClient
from worker.client.profiles import base_url
from worker.config import Profile, RetrySettings, Settings
from worker.discover import check_can_discover
from worker.errors import (
    ApiError,
    AuthError,
    ConfigError,
    NoMirrorError,
    PermanentError,
    SchemaOutdatedError,
    StoreError,
    ThreadsyncError,
)
from worker.logs import scrub
from worker.store import sync_state
from worker.store.db import Mirror, normalise_url, sqlite_path
from worker.store.schema import ensure_schema

# A well-formed id no thread has: asked for when the mirror tracks none, so that the answer
# (401 against 404) still tells whether the credential was accepted.
PROBE_THREAD = "thread_threadsyncdoctor000000"


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor)


@dataclass(frozen=True)
class Verdict:
    """One check's outcome: what was found, and on failure what to do about it."""

    ok: bool
    detail: str
    todo: str = ""


def passed(detail: str) -> Verdict:
    return Verdict(True, detail)


def failed(detail: str, todo: str) -> Verdict:
    return Verdict(False, detail, todo)


@dataclass
class Findings:
    """What the checks learn on the way, for the checks after them."""

    globals: Globals
    settings: Settings | None = None
    probe_thread: str | None = None  # a tracked thread to read, when the mirror has one
    answer: ApiError | None = None  # the probe's failure (None: it succeeded)
    probed: str = ""  # which request the probe was


Check = Callable[[Findings], Awaitable[Verdict | None]]


# -- the checks, in order -------------------------------------------------------------------------


async def check_configuration(f: Findings) -> Verdict:
    try:
        settings = f.globals.settings()
        target = base_url(settings.api)
        if settings.daemon.discover_interval is not None:
            check_can_discover(settings, "daemon.discover_interval")
    except ConfigError as exc:
        return failed(scrub(str(exc)), "correct the setting named (file, variable or option)")
    f.settings = settings
    version = settings.api.effective_api_version()
    return passed(
        f"profile {settings.api.profile.value}, API at {target}"
        + (f", api-version {version}" if version else "")
    )


async def check_mirror(f: Findings) -> Verdict:
    assert f.settings is not None
    url = f.settings.database_url
    try:
        parsed = normalise_url(url)
    except ConfigError as exc:
        return failed(str(exc), "set THREADSYNC_DATABASE_URL to a sqlite:/// or postgresql:// URL")
    path = sqlite_path(parsed)
    if path is not None and not path.is_file():
        return failed(
            f"no mirror at {path}",
            "point THREADSYNC_DATABASE_URL (or --database-url) at your mirror; a new one is"
            " made by the first `threadsync threads add`",
        )
    return await anyio.to_thread.run_sync(_open_mirror, f, url)


def _open_mirror(f: Findings, url: str) -> Verdict:
    mirror = Mirror(url, check=False)
    try:
        ensure_schema(mirror.engine, create=False)
        with mirror.read() as session:
            f.probe_thread = sync_state.probe_thread(session)
    except NoMirrorError:
        return failed(
            f"no mirror at {mirror.safe_url} (the database holds none)",
            "point THREADSYNC_DATABASE_URL at your mirror; a new one is made by the first"
            " `threadsync threads add`",
        )
    except SchemaOutdatedError as exc:
        return failed(str(exc), "back the mirror up, then run `threadsync db upgrade`")
    except StoreError as exc:
        return failed(str(exc), "point THREADSYNC_DATABASE_URL at a threadsync mirror")
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        return failed(
            f"cannot open the mirror at {mirror.safe_url}: {reason}",
            "check THREADSYNC_DATABASE_URL, that the database runs and that you may read it",
        )
    finally:
        mirror.dispose()
    return passed(f"{mirror.safe_url} opens; schema current")


async def check_endpoint(f: Findings) -> Verdict:
    assert f.settings is not None
    api = f.settings.api
    parts = urlsplit(base_url(api))
    host, https = parts.hostname or "", parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    wait = api.connect_timeout
    try:
        with anyio.fail_after(wait):
            await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, TimeoutError) as exc:
        why = exc.strerror if isinstance(exc, socket.gaierror) else f"no answer in {wait:g} s"
        return failed(
            f"the name {host} does not resolve ({why})",
            "check api.endpoint (AZURE_OPENAI_ENDPOINT) for a typo, and this machine's DNS",
        )
    try:
        with anyio.fail_after(wait):
            if https:
                tls = await anyio.connect_tcp(
                    host, port, tls=True, ssl_context=httpx.create_ssl_context(), tls_hostname=host
                )
                await tls.aclose()
            else:
                plain = await anyio.connect_tcp(host, port)
                await plain.aclose()
    except ssl.SSLError as exc:
        return failed(
            f"TLS with {host}:{port} failed: {exc.reason or exc}",
            "the certificate is not trusted here; if a proxy inspects TLS, give its CA with"
            " SSL_CERT_FILE",
        )
    except (OSError, TimeoutError) as exc:
        why = f"no answer in {wait:g} s" if isinstance(exc, TimeoutError) else _refusal(exc)
        return failed(
            f"nothing answers at {host}:{port} ({why})",
            "check the port in api.endpoint and that the service (or the emulator) runs",
        )
    return passed(f"{host} resolves and answers on port {port}" + (" (TLS)" if https else ""))


def _refusal(exc: OSError) -> str:
    """Why a connection failed: anyio wraps each address's error in "All connection attempts
    failed"; the first of them says it best (e.g. connection refused)."""
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup) and cause.exceptions:
        cause = cause.exceptions[0]
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused"
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror.lower()
    return (exc.strerror or str(exc)).lower()


async def _probe(f: Findings) -> None:
    """The one cheap authenticated GET; its failure is kept for the checks that read it."""
    assert f.settings is not None
    api = f.settings.api
    async with ApiClient(api, RetrySettings(max_attempts=1)) as client:
        try:
            if api.profile is Profile.FOUNDRY:
                f.probed = "GET /threads?limit=1"
                await client.list_threads(limit=1)
            else:
                thread = f.probe_thread or PROBE_THREAD
                f.probed = f"listing one message of {thread}"
                await client.list_messages(thread, limit=1)
        except ApiError as exc:
            f.answer = exc


def _names_api_version(exc: ApiError) -> bool:
    """A 400 or 404 about the api-version. Azure OpenAI answers a version it does not serve
    with a bare 404 "Resource not found" (a missing thread is "No thread found ...")."""
    text = f"{exc.code or ''} {exc.message}".lower()
    if exc.status not in (400, 404):
        return False
    return "api-version" in text or "apiversion" in text or "resource not found" in text


async def check_credential(f: Findings) -> Verdict:
    assert f.settings is not None
    try:
        await _probe(f)
    except ConfigError as error:
        return failed(scrub(str(error)), "give the credential as the message says")
    exc = f.answer
    if isinstance(exc, AuthError):
        return failed(
            f"the service refused the credential ({_short(exc)})",
            "check the key (AZURE_OPENAI_API_KEY, OPENAI_API_KEY or api.api_key_file); a 403"
            " means the identity lacks the role (Cognitive Services OpenAI User / Azure AI User)",
        )
    if exc is not None and not isinstance(exc, PermanentError):
        return failed(
            f"no usable answer to {f.probed} ({_short(exc)})",
            "try again in a while; if it persists, the service or a proxy in between is failing",
        )
    if f.settings.api.profile is not Profile.FOUNDRY and f.probe_thread is None:
        return passed(
            "not refused: no thread is tracked, so a made-up thread was asked for and the"
            f" service answered {exc.status if exc else 200}, not 401 (add threads and run the"
            " doctor again to read a real one)"
        )
    return passed(f"accepted ({f.probed})")


async def check_api_version(f: Findings) -> Verdict:
    assert f.settings is not None
    version = f.settings.api.effective_api_version()
    exc = f.answer
    if exc is not None and _names_api_version(exc):
        return failed(
            f"api-version {version} refused ({_short(exc)})",
            "set OPENAI_API_VERSION (or THREADSYNC_API__API_VERSION) to one this service"
            " serves, e.g. 2024-08-01-preview for Azure OpenAI, 2025-05-01 for Foundry; a 404"
            " can also mean the endpoint's path is wrong",
        )
    if version is None:
        return passed("none needed (openai profile)")
    if exc is not None and f.settings.api.profile is not Profile.FOUNDRY:
        return passed(f"{version} not refused (the answer was about the thread: {_short(exc)})")
    return passed(f"{version} accepted")


async def check_thread_listing(f: Findings) -> Verdict | None:
    assert f.settings is not None
    if f.settings.api.profile is not Profile.FOUNDRY:
        return None
    exc = f.answer
    if exc is not None:
        return failed(
            f"GET /threads was refused ({_short(exc)})",
            "use the project endpoint https://<aiservices>.services.ai.azure.com/api/projects/"
            "<project> (or api.project); thread discovery needs this listing",
        )
    return passed("GET /threads answers")


def _short(exc: ThreadsyncError) -> str:
    text = scrub(str(exc))
    return text if len(text) <= 200 else text[:200] + "..."


CHECKS: list[tuple[str, Check]] = [
    ("configuration", check_configuration),
    ("mirror", check_mirror),
    ("endpoint", check_endpoint),
    ("credential", check_credential),
    ("api-version", check_api_version),
    ("thread listing", check_thread_listing),
]


async def run_checks(g: Globals, report: Callable[[str, Verdict], None]) -> bool:
    """Run the checks in order, reporting each; stop at the first failure. True if all passed."""
    findings = Findings(globals=g)
    for name, check in CHECKS:
        verdict = await check(findings)
        if verdict is None:
            continue
        report(name, verdict)
        if not verdict.ok:
            return False
    return True


def _print(name: str, verdict: Verdict) -> None:
    if verdict.ok:
        out_console.print(f"[green]ok  [/]  {name}: {escape(verdict.detail)}")
    else:
        line = f"{name}: {verdict.detail}; to fix: {verdict.todo}"
        out_console.print(f"[bold red]FAIL[/]  {escape(line)}")


@command
def doctor(ctx: typer.Context) -> None:
    """Check the configuration, the mirror, the endpoint, the credential and the api-version,
    in order, stopping at the first failure with what to do. Changes nothing. Exit 0 or 2."""
    g = globals_of(ctx)
    ok = run_async(lambda: run_checks(g, _print))
    if not ok:
        raise typer.Exit(EXIT_CONFIG)
