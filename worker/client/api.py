"""The Assistants API client: one pooled httpx client, retries, pacing and error translation.

This is the boundary where httpx and the server's answers become the project's own errors, exactly
once: 401/403 -> AuthError, 404 -> NotFoundError, other 4xx -> PermanentError, transient failures
that outlast the retries -> TransientError, a server wait above the cap -> ParkedError. Every
message answered is checked against the contract (``models``, ``messages``): one that breaks it
-> MalformedError, not retried (the same request would get the same answer).

Only requests that are safe to repeat are retried: GET, DELETE and the metadata modify (a POST that
sets a map, so sending it twice leaves the same state). A create is never repeated blindly once it
may have reached the server, because the service has no idempotency key and a second send makes a
second message; the exceptions are answers proving nothing was done (429) and connections that
were never established.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Self, TypeVar
from urllib.parse import urlsplit

import anyio
import httpx
import orjson

from worker.client import profiles
from worker.client.auth import EntraTokens, TokenFetcher
from worker.client.models import (
    Listed,
    MessagePage,
    message_object,
    message_page,
    page_unless,
    parse_object,
    parse_page,
)
from worker.client.pacer import Pacer
from worker.client.retry import backoff_delay, classify, parse_retry_after
from worker.client.transport import RequestBuilder, pooled_transport, release, send
from worker.config import ApiSettings, Profile, RetrySettings, format_duration
from worker.errors import (
    AuthError,
    ConfigError,
    NotFoundError,
    NotFoundSubject,
    ParkedError,
    PermanentError,
    TransientError,
    UnreachableError,
)
from worker.jsontext import dumps
from worker.logs import get_logger, register_secret, scrub

log = get_logger()

Order = Literal["asc", "desc"]
T = TypeVar("T")

THREADS = "/threads"
THREAD = "/threads/{thread_id}"
MESSAGES = "/threads/{thread_id}/messages"
MESSAGE = "/threads/{thread_id}/messages/{message_id}"

REQUEST_ID_HEADERS = ("x-request-id", "apim-request-id", "x-ms-request-id")

# Failures raised before a byte of the request left this process: repeating them is always safe.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


class ClientEvents:
    """Hooks for metrics; every method is a no-op here, override what you count."""

    def on_response(self, method: str, route: str, status: int | None, seconds: float) -> None:
        """A request finished: ``status`` None means no answer (a transport failure)."""

    def on_retry(self, route: str, status: int | None, wait: float) -> None:
        """A failed request will be sent again after ``wait`` seconds."""

    def on_throttled(self, wait: float) -> None:
        """The server answered 429; ``wait`` is what it asked for (0.0 when it did not say)."""

    def on_token(self, outcome: str, expires_on: float | None) -> None:
        """Entra only: a token was ``renewed`` (``expires_on`` is its expiry, epoch seconds),
        its renewal ``failed``, or the server ``refused`` one (a 401)."""


@dataclass(frozen=True)
class _Failure:
    """One failed attempt, as the retry loop and the final error need it."""

    kind: str  # "http" or the transport error's class name, or "invalid_body"
    status: int | None
    code: str | None
    message: str
    request_id: str | None
    server_wait: float | None
    sent: bool  # the request may have reached the server


def request_id_of(headers: Mapping[str, str]) -> str | None:
    """The server's request id, from whichever header this deployment uses."""
    for name in REQUEST_ID_HEADERS:
        value = headers.get(name)
        if value:
            return value
    return None


def vendor_error(body: bytes) -> tuple[str | None, str | None]:
    """``(error.code, error.message)`` from an ``{"error": {...}}`` body, or from the
    ``{"statusCode", "message"}`` body Azure's gateway gives for a refused token; tolerant of
    anything."""
    code, message, _ = _error_fields(body)
    return code, message


def _error_fields(body: bytes) -> tuple[str | None, str | None, str | None]:
    """``(code, message, param)`` of a vendor error body, each None when absent."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None, None
    if isinstance(value, dict) and "error" not in value and "statusCode" in value:
        # The body Azure's gateway gives for a refused token.
        value = {"error": {"code": value.get("statusCode"), "message": value.get("message")}}
    error = value.get("error") if isinstance(value, dict) else None
    if not isinstance(error, dict):
        return None, None, None
    code, message, param = error.get("code"), error.get("message"), error.get("param")
    return (
        str(code) if code is not None else None,
        scrub(str(message))[:500] if message is not None else None,
        str(param) if param is not None else None,
    )


_NAMES_VERSION = re.compile(r"api[-_ ]?version", re.IGNORECASE)
# Not a bare "url": a 400 about an ``image_url`` part's value is about data, not the endpoint.
_NAMES_PATH = re.compile(r"invalid url|unknown[_ ]url|\bpath\b|\broute\b", re.IGNORECASE)
_NAMES_THREAD = re.compile(r"\bthread", re.IGNORECASE)
_NAMES_MESSAGE = re.compile(r"\bmessage\b", re.IGNORECASE)


def blamed_setting(
    api: ApiSettings, code: str | None, message: str | None, param: str | None
) -> str | None:
    """The setting an error answer points at when it names the api-version or the path.

    Vendors word these differently (Azure: 404 "Resource not found" with ``param`` api-version,
    or 400 "UnsupportedApiVersion"; OpenAI: 404 "Invalid URL (GET /v1/...)"), so the body's
    code, message and param are all looked at, never one exact string.
    """
    said = " ".join(part for part in (code, message) if part)
    if param == "api-version" or _NAMES_VERSION.search(said):
        return profiles.VERSION_SETTING
    if _NAMES_PATH.search(said):
        return profiles.ENDPOINT_SETTING[api.profile]
    return None


def not_found_subject(ids: Mapping[str, str], message: str | None) -> NotFoundSubject:
    """What a 404's body says is missing (see :class:`NotFoundError`)."""
    if not message:
        return "unknown"
    if _NAMES_MESSAGE.search(message) or ids.get("message_id", "\0") in message:
        return "message"
    if _NAMES_THREAD.search(message) or ids.get("thread_id", "\0") in message:
        return "thread"
    return "unknown"


def status_text(status: int, code: str | None, message: str | None) -> str:
    """``HTTP 404 unknown_url: ...``: the status once, the code only when it adds something."""
    text = f"HTTP {status}" + (f" {code}" if code and code != str(status) else "")
    return text + (f": {message}" if message else "")


class ApiClient:
    """Async client for thread messages; use as ``async with ApiClient(settings.api) as client``."""

    def __init__(
        self,
        api: ApiSettings,
        retry: RetrySettings = RetrySettings(),  # noqa: B008 - an immutable pydantic default
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        pacer: Pacer | None = None,
        events: ClientEvents | None = None,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        clock: Callable[[], float] = time.monotonic,
        tokens: EntraTokens | TokenFetcher | None = None,
        target: profiles.Target | None = None,
        agent: str | None = None,
    ) -> None:
        """``tokens`` replaces the Entra token source, or where its tokens come from (with
        ``api.auth = entra``; tests give a stub). ``target``: another service built by its caller
        (the migration's Conversations destination), sharing this request loop, its retry
        policy, pacer and error translation. ``agent``: appended to the User-Agent (the daemon's
        ``replica/<id>`` in replicas mode, so a server can tell replicas apart)."""
        self._tokens = _entra_tokens(api, tokens)
        if target is None:
            key = None if self._tokens is not None else profiles.api_key(api)
            register_secret(key)
            target = profiles.build_target(api, key)
        self.profile = api.profile
        self._api = api
        host = urlsplit(target.base_url).hostname or "?"
        self._host = f"the host {host} ({profiles.ENDPOINT_VARIABLE[api.profile]}) and the network"
        self._retry = retry
        self._pacer = pacer if pacer is not None else Pacer(None, clock=clock, sleep=sleep)
        self._events = events if events is not None else ClientEvents()
        if self._tokens is not None:
            self._tokens.listener = self._events.on_token
        self._rng = rng if rng is not None else random.Random()
        self._sleep = sleep
        self._clock = clock
        self._request_timeout = api.request_timeout
        limits = httpx.Limits(
            max_connections=api.max_connections,
            max_keepalive_connections=api.max_connections,
        )
        # Requests go straight to the transport (transport.send); the httpx client holds the
        # configuration they are built from (RequestBuilder) and closes the transport.
        self._transport = transport if transport is not None else pooled_transport(limits)
        self._http = httpx.AsyncClient(
            base_url=target.base_url,
            params=target.params,
            headers=target.headers,
            transport=self._transport,
            limits=limits,
            timeout=httpx.Timeout(api.read_timeout, connect=api.connect_timeout),
            http1=True,
            http2=False,
            # Never follow a redirect: it would replay the credential to wherever it points.
            follow_redirects=False,
            trust_env=False,
        )
        if agent:
            self._http.headers["User-Agent"] = f"{target.headers.get('User-Agent', '')} {agent}"
        self._build_request = RequestBuilder(self._http, target.params).build

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        try:
            await self._http.aclose()
        finally:
            if self._tokens is not None:
                await self._tokens.aclose()

    @property
    def tokens(self) -> EntraTokens | None:
        """The process's Entra token (None when a static key is sent)."""
        return self._tokens

    # -- messages ---------------------------------------------------------------------------------

    async def list_messages(
        self,
        thread_id: str,
        *,
        limit: int = 100,
        order: Order = "asc",
        after: str | None = None,
        before: str | None = None,
        run_id: str | None = None,
    ) -> MessagePage:
        params = _query(limit=limit, order=order, after=after, before=before, run_id=run_id)
        ids = {"thread_id": thread_id}
        return await self._call("GET", MESSAGES, ids, message_page(thread_id), params=params)

    async def list_messages_unless(
        self,
        thread_id: str,
        expected: bytes | None,
        *,
        limit: int = 100,
        order: Order = "asc",
        after: str | None = None,
    ) -> Listed:
        """As :meth:`list_messages`, with the body's SHA-256; a body whose SHA-256 is
        ``expected`` is returned as it is, unparsed (any other is parsed and checked as usual)."""
        params = _query(limit=limit, order=order, after=after)
        ids = {"thread_id": thread_id}
        parse = page_unless(expected, thread_id)
        return await self._call("GET", MESSAGES, ids, parse, params=params)

    async def get_message(self, thread_id: str, message_id: str) -> dict[str, Any]:
        ids = {"thread_id": thread_id, "message_id": message_id}
        return await self._call("GET", MESSAGE, ids, message_object(thread_id, message_id))

    async def modify_message(
        self, thread_id: str, message_id: str, metadata: dict[str, str], *, repeat: bool = True
    ) -> dict[str, Any]:
        """Set a message's metadata. Setting a map is idempotent, so by default a modify is
        repeated after a 5xx or a dropped connection; ``repeat=False`` raises instead, for callers
        that re-read the message and decide afresh (the outbox: no redundant write)."""
        ids = {"thread_id": thread_id, "message_id": message_id}
        payload = {"metadata": metadata}
        parse = message_object(thread_id, message_id)
        return await self._call("POST", MESSAGE, ids, parse, json=payload, repeatable=repeat)

    async def create_message(
        self,
        thread_id: str,
        *,
        role: Literal["user", "assistant"],
        content: str | list[dict[str, Any]],
        attachments: list[dict[str, Any]] | None = None,
        metadata: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {"role": role, "content": content}
        if attachments is not None:
            payload["attachments"] = attachments
        if metadata is not None:
            payload["metadata"] = metadata
        ids = {"thread_id": thread_id}
        parse = message_object(thread_id)
        return await self._call("POST", MESSAGES, ids, parse, json=payload, repeatable=False)

    async def delete_message(self, thread_id: str, message_id: str) -> dict[str, Any]:
        ids = {"thread_id": thread_id, "message_id": message_id}
        return await self._call("DELETE", MESSAGE, ids, parse_object)

    # -- threads ----------------------------------------------------------------------------------

    async def get_thread(self, thread_id: str) -> dict[str, Any]:
        return await self._call("GET", THREAD, {"thread_id": thread_id}, parse_object)

    async def create_thread(
        self,
        *,
        messages: list[dict[str, Any]] | None = None,
        metadata: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {}
        if messages is not None:
            payload["messages"] = messages
        if metadata is not None:
            payload["metadata"] = metadata
        return await self._call("POST", THREADS, {}, parse_object, json=payload, repeatable=False)

    async def list_threads(
        self, *, limit: int = 100, order: Order = "desc", after: str | None = None
    ) -> MessagePage:
        """Foundry only: the other services have no list-threads endpoint."""
        if self.profile is not Profile.FOUNDRY:
            raise ConfigError(
                f"listing threads needs the foundry profile (this is {self.profile.value}); add"
                " thread ids with `threadsync threads add`"
            )
        params = _query(limit=limit, order=order, after=after)
        return await self._call("GET", THREADS, {}, parse_page, params=params)

    # -- the one request loop ---------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        route: str,
        ids: dict[str, str],
        parse: Callable[[bytes], T],
        *,
        params: dict[str, str] | None = None,
        json: Any = None,
        repeatable: bool | None = None,
    ) -> T:
        """Send until an answer parses or the policy gives up; return the parsed 2xx body.

        ``repeatable`` defaults to True for GET and DELETE only. A 2xx body that ``parse`` rejects
        (truncated, not JSON, wrong shape) is retried like a 5xx.
        """
        safe = method in ("GET", "DELETE") if repeatable is None else repeatable
        url = profiles.fill_route(route, **ids)
        content = dumps(json) if json is not None else None  # lone surrogates escaped
        headers = {"Content-Type": "application/json"} if content is not None else {}
        attempt = 0
        refused = 0  # attempts that found no server at all (refused, DNS)
        renewed = False  # a 401 renews the token once per call, never in a loop
        while True:
            await self._pacer.acquire()
            bearer = await self._tokens.token() if self._tokens is not None else None
            started = self._clock()
            try:
                request = self._build_request(
                    method, url, params, content, self._headers(headers, bearer)
                )
                response = await self._send(request)
            except (httpx.TransportError, httpx.DecodingError) as exc:
                self._events.on_response(method, route, None, self._clock() - started)
                failure = _transport_failure(exc, method, route)
                # Refused, DNS failure, or no handshake within connect_timeout: no server heard.
                refused += isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))
            except _Overdue:
                self._events.on_response(method, route, None, self._clock() - started)
                failure = self._overdue(method, route)
            else:
                try:
                    self._events.on_response(
                        method, route, response.status_code, self._clock() - started
                    )
                    try:
                        judged = self._judge(method, route, ids, response)
                    except AuthError as exc:
                        if bearer is None or renewed or exc.status != 401:
                            raise self._explained(exc) from None
                        renewed = True
                        self._events.on_token("refused", None)
                        log.info(
                            "auth.token_refused",
                            method=method,
                            route=route,
                            request_id=exc.request_id,
                        )
                        await self._renew(bearer)
                        continue  # the same request once more with a new token (not an attempt)
                    if judged is not None:
                        failure = judged
                    else:
                        try:
                            return parse(response.content)
                        except TransientError as exc:
                            failure = _Failure(
                                kind="invalid_body",
                                status=None,
                                code=None,
                                message=f"{method} {route}: {exc.message}",
                                request_id=request_id_of(response.headers),
                                server_wait=None,
                                sent=True,
                            )
                finally:
                    release(response)
            try:
                wait = self._plan_retry(failure, attempt, safe, method, route)
            except TransientError as exc:
                if refused == attempt + 1 and not isinstance(exc, ParkedError):
                    raise UnreachableError(
                        f"{exc.message}, none connected", suspect=self._host
                    ) from exc
                raise
            attempt += 1
            log.info(
                "api.retry",
                attempt=attempt,
                wait=round(wait, 3),
                status=failure.status,
                error=failure.kind,
                code=failure.code,
                method=method,
                route=route,
                request_id=failure.request_id,
            )
            self._events.on_retry(route, failure.status, wait)
            await self._sleep(wait)

    async def _send(self, request: httpx.Request) -> httpx.Response:
        """Send and read the whole body within ``api.request_timeout``, or raise :class:`_Overdue`.

        httpx's read timeout bounds each read only: a server sending a byte every few seconds
        never trips it, and held a sync forever. This deadline covers the attempt whole
        (connection, request, every byte of the answer); the transport closes a connection whose
        request was cancelled, so nothing half-read goes back to the pool.
        """
        with anyio.move_on_after(self._request_timeout):
            return await send(self._transport, request)
        raise _Overdue  # only the deadline's own cancellation ends the block without a return

    def _overdue(self, method: str, route: str) -> _Failure:
        limit = format_duration(self._request_timeout)
        return _Failure(
            kind="request_timeout",
            status=None,
            code=None,
            message=f"{method} {route}: request exceeded api.request_timeout ({limit}): the"
            " server answered too slowly (connect, send and the whole body must fit in it;"
            " raise api.request_timeout for a slow link)",
            request_id=None,
            server_wait=None,
            sent=True,
        )

    def _headers(self, headers: dict[str, str], bearer: str | None) -> dict[str, str]:
        out = {**headers, **profiles.request_headers()}
        if bearer is not None:
            out["Authorization"] = f"Bearer {bearer}"
        return out

    async def _renew(self, rejected: str) -> None:
        assert self._tokens is not None
        await self._tokens.renew(rejected)

    # What a refused Entra token's message names; the migration's target client names its own.
    scope_setting = "api.token_scope"
    grant_where = ""

    def entra_role(self) -> str:
        """The Azure role an Entra identity needs for this client's service."""
        return profiles.ENTRA_ROLE[self.profile]

    def _explained(self, exc: AuthError) -> AuthError:
        """With Entra tokens, say what the user can do about a 401 or 403."""
        if self._tokens is None:
            return exc
        role = self.entra_role()
        scope = self._tokens.scope
        if exc.status == 401:
            hint = (
                f"a new token from {self._tokens.description} was refused too: check that"
                f" {self.scope_setting} ({scope}) is the audience this endpoint wants and that"
                f" the identity holds the {role} role"
            )
        else:
            hint = f"grant the identity of {self._tokens.description} the {role} role"
            hint += self.grant_where
        return AuthError(
            f"{exc.message}; {hint}",
            status=exc.status,
            code=exc.code,
            request_id=exc.request_id,
            suspect=exc.suspect,
        )

    def _judge(
        self, method: str, route: str, ids: Mapping[str, str], response: httpx.Response
    ) -> _Failure | None:
        """None for a 2xx answer; a retryable failure; or raise the permanent error."""
        status = response.status_code
        verdict = classify(status)
        if verdict == "ok":
            return None
        request_id = request_id_of(response.headers)
        code, message, param = _error_fields(response.content)
        text = f"{method} {route}: {status_text(status, code, message)}"
        if verdict == "retry":
            wait = parse_retry_after(response.headers)
            if status == 429:
                self._events.on_throttled(wait or 0.0)
            # A 429 is the one refusal that proves the server did nothing with the request.
            return _Failure("http", status, code, text, request_id, wait, sent=status != 429)
        fields: dict[str, Any] = {"status": status, "code": code, "request_id": request_id}
        if verdict == "auth":
            raise AuthError(text, suspect=self._key_setting(status), **fields)
        suspect = blamed_setting(self._api, code, message, param)
        if verdict == "not_found" and suspect is None:
            raise NotFoundError(text, subject=not_found_subject(ids, message), **fields)
        raise PermanentError(text, suspect=suspect, **fields)

    def _key_setting(self, status: int) -> str:
        variable = profiles.KEY_ENV_VAR[self.profile]
        if status == 403:
            return f"{variable} (the key or identity lacks access to this resource)"
        return variable

    def _plan_retry(
        self, failure: _Failure, attempt: int, safe: bool, method: str, route: str
    ) -> float:
        """How long to wait before the next attempt, or raise when there must be none."""
        fields: dict[str, Any] = {
            "status": failure.status,
            "code": failure.code,
            "request_id": failure.request_id,
        }
        if not safe and failure.sent:
            # Checked before parking too: a parked create would be re-sent on the later pass.
            raise TransientError(
                f"{failure.message}; not repeated: the {method} {route} may have been applied",
                **fields,
            )
        wait = failure.server_wait
        if wait is not None and wait > self._retry.max_server_wait:
            raise ParkedError(
                f"{failure.message}; the server asks to wait {wait:.1f} s, more than the"
                f" {self._retry.max_server_wait:g} s cap: try this thread on a later pass",
                retry_after=wait,
                **fields,
            )
        if failure.status == 429 and wait:
            # Everyone waits, not just this task: otherwise N tasks keep the server throttled.
            self._pacer.pause_for(wait)
        if attempt + 1 >= self._retry.max_attempts:
            raise TransientError(
                f"{failure.message}; gave up after {attempt + 1} attempts", **fields
            )
        if wait:
            return wait
        return backoff_delay(attempt, self._retry.initial_delay, self._retry.max_delay, self._rng)


class _Overdue(Exception):
    """An attempt outlasted ``api.request_timeout`` (raised by ``ApiClient._send``)."""


def _entra_tokens(
    api: ApiSettings, fetcher: EntraTokens | TokenFetcher | None
) -> EntraTokens | None:
    """The token source for ``api.auth = entra`` (azure-identity unless ``fetcher`` is given)."""
    if api.effective_auth() != "entra":
        return None
    if isinstance(fetcher, EntraTokens):
        return fetcher
    if fetcher is None:
        from worker.client import entra  # noqa: PLC0415 - the optional azure extra

        fetcher = entra.fetcher_for(api)
    return EntraTokens(fetcher)


def _transport_failure(
    exc: httpx.TransportError | httpx.DecodingError, method: str, route: str
) -> _Failure:
    kind = type(exc).__name__
    # str(exc) can hold the full URL with its query; name the failure by its kind only.
    return _Failure(
        kind=kind,
        status=None,
        code=None,
        message=f"{method} {route}: no usable answer ({kind})",
        request_id=None,
        server_wait=None,
        sent=not isinstance(exc, _NOT_SENT),
    )


def _query(**values: str | int | None) -> dict[str, str]:
    """Query parameters, leaving out the ones not given (never ``after`` and ``before`` empty)."""
    return {name: str(value) for name, value in values.items() if value is not None}
