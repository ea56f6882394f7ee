"""The test HTTP front itself (tests/api/clickhouse_http.py): it must carry requests, not alter them."""

from __future__ import annotations

import gzip
from urllib.parse import urlencode

import clickhouse_connect
import lz4.frame
import pytest

from tests.api.clickhouse_http import FrontError, parse_call, serve_chdb, set_statement, split_insert


@pytest.mark.unit
def test_query_parameter_and_body_join_with_a_newline_as_the_server_does():
    url = urlencode({"query": "INSERT INTO t FORMAT Native", "database": "d", "param_x": "a\\tb", "max_threads": "2"})
    call = parse_call(url, {"content-encoding": "lz4"}, lz4.frame.compress(b"\x01\x02"))
    # an insert with bound parameters goes to the engine whole: send_insert takes none
    assert (call.statement, call.insert_format) == (b"INSERT INTO t FORMAT Native\n\x01\x02", None)
    assert call.params == {"x": "a\\tb"}  # passed on as received: the engine unescapes
    assert call.settings == {"max_threads": "2"}
    assert call.database == "d" and call.default_format == "TabSeparated" and call.session_id is None
    only_body = parse_call("default_format=JSON", {"content-encoding": "gzip"}, gzip.compress(b"SELECT 1"))
    assert only_body.statement == b"SELECT 1" and only_body.default_format == "JSON"


@pytest.mark.unit
def test_an_insert_is_cut_after_the_line_ending_in_its_format_clause():
    data = b"\n\t FORMAT JSON\n\xff\x00"  # binary data that starts with whitespace, even text
    assert split_insert(b"INSERT INTO `d`.`t` (`a`, `b`) FORMAT Native\n" + data) == (
        b"INSERT INTO `d`.`t` (`a`, `b`)",
        "Native",
        data,
    )
    assert split_insert(b"  insert into t\nSETTINGS x = 1\nformat CSV\r\n1,2\n") == (
        b"insert into t\nSETTINGS x = 1",
        "CSV",
        b"1,2\n",
    )
    call = parse_call(urlencode({"query": "INSERT INTO t FORMAT RowBinary"}), {}, b"\x01")
    assert (call.statement, call.insert_format, call.data) == (b"INSERT INTO t", "RowBinary", b"\x01")
    for whole in (b"INSERT INTO t VALUES (1)\n(2)", b"SELECT 1 FORMAT Native\n", b"INSERT INTO t SELECT 1"):
        assert split_insert(whole) is None


@pytest.mark.unit
def test_form_fields_carry_the_query_and_parameters():
    body = (
        b'--b\r\nContent-Disposition: form-data; name="query"\r\n\r\nSELECT {ids:Array(String)}\r\n'
        b"--b\r\nContent-Disposition: form-data; name=\"param_ids\"\r\n\r\n['a','b']\r\n--b--\r\n"
    )
    call = parse_call("session_id=s1", {"content-type": "multipart/form-data; boundary=b"}, body)
    assert call.statement == b"SELECT {ids:Array(String)}"
    assert call.params == {"ids": "['a','b']"}
    assert call.settings == {} and call.session_id == "s1"


@pytest.mark.unit
def test_what_the_front_cannot_carry_is_refused_not_guessed():
    with pytest.raises(FrontError):
        parse_call("compress=1&query=SELECT%201", {}, b"")
    with pytest.raises(FrontError):
        parse_call("query=SELECT%201", {"content-encoding": "br"}, b"x")
    with pytest.raises(FrontError):
        parse_call("max_threads%3D1%3B%20DROP=1", {}, b"SELECT 1")
    assert set_statement({"insert_deduplication_token": "a'b\\"}) == "SET `insert_deduplication_token` = 'a\\'b\\\\'"


@pytest.mark.integration
def test_url_settings_last_one_request_and_a_session_keeps_its_own(tmp_path):
    with serve_chdb(tmp_path / "chdb") as (url, front):
        client = clickhouse_connect.get_client(dsn=url, session_id="s1")
        other = clickhouse_connect.get_client(dsn=url, autogenerate_session_id=False)
        try:
            setting = "SELECT value FROM system.settings WHERE name = 'max_threads'"
            assert client.command(setting, settings={"max_threads": 3}) == 3
            default = client.command(setting)
            assert default != 3  # the URL setting was for that request only
            client.command("SET max_threads = 5")  # a SET in a session stays in the session
            client.command("CREATE TEMPORARY TABLE tmp (x UInt8)")
            client.command("INSERT INTO tmp VALUES (7)")
            assert client.command(setting) == 5 and client.command("SELECT x FROM tmp") == 7
            assert other.command(setting) == default  # ... and nowhere else
            with pytest.raises(Exception, match="UNKNOWN_TABLE"):
                other.command("SELECT x FROM tmp")
            assert client.command("SELECT currentDatabase()", settings={}) == "default"
            assert other.command("SELECT currentDatabase()") == "default"
        finally:
            client.close()
            other.close()
        assert front.wire["requests"] > 0
