"""Embedded ClickHouse (chDB): one Session per process and data folder, shared by threads.

chDB returns Decimal columns as JSON numbers; they are parsed straight into `Decimal`
(never through float) and converted by the column types that the JSON result declares.

Rows go in as one JSONCompactColumns body. Into a table with LowCardinality columns they are
parsed into a temporary in-memory table of the same columns without LowCardinality, then moved
by one INSERT ... SELECT carrying the deduplication token (see `ChdbWarehouse.insert`).
"""

from __future__ import annotations

import hashlib
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
    base_type,
    bind_params,
    check_dedup_token,
    check_identifier,
    error_from_message,
)


def _converter(type_name: str) -> Any:
    base = base_type(type_name)
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


INSERT_SETTINGS = "date_time_input_format = 'best_effort', input_format_null_as_default = 0"
"""Settings of every insert. best_effort reads ISO 8601 text to the microsecond, in UTC with a `Z`
as the worker writes it ('2026-03-01T12:00:00.5Z', no fraction when it is zero; the sink passes
it through from the wire) or with an offset as orjson writes it ('2026-03-01T12:00:00.5+00:00'). null_as_default = 0 makes a
null in a column that is not Nullable an error instead of a silent 0 (a missing cost)."""


def encode_json_compact_columns(rows: Sequence[Sequence[Any]]) -> bytes:
    """JSONCompactColumns body, one array per column, rows given in column order: values that
    are already JSON (the sink's rows straight from the wire) pass through; Decimals become
    strings, datetimes ISO 8601 text (naive ones are read as UTC), maps objects."""
    # One orjson call for the block: a call per row cost 2.1 us a row against 0.2 for the whole
    # block, and the engine reads a column at a time a little faster (bench/sink_breakdown.py).
    return orjson.dumps(list(zip(*rows, strict=True)), default=_json_default)


def without_low_cardinality(type_name: str) -> str:
    """A column type with every LowCardinality(...) wrapper taken off, however deep:
    `Map(LowCardinality(String), String)` -> `Map(String, String)`."""
    marker = "LowCardinality("
    while (start := type_name.find(marker)) >= 0:
        depth, end = 1, start + len(marker)
        while depth:
            depth += {"(": 1, ")": -1}.get(type_name[end], 0)
            end += 1
        type_name = type_name[:start] + type_name[start + len(marker) : end - 1] + type_name[end:]
    return type_name


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
        # (database, table, columns) -> the temporary table its inserts are parsed into, or None
        self._staging: dict[tuple[str, str, tuple[str, ...]], str | None] = {}

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
        target = f"`{check_identifier(database)}`.`{check_identifier(table)}`"
        token = "" if dedup_token is None else f", insert_deduplication_token = '{check_dedup_token(dedup_token)}'"
        body = encode_json_compact_columns(rows)
        staging = self._staging_table(database, table, tuple(columns))
        if self._closed:
            raise WarehouseError("warehouse is closed")
        try:
            with self._lock:
                if staging is None:
                    self._send(f"INSERT INTO {target} ({cols}) SETTINGS {INSERT_SETTINGS}{token}", body)
                    return len(rows)
                # Parsed into plain columns first: the engine parses a text value into a
                # LowCardinality column a row at a time, more than half of a priced_events row's
                # cost (7.8 us a row against 4.8 staged, bench/sink_breakdown.py); the INSERT ...
                # SELECT converts whole columns. Emptied before, so nothing left over from a
                # failed insert goes in; one thread, so a large block is cut the same way each time.
                self._session.query(f"TRUNCATE TABLE {staging}", "CSV")
                try:
                    self._send(f"INSERT INTO {staging} ({cols}) SETTINGS {INSERT_SETTINGS}", body)
                    self._session.query(
                        f"INSERT INTO {target} ({cols}) SETTINGS max_threads = 1{token} SELECT {cols} FROM {staging}",
                        "CSV",
                    )
                finally:
                    self._session.query(f"TRUNCATE TABLE {staging}", "CSV")
        except RuntimeError as exc:
            raise error_from_message(str(exc)) from exc
        return len(rows)

    def _send(self, sql: str, body: bytes) -> None:
        with self._session.send_insert(sql, "JSONCompactColumns") as inserter:
            inserter.append(body)
            inserter.finish()

    def _staging_table(self, database: str, table: str, columns: tuple[str, ...]) -> str | None:
        """The temporary table (in this session, in memory) that inserts of `columns` into
        `table` are parsed into: the same columns without LowCardinality. None when no column
        is LowCardinality, or the table or a column is missing (inserted directly). Made once
        per table and column list, of the table's types when first used (the migrations,
        which run before any insert, never change a column's type)."""
        key = (database, table, columns)
        if key not in self._staging:
            types = {
                row["name"]: row["type"]
                for row in self.query(
                    "SELECT name, type FROM system.columns WHERE database = {db:String} AND table = {t:String}",
                    {"db": database, "t": table},
                )
            }
            if not all(c in types for c in columns):
                return None  # inserted directly: the engine names what is missing (not kept, a migration may add it)
            plain = [without_low_cardinality(types[c]) for c in columns]
            name = None
            if plain != [types[c] for c in columns]:
                # named for its key: two threads making the same one make the same table
                name = "agentledger_staging_" + hashlib.sha256(repr(key).encode()).hexdigest()[:16]
                structure = ", ".join(f"`{c}` {t}" for c, t in zip(columns, plain, strict=True))
                self.command(f"CREATE TEMPORARY TABLE IF NOT EXISTS {name} ({structure}) ENGINE = Memory")
            self._staging[key] = name
        return self._staging[key]

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._session.close()
