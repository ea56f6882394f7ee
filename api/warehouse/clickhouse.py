"""ClickHouse server through clickhouse-connect (HTTP), selected by CLICKHOUSE_URL.

Same SQL as chDB: `{name:Type}` placeholders are bound server-side by clickhouse-connect
when parameters are a dict. clickhouse-connect escapes each value itself, so it is handed
what makes the server read the same value chDB reads from `bind_value` (`server_params`).
Results come back in the chDB adapter's types: FixedString as str, DateTime as aware UTC.
Tested in tests/api against the real engine behind a minimal HTTP front (see
tests/api/clickhouse_http.py for which parts of the protocol that covers).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.exceptions import ClickHouseError, OperationalError

from api.warehouse import (
    Params,
    Row,
    WarehouseError,
    base_type,
    bind_value,
    check_dedup_token,
    check_identifier,
    error_from_message,
)

# FixedString (event_id) as text, as chDB returns it; bytes would never equal a str id.
QUERY_FORMATS = {"FixedString": "string"}


def server_value(value: Any) -> Any:
    """The value to give clickhouse-connect so that the server reads what chDB reads from
    `bind_value(value)`: clickhouse-connect escapes strings and quotes array elements itself
    (a pre-escaped string would be escaped twice), and sends None as NULL. Every other value
    is rendered by `bind_value`, whose text has nothing to escape."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        if not all(isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool)) for v in value):
            raise WarehouseError("arrays are bound as arrays of strings or integers only")
        return list(value)
    return bind_value(value)


def server_params(params: Params | None) -> dict[str, Any]:
    return {name: server_value(value) for name, value in (params or {}).items()}


def _utc(value: Any) -> Any:
    # chDB reads a naive datetime as UTC; clickhouse-connect would read it as local time.
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _decimal(value: Any) -> Any:
    return Decimal(value) if isinstance(value, str) else value


def _datetime(value: Any) -> Any:
    return _utc(datetime.fromisoformat(value) if isinstance(value, str) else value)


def insert_converter(type_name: str) -> Callable[[Any], Any]:
    """How a value is handed to clickhouse-connect for a column of `type_name`.

    The sink's rows carry Decimals and datetimes as the JSON text they came in (chDB parses
    that text itself); clickhouse-connect writes Native and wants Python values, so that text
    is turned into `Decimal` (exact) and an aware datetime here."""
    base = base_type(type_name)
    if base.startswith("Decimal"):
        return _decimal
    if base.startswith("DateTime"):
        return _datetime
    return _utc


def _wrap(exc: Exception) -> WarehouseError:
    # A lost connection is worth retrying; a server error is judged by its code.
    return error_from_message(str(exc), default_retryable=isinstance(exc, OperationalError))


class ClickHouseWarehouse:
    backend = "clickhouse"

    def __init__(self, url: str) -> None:
        try:
            # No session: the sink thread and API threads share this client, and a session
            # admits one query at a time. Aware UTC datetimes, as the chDB adapter returns.
            self._client = clickhouse_connect.get_client(dsn=url, autogenerate_session_id=False, tz_mode="aware")
        except ClickHouseError as exc:
            raise _wrap(exc) from exc
        self._types: dict[tuple[str, str], dict[str, str]] = {}

    def _column_types(self, database: str, table: str, columns: Sequence[str]) -> list[str]:
        """Column types for an insert, from one DESCRIBE per table and process: without them
        clickhouse-connect describes the table before every insert (a round trip each). A
        column it has not seen is looked up again; a column whose type changed under a running
        process is converted by the server (Native input) or refused, never silently wrong."""
        types = self._types.get((database, table))
        if types is None or any(c not in types for c in columns):
            described = self._client.query(
                "DESCRIBE TABLE {db:Identifier}.{table:Identifier}", parameters={"db": database, "table": table}
            )
            types = {r["name"]: r["type"] for r in described.named_results()}
            self._types[(database, table)] = types
        unknown = [c for c in columns if c not in types]
        if unknown:
            raise WarehouseError(f"no column {unknown[0]!r} in {database}.{table}")
        return [types[c] for c in columns]

    def command(self, sql: str, params: Params | None = None) -> None:
        try:
            self._client.command(sql, parameters=server_params(params))
        except ClickHouseError as exc:
            raise _wrap(exc) from exc

    def query(self, sql: str, params: Params | None = None) -> list[Row]:
        try:
            result = self._client.query(sql, parameters=server_params(params), query_formats=QUERY_FORMATS)
            return list(result.named_results())
        except ClickHouseError as exc:
            raise _wrap(exc) from exc

    def insert(
        self,
        database: str,
        table: str,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        *,
        dedup_token: str | None = None,
    ) -> int:
        if not rows:
            return 0
        settings = {}
        if dedup_token is not None:
            settings["insert_deduplication_token"] = check_dedup_token(dedup_token)
        try:
            types = self._column_types(database, table, columns)
        except ClickHouseError as exc:
            raise _wrap(exc) from exc
        converters = [insert_converter(t) for t in types]
        try:
            data = [[convert(v) for convert, v in zip(converters, r, strict=True)] for r in rows]
            self._client.insert(
                check_identifier(table),
                data,
                column_names=list(columns),
                database=check_identifier(database),
                column_type_names=types,
                settings=settings,
            )
        except ClickHouseError as exc:
            raise _wrap(exc) from exc
        except (ValueError, TypeError, ArithmeticError, struct.error) as exc:
            # a value the column cannot hold, found before it was sent (chDB finds it when it
            # parses): the data's fault, so not worth retrying
            raise WarehouseError(f"cannot insert into {database}.{table}: {exc!r}") from exc
        return len(rows)

    def close(self) -> None:
        self._client.close()
