"""API keys: create, look up, verify and revoke; stored hashed in the warehouse.

A key reads `alk_<key_id>_<secret>`. The key id (12 hex digits) is public: it names the
key in `agentledger keys list` and in logs. The secret is 32 random bytes; only its
sha256 is stored. A plain hash is enough here (no scrypt): the secret has 256 bits of
entropy, so there is nothing to guess, and verification stays cheap on every request.

Lookups are cached in the API process for `auth_cache_s` seconds, so a revocation made
elsewhere (the CLI against a ClickHouse server) takes effect within that; one made through
the API's own admin endpoint takes effect at once.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from api.warehouse import Row, Warehouse
from schemas.events import utcnow

SCOPES: Final = ("ingest", "reports:read", "budgets:write", "admin")
"""Every scope a key can hold; `admin` implies all the others."""

KEY_PREFIX: Final = "alk_"
_KEY = re.compile(r"^alk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
_TEAM = re.compile(r"^[\x21-\x7e][\x20-\x7e]{0,127}$")
_COLUMNS: Final = ("key_id", "secret_sha256", "name", "scopes", "team", "created_at", "revoked_at", "updated_at")


class KeyStoreError(Exception):
    """Root of the key store's errors."""


class InvalidKeySpec(KeyStoreError):
    """A key was asked for with an unknown scope, no scope, or a malformed team name."""


class UnknownKey(KeyStoreError):
    """No key has this id: check `agentledger keys list`."""


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key as the API sees it: who may do what, and for which team."""

    key_id: str
    scopes: frozenset[str]
    team: str | None
    name: str = ""
    created_at: datetime | None = None
    revoked_at: datetime | None = None

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


ANONYMOUS_ADMIN: Final = ApiKey(key_id="auth-disabled", scopes=frozenset(SCOPES), team=None, name="auth disabled")
"""The principal of every request when AGENTLEDGER_AUTH=disabled."""


@dataclass(frozen=True, slots=True)
class _Stored:
    key: ApiKey
    secret_sha256: str


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_key(text: str) -> tuple[str, str] | None:
    """(key_id, secret) of a well-formed key, else None."""
    match = _KEY.match(text.strip())
    return (match.group(1), match.group(2)) if match else None


def check_spec(scopes: Iterable[str], team: str | None) -> tuple[str, ...]:
    wanted = tuple(dict.fromkeys(s.strip() for s in scopes if s.strip()))
    if not wanted:
        raise InvalidKeySpec(f"a key needs at least one scope, from: {', '.join(SCOPES)}")
    unknown = [s for s in wanted if s not in SCOPES]
    if unknown:
        raise InvalidKeySpec(f"unknown scope(s) {', '.join(unknown)}; allowed: {', '.join(SCOPES)}")
    if team is not None and not _TEAM.match(team):
        raise InvalidKeySpec("team must be 1 to 128 printable ASCII characters, no leading blank")
    return wanted


_LATEST = (
    "SELECT key_id, picked.1 AS secret_sha256, picked.2 AS name, picked.3 AS scopes, picked.4 AS team, "
    "picked.5 AS created_at, picked.6 AS revoked_at FROM ("
    "SELECT key_id, argMax(tuple(secret_sha256, name, scopes, team, created_at, revoked_at), updated_at) AS picked "
    "FROM {database:Identifier}.api_keys{where} GROUP BY key_id) ORDER BY key_id"
)


def _from_row(row: Row) -> _Stored:
    key = ApiKey(
        key_id=row["key_id"],
        scopes=frozenset(row["scopes"]),
        team=row["team"],
        name=row["name"],
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
    )
    return _Stored(key, row["secret_sha256"])


class KeyStore:
    """Keys in `<database>.api_keys`, through the warehouse protocol (chDB or server)."""

    def __init__(
        self,
        warehouse: Warehouse,
        database: str,
        *,
        cache_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._warehouse = warehouse
        self._database = database
        self._cache_s = cache_s
        self._clock = clock
        self._cache: dict[str, tuple[float, _Stored | None]] = {}
        self._lock = threading.Lock()

    def create(self, scopes: Iterable[str], *, team: str | None = None, name: str = "") -> tuple[ApiKey, str]:
        """A new key; returns it and the full key text, which is shown once and never stored."""
        wanted = check_spec(scopes, team)
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        now = utcnow()
        row = (key_id, _hash(secret), name[:200], list(wanted), team, now, None, now)
        self._warehouse.insert(self._database, "api_keys", _COLUMNS, [row])
        self.forget(key_id)
        key = ApiKey(key_id=key_id, scopes=frozenset(wanted), team=team, name=name[:200], created_at=now)
        return key, f"{KEY_PREFIX}{key_id}_{secret}"

    def _load(self, key_id: str | None) -> list[_Stored]:
        where = " WHERE key_id = {key_id:String}" if key_id is not None else ""
        params: dict[str, object] = {"database": self._database}
        if key_id is not None:
            params["key_id"] = key_id
        return [_from_row(r) for r in self._warehouse.query(_LATEST.replace("{where}", where), params)]

    def get(self, key_id: str) -> ApiKey:
        found = self._load(key_id)
        if not found:
            raise UnknownKey(f"no key {key_id!r}")
        return found[0].key

    def list_keys(self, *, include_revoked: bool = False) -> list[ApiKey]:
        keys = [s.key for s in self._load(None)]
        return keys if include_revoked else [k for k in keys if not k.revoked]

    def revoke(self, key_id: str) -> ApiKey:
        """Revoke a key (a no-op on one already revoked); UnknownKey if there is none."""
        found = self._load(key_id)
        if not found:
            raise UnknownKey(f"no key {key_id!r}")
        stored = found[0]
        if stored.key.revoked:
            return stored.key
        now = utcnow()
        k = stored.key
        row = (k.key_id, stored.secret_sha256, k.name, sorted(k.scopes), k.team, k.created_at, now, now)
        self._warehouse.insert(self._database, "api_keys", _COLUMNS, [row])
        self.forget(key_id)
        return ApiKey(k.key_id, k.scopes, k.team, k.name, k.created_at, now)

    def forget(self, key_id: str) -> None:
        with self._lock:
            self._cache.pop(key_id, None)

    def _cached(self, key_id: str) -> _Stored | None:
        now = self._clock()
        with self._lock:
            hit = self._cache.get(key_id)
            if hit is not None and hit[0] > now:
                return hit[1]
        found = self._load(key_id)
        stored = found[0] if found else None
        with self._lock:
            self._cache[key_id] = (now + self._cache_s, stored)
            if len(self._cache) > 10_000:  # unknown ids are cached too; keep that bounded
                self._cache.clear()
        return stored

    def verify(self, text: str) -> ApiKey | None:
        """The live key that `text` is, or None (malformed, unknown, wrong secret, revoked)."""
        parsed = parse_key(text)
        if parsed is None:
            return None
        key_id, secret = parsed
        stored = self._cached(key_id)
        if stored is None or stored.key.revoked:
            return None
        if not hmac.compare_digest(_hash(secret), stored.secret_sha256):
            return None
        return stored.key
