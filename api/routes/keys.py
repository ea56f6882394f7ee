"""/v1/keys: API key management for an unrestricted admin key.

In embedded mode the API process holds the chDB folder, so `agentledger keys ... --api URL`
comes through here instead of opening the warehouse itself.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from api.auth import authenticate, require_unrestricted_admin
from api.errors import InvalidParameter, NotFound
from api.keys import SCOPES, ApiKey, InvalidKeySpec, KeyStore, UnknownKey

router = APIRouter(prefix="/v1/keys", tags=["admin"])


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scopes: list[str] = Field(min_length=1, max_length=len(SCOPES), description=f"From: {', '.join(SCOPES)}")
    team: str | None = Field(default=None, max_length=128, description="Restrict the key to this team's data")
    name: str = Field(default="", max_length=200)


class KeyPublic(BaseModel):
    key_id: str
    name: str
    scopes: list[str]
    team: str | None
    created_at: datetime | None
    revoked_at: datetime | None


class KeyCreated(KeyPublic):
    key: str = Field(description="The full key: shown once, stored only as a hash")


def _public(key: ApiKey) -> KeyPublic:
    return KeyPublic(
        key_id=key.key_id,
        name=key.name,
        scopes=sorted(key.scopes),
        team=key.team,
        created_at=key.created_at,
        revoked_at=key.revoked_at,
    )


@router.get("/me", response_model=KeyPublic, summary="The key of this request: its scopes and team")
def current_key(key: Annotated[ApiKey, Depends(authenticate)]) -> KeyPublic:
    """Any valid key may ask; the dashboard uses it to log in and to show what the key may do."""
    return _public(key)


@router.post("", response_model=KeyCreated, status_code=201, summary="Create an API key")
def create_key(
    request: Request, body: KeyCreate, _admin: Annotated[ApiKey, Depends(require_unrestricted_admin)]
) -> KeyCreated:
    store: KeyStore = request.app.state.keys
    try:
        key, text = store.create(body.scopes, team=body.team, name=body.name)
    except InvalidKeySpec as exc:
        raise InvalidParameter(str(exc), field="team" if "team" in str(exc) else "scopes") from None
    return KeyCreated(**_public(key).model_dump(), key=text)


@router.get("", response_model=list[KeyPublic], summary="List API keys (never their secrets)")
def list_keys(
    request: Request,
    _admin: Annotated[ApiKey, Depends(require_unrestricted_admin)],
    include_revoked: Annotated[bool, Query()] = False,
) -> list[KeyPublic]:
    store: KeyStore = request.app.state.keys
    return [_public(k) for k in store.list_keys(include_revoked=include_revoked)]


@router.delete("/{key_id}", response_model=KeyPublic, summary="Revoke an API key")
def revoke_key(
    request: Request, key_id: str, _admin: Annotated[ApiKey, Depends(require_unrestricted_admin)]
) -> KeyPublic:
    store: KeyStore = request.app.state.keys
    try:
        return _public(store.revoke(key_id))
    except UnknownKey as exc:
        raise NotFound(str(exc), field="key_id") from None
