"""Entra ID for the emulator: a managed-identity token endpoint and the API's token checks.

The token endpoint speaks the App Service managed-identity protocol that azure-identity's
``ManagedIdentityCredential`` selects when ``IDENTITY_ENDPOINT`` and ``IDENTITY_HEADER`` are set
(``azure/identity/_credentials/app_service.py``, azure-identity 1.27):

    GET {IDENTITY_ENDPOINT}?api-version=2019-08-01&resource=<scope without /.default>
        [&client_id=...]   with header  X-IDENTITY-HEADER: <IDENTITY_HEADER>
    200 {"access_token", "expires_on": "<epoch seconds>", "resource", "token_type": "Bearer",
         "client_id"}

Plain http on loopback is what App Service itself uses, and azure-identity accepts it. Tokens are
opaque random strings that live ``lifetime`` seconds; the API takes them as ``Authorization:
Bearer`` and answers an expired, unknown or wrong-audience token with the 401 body Azure's API
gateway gives (reported verbatim in many public issues)::

    {"statusCode": 401, "message": "Unauthorized. Access token is missing, invalid, audience is
     incorrect (https://cognitiveservices.azure.com), or have expired."}

``entra`` says which families insist on Entra tokens: ``off`` (the emulator key works everywhere,
the default, as before), ``foundry`` (Foundry classic takes only Entra tokens, as the real service
does), ``all`` (key authentication disabled everywhere, as an Azure policy does; an ``api-key``
header then gets 403 ``AuthenticationTypeDisabled``). An outage makes the token endpoint answer
5xx for the next N requests (or until cleared).
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from worker.emulator.wire import WireError, dumps

EntraMode = Literal["off", "foundry", "all"]
ENTRA_MODES: tuple[str, ...] = get_args(EntraMode)
TOKEN_PATH = "/msi/token"  # noqa: S105 - a URL path, not a secret
API_VERSION = "2019-08-01"
HEADER = "x-identity-header"

AZURE_AUDIENCE = "https://cognitiveservices.azure.com"
FOUNDRY_AUDIENCE = "https://ai.azure.com"
# Which token audiences each path family accepts: Azure OpenAI takes both (the newest docs use
# ai.azure.com for /openai/v1), Foundry projects only their own.
AUDIENCES: dict[str, frozenset[str]] = {
    "azure": frozenset({AZURE_AUDIENCE, FOUNDRY_AUDIENCE}),
    "openai": frozenset({AZURE_AUDIENCE, FOUNDRY_AUDIENCE}),
    "foundry": frozenset({FOUNDRY_AUDIENCE}),
}


class TokenRejected(WireError):
    """The gateway's 401 for a missing, invalid, wrong-audience or expired token."""

    def __init__(self, audience: str) -> None:
        super().__init__(
            401,
            f"Unauthorized. Access token is missing, invalid, audience is incorrect ({audience}),"
            " or have expired.",
        )

    def body(self) -> bytes:
        return dumps({"statusCode": 401, "message": self.message})


@dataclass
class Issued:
    expires_on: int
    resource: str


@dataclass
class Identity:
    """Token issuance and validation; every method is called under the emulator's lock."""

    lifetime: float = 3600.0
    header: str = "emulator-identity-header"
    entra: EntraMode = "off"
    client_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    outage_status: int | None = None
    outage_left: int | None = None  # None: until cleared
    tokens: dict[str, Issued] = field(default_factory=dict)
    issued: int = 0
    refused: int = 0  # token endpoint requests answered with an error
    rejected: int = 0  # API requests refused for their token

    def __post_init__(self) -> None:
        if self.entra not in ENTRA_MODES:
            raise ValueError(f"entra must be one of {ENTRA_MODES}, not {self.entra!r}")
        if self.lifetime <= 0:
            raise ValueError("token lifetime must be positive")

    # -- the token endpoint ---------------------------------------------------------------------

    def issue(self, query: dict[str, str], headers: dict[bytes, bytes], now: float) -> bytes:
        """Answer one token request (raises WireError for a refusal)."""
        try:
            self._check_request(query, headers)
            self._outage()
        except WireError:
            self.refused += 1
            raise
        # Expired tokens are kept a while, so that they are refused as expired, not as unknown.
        self.tokens = {t: i for t, i in self.tokens.items() if i.expires_on > now - 3600}
        token = "eyJ0eXAi." + secrets.token_urlsafe(32)
        expires_on = int(now + self.lifetime)
        resource = query["resource"]
        self.tokens[token] = Issued(expires_on, resource.rstrip("/"))
        self.issued += 1
        return dumps(
            {
                "access_token": token,
                "expires_on": str(expires_on),
                "resource": resource,
                "token_type": "Bearer",
                "client_id": query.get("client_id", self.client_id),
            }
        )

    def _check_request(self, query: dict[str, str], headers: dict[bytes, bytes]) -> None:
        if headers.get(HEADER.encode(), b"").decode("latin-1") != self.header:
            raise WireError(401, "The X-IDENTITY-HEADER is missing or wrong.", code="Unauthorized")
        if query.get("api-version") != API_VERSION:
            raise WireError(
                400,
                f"api-version must be {API_VERSION}.",
                code="invalid_request",
                param="api-version",
            )
        if not query.get("resource"):
            raise WireError(
                400, "Required query variable 'resource' is missing.", code="invalid_request"
            )

    def _outage(self) -> None:
        if self.outage_status is None:
            return
        status = self.outage_status
        if self.outage_left is not None:
            self.outage_left -= 1
            if self.outage_left <= 0:
                self.outage_status = self.outage_left = None
        raise WireError(
            status, "The managed identity endpoint is unavailable.", type_="server_error"
        )

    # -- the API's checks -----------------------------------------------------------------------

    def accepts_key(self, family: str) -> bool:
        """Whether the emulator key may authenticate on ``family`` under the current mode."""
        if self.entra == "all":
            return False
        return not (self.entra == "foundry" and family == "foundry")

    def check(self, token: str, family: str, now: float) -> bool:
        """True for a live token of an accepted audience; False when it is no issued token."""
        issued = self.tokens.get(token)
        if issued is None:
            return False
        if now >= issued.expires_on or issued.resource not in AUDIENCES[family]:
            self.rejected += 1
            raise self.rejection(family)
        return True

    def rejection(self, family: str) -> TokenRejected:
        return TokenRejected(FOUNDRY_AUDIENCE if family == "foundry" else AZURE_AUDIENCE)

    # -- the control plane ----------------------------------------------------------------------

    def configure(self, **changes: Any) -> None:
        unknown = set(changes) - {"lifetime", "entra", "outage"}
        if unknown:
            raise ValueError(f"unknown identity settings: {sorted(unknown)}")
        if "lifetime" in changes:
            lifetime = float(changes["lifetime"])
            if lifetime <= 0:
                raise ValueError("lifetime must be positive")
            self.lifetime = lifetime
        if "entra" in changes:
            if changes["entra"] not in ENTRA_MODES:
                raise ValueError(f"entra must be one of {ENTRA_MODES}")
            self.entra = changes["entra"]
        if "outage" in changes:
            self._set_outage(changes["outage"])

    def _set_outage(self, outage: Any) -> None:
        if outage is None:
            self.outage_status = self.outage_left = None
            return
        if not isinstance(outage, dict) or int(outage.get("status", 0)) not in (500, 502, 503):
            raise ValueError('outage is null or {"status": 500|502|503, "times": N|null}')
        times = outage.get("times")
        if times is not None and int(times) < 1:
            raise ValueError("outage times must be at least 1")
        self.outage_status = int(outage["status"])
        self.outage_left = None if times is None else int(times)

    def to_dict(self) -> dict[str, Any]:
        return {
            "lifetime": self.lifetime,
            "entra": self.entra,
            "outage": None
            if self.outage_status is None
            else {"status": self.outage_status, "times": self.outage_left},
            "issued": self.issued,
            "refused": self.refused,
            "rejected": self.rejected,
            "live_tokens": len(self.tokens),
        }
