"""The warehouse behind one small protocol: embedded chDB or a ClickHouse server.

Both adapters run the same SQL. Values are always bound as ClickHouse server-side
parameters (`{name:Type}`, identifiers as `{db:Identifier}`), never pasted into SQL text;
`bind_value` renders each Python value to the text form the engine reads (the server adapter
lets clickhouse-connect escape strings itself, so the server reads the same values: see
`api.warehouse.clickhouse.server_value`).
Rows come back as dicts with exact Python types: `Decimal` for Decimal columns, never float.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, Protocol

from agentledger.settings import Settings

Row = dict[str, Any]
Params = Mapping[str, Any]

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
DEDUP_TOKEN = re.compile(r"^[A-Za-z0-9._:-]{1,256}$")

# ClickHouse error codes worth waiting out: timeouts, overload, network, too many parts.
RETRYABLE_CODES = frozenset({3, 159, 202, 209, 210, 241, 242, 252, 319, 425, 999})
_CODE = re.compile(r"Code: (\d+)")


class WarehouseError(Exception):
    """A warehouse call failed. `retryable` says whether waiting and retrying may help;
    otherwise the operator should read the message (schema, SQL or data at fault)."""

    def __init__(self, message: str, *, code: int | None = None, retryable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.retryable = retryable


class WarehouseLocked(WarehouseError):
    """The chDB data folder is open in another process. Embedded mode allows one process
    per folder: run the sink inside the API process (`agentledger api`), or set
    CLICKHOUSE_URL to use a ClickHouse server."""


def error_from_message(message: str, *, default_retryable: bool = False) -> WarehouseError:
    match = _CODE.search(message)
    code = int(match.group(1)) if match else None
    retryable = code in RETRYABLE_CODES if code is not None else default_retryable
    return WarehouseError(message, code=code, retryable=retryable)


class Warehouse(Protocol):
    backend: str

    def command(self, sql: str, params: Params | None = None) -> None:
        """Run a statement that returns no rows (DDL, INSERT ... SELECT)."""
        ...

    def query(self, sql: str, params: Params | None = None) -> list[Row]:
        """Run a SELECT; one dict per row, exact Python types."""
        ...

    def insert(
        self,
        database: str,
        table: str,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        *,
        dedup_token: str | None = None,
    ) -> int:
        """Insert rows (tuples in `columns` order) as one block; returns the rows sent.

        A Decimal or DateTime value may also come as its text, as JSON carries it: a decimal
        string ('0E-12', '1.5') or ISO 8601 with an offset ('2026-03-01T12:00:53+00:00').
        A value its column cannot hold is a WarehouseError that is not retryable.

        With `dedup_token`, a second insert carrying the same token is dropped by the
        engine (needs `non_replicated_deduplication_window` > 0 on the table)."""
        ...

    def close(self) -> None: ...


def check_identifier(name: str) -> str:
    if not IDENTIFIER.match(name):
        raise WarehouseError(f"not a valid identifier: {name!r}")
    return name


def check_dedup_token(token: str) -> str:
    if not DEDUP_TOKEN.match(token):
        raise WarehouseError(f"not a valid deduplication token: {token!r}")
    return token


def base_type(type_name: str) -> str:
    """A column type without its Nullable / LowCardinality wrappers."""
    for wrapper in ("Nullable(", "LowCardinality("):
        while type_name.startswith(wrapper):
            type_name = type_name[len(wrapper) : -1]
    return type_name


def format_datetime(value: datetime) -> str:
    """UTC, microseconds, no zone suffix: what DateTime64(6, 'UTC') parses on every setting."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")


def _quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def bind_value(value: Any) -> str:
    """The text form of a parameter value, as ClickHouse parses `{name:Type}` values."""
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return format_datetime(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return format(value, "f")  # str() may give '1E-12', which ClickHouse misreads
    if isinstance(value, str):
        # Parameter values are read in ClickHouse's escaped format: a lone backslash would
        # start an escape sequence (an error, or silently another value).
        return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_quote(v) if isinstance(v, str) else bind_value(v) for v in value) + "]"
    raise WarehouseError(f"cannot bind a {type(value).__name__} parameter")


def bind_params(params: Params | None) -> dict[str, str]:
    return {name: bind_value(value) for name, value in (params or {}).items()}


def open_warehouse(settings: Settings) -> Warehouse:
    """A ClickHouse server client when CLICKHOUSE_URL is set, else embedded chDB under
    `settings.chdb_path` (one process per folder)."""
    if settings.clickhouse_url:
        from api.warehouse.clickhouse import ClickHouseWarehouse

        return ClickHouseWarehouse(settings.clickhouse_url)
    from api.warehouse.chdb import ChdbWarehouse

    return ChdbWarehouse(settings.chdb_path)
