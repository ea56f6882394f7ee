"""Embedded ClickHouse (chDB): one Session per process and data folder, shared by threads.

chDB returns Decimal columns as JSON numbers; they are parsed straight into `Decimal`
(never through float) and converted by the column types that the JSON result declares.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
from chdb import session as chdb_session

from api.warehouse import (
    Params,
    Row,
    WarehouseError,
    WarehouseLocked,
    bind_params,
    check_dedup_token,
    check_identifier,
    error_from_message,
    format_datetime,
)


def _unwrap(type_name: str) -> str:
    for wrapper in ("Nullable(", "LowCardinality("):
        while type_name.startswith(wrapper):
            type_name = type_name[len(wrapper) : -1]
    return type_name


def _converter(type_name: str) -> Any:
    base = _unwrap(type_name)
    if base.startswith("Decimal"):
        return lambda v: v if isinstance(v, Decimal) else Decimal(str(v))
    if base.startswith(("Int", "UInt")):
        return int
    if base.startswith("DateTime"):
        return lambda v: datetime.fromisoformat(v).replace(tzinfo=UTC)
    if base.startswith("Date"):
        return date.fromisoformat
    return None


def decode_json_result(payload: bytes) -> list[Row]:
    """Rows of a chDB `JSONCompact` result with Decimal, int, datetime and date restored."""
    if not payload.strip():
        return []
    doc = json.loads(payload, parse_float=Decimal)
    meta = doc["meta"]
    names = [m["name"] for m in meta]
    converters = [_converter(m["type"]) for m in meta]
    rows = []
    for values in doc["data"]:
        row = {}
        for name, conv, value in zip(names, converters, values, strict=True):
            row[name] = conv(value) if conv is not None and value is not None else value
        rows.append(row)
    return rows


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value, "f")
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def encode_json_each_row(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> bytes:
    """JSONEachRow body: Decimals as strings, datetimes as UTC text, maps as objects."""
    out = bytearray()
    for row in rows:
        record = {
            col: format_datetime(v) if isinstance(v, datetime) else v for col, v in zip(columns, row, strict=True)
        }
        out += orjson.dumps(record, default=_json_default)
        out += b"\n"
    return bytes(out)


class ChdbWarehouse:
    backend = "chdb"

    def __init__(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        try:
            self._session = chdb_session.Session(str(path.resolve()))
        except Exception as exc:  # chDB raises a bare RuntimeError/ChdbError
            raise WarehouseLocked(f"cannot open chDB folder {path}: {exc}") from exc
        # A streaming insert holds the connection; queries and inserts take turns.
        self._lock = threading.Lock()
        self._closed = False

    def _run(self, sql: str, params: Params | None, fmt: str) -> Any:
        if self._closed:
            raise WarehouseError("warehouse is closed")
        try:
            with self._lock:
                return self._session.query(sql, fmt, params=bind_params(params))
        except RuntimeError as exc:
            raise error_from_message(str(exc)) from exc

    def command(self, sql: str, params: Params | None = None) -> None:
        self._run(sql, params, "CSV")

    def query(self, sql: str, params: Params | None = None) -> list[Row]:
        return decode_json_result(self._run(sql, params, "JSONCompact").bytes())

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
        # send_insert takes no parameters: identifiers and the token are checked against
        # strict patterns instead, and the data travels apart from the SQL text.
        cols = ", ".join(f"`{check_identifier(c)}`" for c in columns)
        sql = f"INSERT INTO `{check_identifier(database)}`.`{check_identifier(table)}` ({cols})"
        if dedup_token is not None:
            sql += f" SETTINGS insert_deduplication_token = '{check_dedup_token(dedup_token)}'"
        body = encode_json_each_row(columns, rows)
        if self._closed:
            raise WarehouseError("warehouse is closed")
        try:
            with self._lock, self._session.send_insert(sql, "JSONEachRow") as inserter:
                inserter.append(body)
                inserter.finish()
        except RuntimeError as exc:
            raise error_from_message(str(exc)) from exc
        return len(rows)

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._session.close()
