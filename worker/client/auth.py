"""Entra ID bearer tokens for the API client: one token per process, refreshed ahead of expiry.

Entra access tokens live 60 to 90 minutes, so a daemon must renew them while it runs. Every
request of the process shares one :class:`EntraTokens`:

- a request takes the held token while it is fresh (no await, no lock);
- from the token's ``refresh_on`` (when the token endpoint gave one), else 5 minutes before it
  expires (half its lifetime for tokens shorter than 10 minutes), the next request renews it;
  however many requests arrive meanwhile, one renewal is in flight and the others wait for it;
- a renewal that fails while the held token is still valid is logged and tried again after a
  backoff (1 s doubling to 30 s) while requests keep using the held token; once it has expired,
  requests fail fast with :class:`CredentialError` until a renewal succeeds;
- a 401 answer forces one new token (:meth:`EntraTokens.renew`): the client retries that request
  once and then reports an authentication error, never a loop.

Where tokens come from is a :class:`TokenFetcher`: azure-identity behind
:mod:`worker.client.entra`, or a stub in tests. A token is a secret: it is registered with the
log scrubber, never put in a field, an error or a metric, and its ``repr`` hides it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import anyio

from worker.errors import CredentialError
from worker.logs import forget_secret, get_logger, register_secret

log = get_logger()

REFRESH_OFFSET = 300.0  # renew this long before expiry when the endpoint gives no refresh_on
RETRY_FIRST = 1.0  # after a failed renewal, wait this long before the next one...
RETRY_CAP = 30.0  # ...doubling up to this


@dataclass(frozen=True)
class Token:
    """An access token and its times, in seconds since the epoch."""

    value: str = field(repr=False)
    expires_on: float
    refresh_on: float | None = None


class TokenFetcher(Protocol):
    """Gets a new token each call (no cache of its own), raising :class:`CredentialError`."""

    @property
    def description(self) -> str:
        """What the user configured, for messages: e.g. ``api.credential=managed-identity``."""
        ...

    @property
    def scope(self) -> str:
        """The scope tokens are asked for, e.g. ``https://ai.azure.com/.default``."""
        ...

    async def fetch(self) -> Token: ...

    async def aclose(self) -> None: ...


def refresh_time(token: Token, now: float) -> float:
    """When to renew ``token``, fetched at ``now``: its ``refresh_on``, else ahead of expiry."""
    if token.refresh_on is not None:
        return min(token.refresh_on, token.expires_on)
    lifetime = max(0.0, token.expires_on - now)
    return token.expires_on - min(REFRESH_OFFSET, lifetime / 2)


class EntraTokens:
    """The process's one token, single-flight renewal, and the 401 path (see the module doc)."""

    def __init__(self, fetcher: TokenFetcher, *, clock: Callable[[], float] = time.time) -> None:
        self.fetcher = fetcher
        self._clock = clock
        self._lock = anyio.Lock()
        self._held: Token | None = None
        self._registered: str | None = None  # the token the log scrubber knows
        self._refresh_at = 0.0
        self._renewals = 0  # completed renewals, successful or not: a waiter sees it move
        self._failures = 0  # consecutive failed renewals
        self._failure: CredentialError | None = None
        self._retry_at = 0.0
        self.fetches = 0  # tokens asked of the fetcher (for tests)
        # Told of each renewal ("renewed" with the expiry, or "failed"): the client's metrics.
        self.listener: Callable[[str, float | None], None] | None = None

    @property
    def description(self) -> str:
        return self.fetcher.description

    @property
    def scope(self) -> str:
        return self.fetcher.scope

    async def token(self) -> str:
        """A token to send now; renews it first when due (one renewal, however many wait)."""
        held = self._held
        if held is not None and self._clock() < self._refresh_at:
            return held.value
        seen = self._renewals
        async with self._lock:
            if self._renewals == seen and self._clock() >= self._retry_at:
                await self._renew(forced=False)
            return self._usable()

    async def renew(self, rejected: str) -> None:
        """The server refused ``rejected``: replace it, unless another request already did (or
        tried: 64 requests refused at once cost one renewal). Raises when no token is usable."""
        seen = self._renewals
        async with self._lock:
            held = self._held
            if self._renewals == seen and (held is None or held.value == rejected):
                self._held = None  # refused: no other request should send it again
                await self._renew(forced=True)
            self._usable()

    async def aclose(self) -> None:
        await self.fetcher.aclose()

    def _usable(self) -> str:
        held = self._held
        if held is not None and self._clock() < held.expires_on:
            return held.value
        if self._failure is not None:
            # A fresh exception each time: one instance re-raised by every request of an outage
            # would pile up their tracebacks.
            raise CredentialError(self._failure.message)
        raise CredentialError(f"no Entra token from {self.description} yet; the next pass retries")

    async def _renew(self, *, forced: bool) -> None:
        try:
            token = await self.fetcher.fetch()
        except CredentialError as exc:
            self._renewals += 1
            self._failed(exc)
            if forced:
                raise
            return
        finally:
            self.fetches += 1
        self._renewals += 1
        now = self._clock()
        self._held = token
        register_secret(token.value)
        if self._registered is not None and self._registered != token.value:
            forget_secret(self._registered)
        self._registered = token.value
        self._refresh_at = refresh_time(token, now)
        self._failures, self._failure, self._retry_at = 0, None, 0.0
        if self.listener is not None:
            self.listener("renewed", token.expires_on)
        log.info(
            "auth.token_renewed",
            credential=self.description,
            expires_in=round(token.expires_on - now),
            renew_in=round(self._refresh_at - now),
            forced=forced,
        )

    def _failed(self, exc: CredentialError) -> None:
        self._failures += 1
        wait = min(RETRY_CAP, RETRY_FIRST * 2 ** (self._failures - 1))
        self._failure = exc
        self._retry_at = self._clock() + wait
        held = self._held
        valid = held is not None and self._clock() < held.expires_on
        if self.listener is not None:
            self.listener("failed", None)
        log.warning(
            "auth.token_failed",
            credential=self.description,
            error=exc.message,
            retry_in=wait,
            still_valid=valid,
        )
