"""ClickHouse server through clickhouse-connect (HTTP), selected by CLICKHOUSE_URL.

Same SQL as chDB: `{name:Type}` placeholders are bound server-side by clickhouse-connect
when parameters are a dict. clickhouse-connect escapes each value itself, so it is handed
what makes the server read the same value chDB reads from `bind_value` (`server_params`).
Results come back in the chDB adapter's types: FixedString as str, DateTime as aware UTC.
Tested in tests/api against the real engine behind a minimal HTTP front (see
tests/api/clickhouse_http.py for which parts of the protocol that covers).
"""

from __future__ import annotations

import re
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


Convert = Callable[[Any], Any]


def _decimal(precision: int, scale: int) -> Convert:
    bound = Decimal(10) ** (precision - scale)

    def convert(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, (str, int, Decimal)):
            raise TypeError(f"not a decimal: {value!r}")
        number = Decimal(value)
        if not abs(number) < bound:  # also refuses NaN and infinities
            raise ValueError(f"out of range for Decimal({precision}, {scale}): {value!r}")
        return number

    return convert


def _datetime(value: Any) -> Any:
    value = datetime.fromisoformat(value) if isinstance(value, str) else value
    if not isinstance(value, datetime):
        raise TypeError(f"not a datetime: {value!r}")
    return _utc(value)


def _integer(low: int, high: int) -> Convert:
    def convert(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"not an integer: {value!r}")
        if not low <= value < high:
            raise ValueError(f"out of range [{low}, {high}): {value!r}")
        return value

    return convert


def _text(size: int | None) -> Convert:
    def convert(value: Any) -> Any:
        if not isinstance(value, (str, bytes)):
            raise TypeError(f"not text: {value!r}")
        if size is not None and len(value.encode() if isinstance(value, str) else value) > size:
            raise ValueError(f"longer than FixedString({size}): {value!r}")
        return value

    return convert


def _boolean(value: Any) -> Any:
    if not isinstance(value, bool):
        raise TypeError(f"not a boolean: {value!r}")
    return value


def _text_map(value: Any) -> Any:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise TypeError(f"not a map of text to text: {value!r}")
    return value


def _text_array(value: Any) -> Any:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"not an array of text: {value!r}")
    return value


def _or_null(convert: Convert, nullable: bool) -> Convert:
    def check(value: Any) -> Any:
        if value is None:
            if nullable:
                return None
            raise ValueError("null in a column that is not Nullable")
        return convert(value)

    return check


_NUMBERS = re.compile(r"\d+")


def insert_converter(type_name: str) -> Convert:
    """How a value is checked and handed to clickhouse-connect for a column of `type_name`.

    The sink's rows carry Decimals and datetimes as the JSON text they came in (chDB parses
    that text itself); clickhouse-connect writes Native and wants Python values, so that text
    is turned into `Decimal` (exact) and an aware datetime here. A value the column cannot hold
    is refused here, before the request: clickhouse-connect would fail while streaming the body,
    which reads as a lost connection (retried for ever) rather than as bad data. Covers the
    column types of sql/; any other passes as it is."""
    base = base_type(type_name)
    numbers = [int(n) for n in _NUMBERS.findall(base)]
    convert: Convert = _utc
    if base.startswith("Decimal(") and len(numbers) == 2:
        convert = _decimal(*numbers)
    elif base.startswith("DateTime"):
        convert = _datetime
    elif re.fullmatch(r"UInt\d+", base):
        convert = _integer(0, 2 ** numbers[0])
    elif re.fullmatch(r"Int\d+", base):
        convert = _integer(-(2 ** (numbers[0] - 1)), 2 ** (numbers[0] - 1))
    elif base == "String":
        convert = _text(None)
    elif base.startswith("FixedString("):
        convert = _text(numbers[0])
    elif base == "Bool":
        convert = _boolean
    elif base.startswith("Map(") and base.endswith(", String)") and "String" in base.split(",")[0]:
        convert = _text_map
    elif base in ("Array(String)", "Array(LowCardinality(String))"):
        convert = _text_array
    nullable = type_name.removeprefix("LowCardinality(").startswith("Nullable(")
    return _or_null(convert, nullable)


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
