from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import orjson
import pytest

from api.migrations import load_migrations
from api.sink import PRICED_EVENT_COLUMNS, block_token, dedup_token, ledger_token_of, priced_event_row
from api.warehouse import WarehouseError, bind_value, check_dedup_token, error_from_message
from api.warehouse.chdb import decode_json_result, encode_json_compact_columns, without_low_cardinality

pytestmark = pytest.mark.unit


def test_bind_value_text_forms():
    assert bind_value(Decimal("0.000000000001")) == "0.000000000001"
    assert bind_value(datetime(2026, 3, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))) == (
        "2026-03-01 12:00:00.000000"
    )
    assert bind_value(None) == "\\N"
    assert bind_value(True) == "true"
    assert bind_value(7) == "7"
    assert bind_value(["a'b", "c\\"]) == "['a\\'b','c\\\\']"
    with pytest.raises(WarehouseError):
        bind_value(1.5)  # floats are never money and never bound


def test_decode_json_result_keeps_decimals_exact():
    payload = (
        b'{"meta":[{"name":"c","type":"Decimal(38, 12)"},{"name":"n","type":"UInt64"},'
        b'{"name":"t","type":"DateTime64(6, \'UTC\')"},{"name":"team","type":"LowCardinality(Nullable(String))"},'
        b'{"name":"z","type":"Nullable(Decimal(38, 12))"}],'
        b'"data":[[123456789012345678.123456789012, "18446744073709551615", "2026-03-01 12:00:00.500000", null, 3]]}'
    )
    [row] = decode_json_result(payload)
    assert row["c"] == Decimal("123456789012345678.123456789012")
    assert isinstance(row["c"], Decimal)
    assert row["n"] == 18446744073709551615
    assert row["t"] == datetime(2026, 3, 1, 12, 0, 0, 500000, tzinfo=UTC)
    assert row["team"] is None
    assert row["z"] == Decimal(3) and isinstance(row["z"], Decimal)


def test_encode_json_compact_columns_sends_decimals_as_strings():
    plus_two = timezone(timedelta(hours=2))
    body = encode_json_compact_columns(
        [
            (Decimal("1E-12"), datetime(2026, 1, 1, tzinfo=UTC), {"k": "v"}),
            ("0E-12", datetime(2026, 1, 1, 14, 0, 0, 5, tzinfo=plus_two), None),
        ]
    )
    assert orjson.loads(body) == [
        ["0.000000000001", "0E-12"],
        ["2026-01-01T00:00:00+00:00", "2026-01-01T14:00:00.000005+02:00"],
        [{"k": "v"}, None],
    ]


def test_without_low_cardinality_unwraps_every_level():
    assert without_low_cardinality("LowCardinality(Nullable(String))") == "Nullable(String)"
    assert without_low_cardinality("Map(LowCardinality(String), String)") == "Map(String, String)"
    assert without_low_cardinality("Array(LowCardinality(String))") == "Array(String)"
    nested = "Tuple(a LowCardinality(String), b Map(LowCardinality(String), LowCardinality(Nullable(String))))"
    assert without_low_cardinality(nested) == "Tuple(a String, b Map(String, Nullable(String)))"
    assert without_low_cardinality("DateTime64(6, 'UTC')") == "DateTime64(6, 'UTC')"


def test_error_codes_decide_retry():
    assert error_from_message("Code: 252. DB::Exception: Too many parts").retryable
    assert not error_from_message("Code: 60. DB::Exception: Unknown table").retryable
    assert error_from_message("connection reset", default_retryable=True).retryable


def test_dedup_token_is_checked():
    assert check_dedup_token(dedup_token("t1.priced-events", 2, 10, 19)) == "t1.priced-events:2:10:19"
    with pytest.raises(WarehouseError):
        check_dedup_token("x' , max_threads=1")


def test_block_token_names_the_offsets_of_each_partition():
    topic = "t1.priced-events"
    assert block_token(topic, [(2, 10, 19)]) == dedup_token(topic, 2, 10, 19) == "t1.priced-events:2:10:19"
    assert block_token(topic, [(0, 5, 9), (2, 10, 19)]) == "t1.priced-events:0:5:9:2:10:19"
    # other records, another token: a partition more, or one span longer
    assert block_token(topic, [(0, 5, 9), (1, 0, 0), (2, 10, 19)]) != block_token(topic, [(0, 5, 9), (2, 10, 19)])
    assert block_token(topic, [(0, 5, 9), (2, 10, 20)]) != block_token(topic, [(0, 5, 9), (2, 10, 19)])
    # many partitions: a digest of the spans, still a valid token with room for what is appended to it
    many = [(p, 10**12, 10**12 + 9999) for p in range(64)]
    token = block_token(topic, many)
    assert token != block_token(topic, many[:-1])
    ledger = ledger_token_of(token, [("e" * 32,)])
    assert check_dedup_token(token) == token and check_dedup_token(f"{ledger}:rollup_hourly")


def test_priced_event_row_covers_every_column(priced_event_factory):
    priced = priced_event_factory(cost="1.5", team=None, tags={"env": "prod"})
    row = dict(zip(PRICED_EVENT_COLUMNS, priced_event_row(priced, "t.priced-events", 1, 42), strict=True))
    assert row["cost"] == Decimal("1.5")
    assert row["team"] is None
    assert row["kind"] == "llm_call"
    assert row["tags"] == {"env": "prod"}
    assert (row["kafka_topic"], row["kafka_partition"], row["kafka_offset"]) == ("t.priced-events", 1, 42)
    assert row["event_id"] == priced.event.event_id


def test_migrations_are_numbered_and_split():
    migrations = load_migrations()
    assert [m.version for m in migrations] == sorted(m.version for m in migrations)
    assert migrations[0].name == "0001_priced_events.sql"
    assert all("{database:Identifier}" in s for s in migrations[0].statements)


def test_clickhouse_url_selects_the_server_adapter_and_a_dead_server_is_retryable(tmp_path):
    # No ClickHouse server runs here: this proves the selection and the error mapping only.
    from agentledger.settings import Settings
    from api.warehouse import open_warehouse

    settings = Settings(clickhouse_url="http://127.0.0.1:1/default", chdb_path=tmp_path / "unused")
    with pytest.raises(WarehouseError) as info:
        open_warehouse(settings)
    assert info.value.retryable
    assert not (tmp_path / "unused").exists()  # chDB was not opened


def test_the_server_adapter_refuses_what_a_column_cannot_hold_before_sending():
    # clickhouse-connect failing mid-body reads as a lost connection, retried for ever
    from api.warehouse.clickhouse import insert_converter

    money, when = insert_converter("Decimal(38, 12)"), insert_converter("Nullable(DateTime64(6, 'UTC'))")
    assert money("0E-12") == Decimal(0) and isinstance(money("1.5"), Decimal)
    assert when("2026-03-01T14:00:00.000005+02:00") == datetime(2026, 3, 1, 12, 0, 0, 5, tzinfo=UTC)
    assert when(None) is None
    assert insert_converter("LowCardinality(Nullable(String))")(None) is None
    refused = [
        ("Decimal(38, 12)", "1.5e400"),
        ("Decimal(38, 12)", "12.5.3"),
        ("Decimal(38, 12)", None),
        ("UInt32", 2**32),
        ("UInt64", -3),
        ("UInt64", "5"),
        ("FixedString(32)", "a" * 33),
        ("Map(LowCardinality(String), String)", {"k": 1}),
        ("DateTime64(6, 'UTC')", "garbage"),
    ]
    for type_name, value in refused:
        with pytest.raises((ValueError, TypeError, ArithmeticError)):
            insert_converter(type_name)(value)
