"""Who is calling: the API key of a request, its scopes and its team.

`require("reports:read")` is a FastAPI dependency that returns the caller's `ApiKey` or
raises `Unauthenticated` (401: no key, unknown, revoked) or `Forbidden` (403: the key lacks
the scope). Team restriction is the route's job: it passes `key.team` to the query as a
bound filter, so a team key reads its team's rows whatever the query asks.

With AGENTLEDGER_AUTH=disabled every request is `ANONYMOUS_ADMIN`; `check_auth_settings`
refuses that unless the API listens on loopback only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from agentledger.settings import Settings
from api.errors import Forbidden, Unauthenticated
from api.keys import ANONYMOUS_ADMIN, SCOPES, ApiKey, KeyStore

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})

_bearer = HTTPBearer(auto_error=False, description="An agentledger API key: `Authorization: Bearer alk_...`")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="The same key in `X-API-Key`")


class AuthConfigError(Exception):
    """AGENTLEDGER_AUTH=disabled with a non-loopback AGENTLEDGER_API_HOST: that would serve
    every team's data to anyone on the network. Create keys instead (`agentledger keys create`)."""


def check_auth_settings(settings: Settings) -> None:
    if settings.auth == "disabled" and settings.api_host not in LOOPBACK:
        raise AuthConfigError(
            f"AGENTLEDGER_AUTH=disabled is only allowed on loopback, not api_host={settings.api_host!r}"
        )


def authenticate(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    header: Annotated[str | None, Depends(_header)],
) -> ApiKey:
    state = request.app.state
    if state.settings.auth == "disabled":
        return ANONYMOUS_ADMIN
    text = bearer.credentials if bearer is not None else header
    if not text:
        raise Unauthenticated("an API key is required: Authorization: Bearer <key> or X-API-Key")
    store: KeyStore = state.keys
    key = store.verify(text)
    if key is None:
        raise Unauthenticated("the API key is unknown, malformed or revoked")
    return key


def require(scope: str) -> Callable[[ApiKey], ApiKey]:
    """A dependency returning the caller's key if it holds `scope` (admin holds all)."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}")

    def dependency(key: Annotated[ApiKey, Depends(authenticate)]) -> ApiKey:
        if not key.allows(scope):
            raise Forbidden(f"the key {key.key_id} lacks the {scope!r} scope", field="scope")
        return key

    return dependency


def require_unrestricted_admin(key: Annotated[ApiKey, Depends(require("admin"))]) -> ApiKey:
    """Key management: an admin key without a team (a team admin must not mint wider keys)."""
    if key.team is not None:
        raise Forbidden(f"the key {key.key_id} is restricted to a team and cannot manage keys", field="team")
    return key
