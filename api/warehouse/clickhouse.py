"""ClickHouse server through clickhouse-connect (HTTP), selected by CLICKHOUSE_URL.

Same SQL as chDB: `{name:Type}` placeholders are bound server-side by clickhouse-connect
when parameters are a dict. Values are pre-rendered by `bind_value` so both adapters send
identical text. Not exercised by the test suite (no server here); see tests/api for what is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.exceptions import ClickHouseError, OperationalError

from api.warehouse import (
    Params,
    Row,
    WarehouseError,
    bind_params,
    check_dedup_token,
    check_identifier,
    error_from_message,
)


def _wrap(exc: Exception) -> WarehouseError:
    # A lost connection is worth retrying; a server error is judged by its code.
    return error_from_message(str(exc), default_retryable=isinstance(exc, OperationalError))


class ClickHouseWarehouse:
    backend = "clickhouse"

    def __init__(self, url: str) -> None:
        try:
            self._client = clickhouse_connect.get_client(dsn=url)
        except ClickHouseError as exc:
            raise _wrap(exc) from exc

    def command(self, sql: str, params: Params | None = None) -> None:
        try:
            self._client.command(sql, parameters=bind_params(params))
        except ClickHouseError as exc:
            raise _wrap(exc) from exc

    def query(self, sql: str, params: Params | None = None) -> list[Row]:
        try:
            return list(self._client.query(sql, parameters=bind_params(params)).named_results())
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
            self._client.insert(
                check_identifier(table),
                [list(r) for r in rows],
                column_names=list(columns),
                database=check_identifier(database),
                settings=settings,
            )
        except ClickHouseError as exc:
            raise _wrap(exc) from exc
        return len(rows)

    def close(self) -> None:
        self._client.close()
