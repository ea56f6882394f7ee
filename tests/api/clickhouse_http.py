"""A test-only HTTP front for chDB: the part of ClickHouse's HTTP interface clickhouse-connect uses.

No ClickHouse server can be installed here, so the server adapter (api/warehouse/clickhouse.py)
is tested against this front instead. It does not interpret SQL: every request is carried to a
chDB connection (the ClickHouse engine, in this process) and the engine's answer is carried back.

What it does, as ClickHouse's HTTP handler does:

- the statement is the `query` URL parameter and the request body, joined by a newline, or the
  `query` field of a multipart form. The one place the front looks into a statement: when it
  starts with INSERT and a line of it ends in `FORMAT <name>` (clickhouse-connect's inserts:
  the statement, then the data), it is cut after that line and the rest streamed through chDB's
  `send_insert(head, name)`, because chDB takes an insert's format apart from its text and cuts
  data that is inline in a statement at about 256 KiB (a server streams it);
- `param_<name>` URL parameters or form fields are bound by the engine as `{name:Type}` values;
- every other URL parameter that is not an HTTP-interface parameter is a setting, applied to
  that one request (`SET` before, the previous values restored after);
- `database` is the current database, `default_format` the output format when the statement
  has no FORMAT clause (else TabSeparated), `query_id` is echoed;
- `session_id` keeps one chDB connection per session (its `SET`s, temporary tables and current
  database persist); a request without one gets a fresh connection;
- request bodies in Content-Encoding lz4 (frame), zstd, gzip or deflate, and chunked transfer
  encoding, are decoded; with `enable_http_compression` on (the URL's value, else the engine's
  default at start-up, which is on in chDB) the response is compressed in the first of the
  client's Accept-Encoding that is one of those;
- errors are HTTP 500 with `X-ClickHouse-Exception-Code` and the engine's own
  `Code: N. DB::Exception: ...` text; `/ping` and `/` answer `Ok.`;
- headers: X-ClickHouse-Summary (read/written rows and bytes, elapsed, from the engine),
  X-ClickHouse-Query-Id, X-ClickHouse-Timezone, X-ClickHouse-Server-Display-Name.

What it does not do: authentication (any user is accepted), X-ClickHouse-Format (knowing the
output format would need reading the statement), `client_protocol_version` (the engine writes
Native without block info, the driver's probe notices and uses protocol 0, as behind a proxy
that drops the parameter), ClickHouse's own block compression (`compress`/`decompress`=1 are
refused), external data tables, progress headers, streaming (a response is sent once the
statement has finished, as with `wait_end_of_query=1`), HTTP status codes other than 500 for
errors, `readonly` for GET requests, and concurrent requests in one session are serialised
instead of refused. Data inline
in a statement (`INSERT ... VALUES` in the body, or with bound parameters) goes to the engine as
statement text, which chDB cuts at about 256 KiB.
"""

from __future__ import annotations

import collections
import contextlib
import gzip
import json
import re
import socket
import threading
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import lz4.frame
from backports import zstd
from chdb import session as chdb_session

# Parameters ClickHouse's HTTP handler reads itself; every other one is a setting.
HTTP_PARAMETERS = frozenset(
    {
        "query", "compress", "decompress", "user", "password", "quota_key", "query_id", "stacktrace", "role",
        "buffer_size", "wait_end_of_query", "session_id", "session_timeout", "session_check",
        "client_protocol_version", "close_session", "database", "default_format",
    }
)  # fmt: skip
_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CODE = re.compile(r"Code: (\d+)\.")
# An INSERT's text up to its FORMAT clause, ending a line: the data begins after that newline.
_INSERT_HEAD = re.compile(
    r"^\s*(?P<head>INSERT\s.*\S)\s+FORMAT\s+(?P<format>[A-Za-z][A-Za-z0-9_]*)[ \t]*\r?$", re.S | re.I
)
_HEAD_LIMIT = 1 << 20
DISPLAY_NAME = "chdb-http-front"


class FrontError(Exception):
    """A request this front cannot carry (not an engine error): answered with HTTP 501/400."""

    def __init__(self, message: str, status: int = 501) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Call:
    """One HTTP request, as the engine will see it."""

    statement: bytes
    """The statement with any inline data; for a streamed insert, its text before FORMAT."""
    insert_format: str | None
    """Set for a streamed insert: the format of `data`."""
    data: bytes
    params: dict[str, str]
    settings: dict[str, str]
    database: str | None
    default_format: str
    session_id: str | None
    query_id: str
    accept_encoding: tuple[str, ...]


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


# -- request decoding (pure) ------------------------------------------------------------------


def decode_body(body: bytes, content_encoding: str | None) -> bytes:
    encoding = (content_encoding or "").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding == "lz4":
        return lz4.frame.decompress(body)
    if encoding == "zstd":
        return zstd.decompress(body)
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    raise FrontError(f"Content-Encoding {encoding!r} is not supported by the test front")


def encode_body(body: bytes, encoding: str) -> bytes:
    if encoding == "lz4":
        return lz4.frame.compress(body)
    if encoding == "zstd":
        return zstd.compress(body)
    if encoding == "gzip":
        return gzip.compress(body)
    return zlib.compress(body)


def response_encoding(accept: tuple[str, ...]) -> str | None:
    for name in accept:
        if name in ("lz4", "zstd", "gzip", "deflate"):
            return name
    return None


def form_fields(content_type: str, body: bytes) -> dict[str, str]:
    """The text fields of a multipart/form-data body; a file field (external data) is refused."""
    message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    fields: dict[str, str] = {}
    for part in message.iter_parts():  # type: ignore[attr-defined]
        if part.get_filename() is not None:
            raise FrontError("external data tables are not supported by the test front")
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True) or b""
        fields[str(name)] = payload.decode()
    return fields


def parse_call(query_string: str, headers: dict[str, str], body: bytes) -> Call:
    """A request's statement, bound parameters, settings and HTTP-interface parameters."""
    url = dict(parse_qsl(query_string, keep_blank_values=True))
    for flag in ("compress", "decompress"):
        if url.get(flag, "0") not in ("0", "false", ""):
            raise FrontError(f"{flag}=1 (ClickHouse block compression) is not supported by the test front")
    body = decode_body(body, headers.get("content-encoding"))
    content_type = headers.get("content-type", "")
    params = {k[len("param_") :]: v for k, v in url.items() if k.startswith("param_")}
    query = url.get("query", "")
    if content_type.startswith("multipart/form-data"):
        fields = form_fields(content_type, body)
        query = fields.pop("query", query)
        params.update({k[len("param_") :]: v for k, v in fields.items() if k.startswith("param_")})
        body = b""
    statement = (query.encode() + b"\n" + body) if query and body else (query.encode() or body)
    insert = None if params else split_insert(statement)
    if insert is not None:
        statement, insert_format, data = insert
    else:
        insert_format, data = None, b""
    settings = {k: v for k, v in url.items() if k not in HTTP_PARAMETERS and not k.startswith("param_")}
    for name in settings:
        if not _SETTING_NAME.match(name):
            raise FrontError(f"not a setting name: {name[:64]!r}", status=400)
    accept = tuple(e.strip().lower() for e in headers.get("accept-encoding", "").split(",") if e.strip())
    return Call(
        statement=statement,
        insert_format=insert_format,
        data=data,
        params=params,
        settings=settings,
        database=url.get("database") or None,
        default_format=url.get("default_format") or "TabSeparated",
        session_id=url.get("session_id") or None,
        query_id=url.get("query_id") or str(uuid.uuid4()),
        accept_encoding=accept,
    )


def split_insert(statement: bytes) -> tuple[bytes, str, bytes] | None:
    """(INSERT text without FORMAT, format, data) when the statement is an INSERT whose FORMAT
    clause ends a line; None for anything else (sent to the engine whole)."""
    if statement[:4096].lstrip()[:6].upper() != b"INSERT":
        return None
    end = statement.find(b"\n")
    while 0 <= end < _HEAD_LIMIT:
        try:
            match = _INSERT_HEAD.match(statement[:end].decode())
        except UnicodeDecodeError:
            return None
        if match is not None:
            return match.group("head").encode(), match.group("format"), statement[end + 1 :]
        end = statement.find(b"\n", end + 1)
    return None


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def set_statement(settings: dict[str, str]) -> str:
    """One SET for the request's settings; names were checked, values are string literals,
    which the engine converts to each setting's type (as it does for URL parameters)."""
    return "SET " + ", ".join(f"`{name}` = {_quote(value)}" for name, value in settings.items())


def error_answer(message: str, version: str) -> Answer:
    match = _CODE.search(message)
    headers = {"Content-Type": "text/plain; charset=UTF-8"}
    if match:
        headers["X-ClickHouse-Exception-Code"] = match.group(1)
        message = message[match.start() :]  # chDB's streaming insert prefixes its own words
    message = message.strip()
    if f"(version {version})" not in message:
        message += f" (version {version})"
    return Answer(500, f"{message}\n".encode(), headers)


@dataclass(frozen=True)
class _Done:
    """What the engine reports of a finished statement."""

    body: bytes
    rows_read: int
    bytes_read: int
    rows_written: int
    bytes_written: int
    elapsed: float


def _run(session: Any, call: Call) -> _Done:
    if call.insert_format is not None:
        with session.send_insert(call.statement.decode(), call.insert_format) as inserter:
            inserter.append(call.data)
            done = inserter.finish()
        return _Done(b"", 0, 0, done.rows_written, done.bytes_written, done.elapsed)
    result = session.query(call.statement, call.default_format, params=call.params)
    return _Done(
        result.bytes(),
        result.rows_read(),
        result.bytes_read(),
        result.rows_written(),
        result.bytes_written(),
        result.elapsed(),
    )


# -- execution on chDB ----------------------------------------------------------------------


@dataclass
class _Connection:
    session: Any
    lock: threading.Lock = field(default_factory=threading.Lock)


class ChdbFront:
    """The engine side: chDB connections on one data folder, one per HTTP session."""

    def __init__(self, path: Path) -> None:
        self.path = str(path.resolve())
        # Held for the front's lifetime: it keeps the embedded engine up between requests.
        self._anchor = chdb_session.Session(self.path)
        version, tz = self._anchor.query("SELECT version(), timezone()", "TabSeparated").bytes().decode().split("\t")
        self.version, self.timezone = version, tz.strip()
        # The engine's own default (chDB: on; a server: off) decides when the URL does not.
        default = "SELECT value FROM system.settings WHERE name = 'enable_http_compression'"
        self.http_compression = self._anchor.query(default, "TabSeparated").bytes().decode().strip()
        self._sessions: dict[str, _Connection] = {}
        self._sessions_lock = threading.Lock()
        # What went over the wire ("request:lz4", "response:lz4", "form", "chunked", ...):
        # lets tests prove a path of the protocol was taken.
        self.wire: collections.Counter[str] = collections.Counter()

    def count(self, what: str) -> None:
        with self._sessions_lock:
            self.wire[what] += 1

    def _connection(self, session_id: str | None) -> tuple[_Connection, bool]:
        if session_id is None:
            return _Connection(chdb_session.Session(self.path)), True
        with self._sessions_lock:
            conn = self._sessions.get(session_id)
            if conn is None:
                conn = self._sessions[session_id] = _Connection(chdb_session.Session(self.path))
            return conn, False

    def execute(self, call: Call) -> Answer:
        self.count("requests")
        conn, fresh = self._connection(call.session_id)
        try:
            with conn.lock:
                return self._execute(conn.session, call, restore=not fresh)
        finally:
            if fresh:
                conn.session.close()

    def _execute(self, session: Any, call: Call, *, restore: bool) -> Answer:
        settings = call.settings
        try:
            previous = self._snapshot(session, settings) if restore and (settings or call.database) else None
            try:
                if settings:
                    session.query(set_statement(settings), "TabSeparated")
                if call.database:
                    session.query(f"USE `{call.database.replace('`', '``')}`", "TabSeparated")
                done = _run(session, call)
            finally:
                if previous is not None:
                    self._restore(session, *previous)
        except RuntimeError as exc:  # chDB raises ChdbError (a RuntimeError) with the engine's text
            return error_answer(str(exc), self.version)
        if call.insert_format is not None:
            self.count("insert:stream")
        summary = {
            "read_rows": str(done.rows_read),
            "read_bytes": str(done.bytes_read),
            "written_rows": str(done.rows_written),
            "written_bytes": str(done.bytes_written),
            "elapsed_ns": str(int(done.elapsed * 1e9)),
        }
        headers = {
            "Content-Type": "application/octet-stream",
            "X-ClickHouse-Query-Id": call.query_id,
            "X-ClickHouse-Timezone": settings.get("session_timezone") or self.timezone,
            "X-ClickHouse-Server-Display-Name": DISPLAY_NAME,
            "X-ClickHouse-Summary": json.dumps(summary),
        }
        body = done.body
        compress = settings.get("enable_http_compression", self.http_compression) in ("1", "true")
        encoding = response_encoding(call.accept_encoding) if compress else None
        if encoding is not None:
            body = encode_body(body, encoding)
            headers["Content-Encoding"] = encoding
            self.count(f"response:{encoding}")
        return Answer(200, body, headers)

    @staticmethod
    def _snapshot(session: Any, settings: dict[str, str]) -> tuple[str, dict[str, str]]:
        raw = session.query(
            "SELECT currentDatabase() AS db, name, value FROM system.settings WHERE name IN {names:Array(String)}",
            "JSONCompact",
            params={"names": "[" + ",".join(_quote(n) for n in settings) + "]"},
        ).bytes()
        rows = json.loads(raw)["data"] if raw.strip() else []
        database = rows[0][0] if rows else session.query("SELECT currentDatabase()", "TabSeparated").bytes().decode()
        return database.strip(), {name: value for _db, name, value in rows}

    @staticmethod
    def _restore(session: Any, database: str, values: dict[str, str]) -> None:
        if values:
            session.query(set_statement(values), "TabSeparated")
        session.query(f"USE `{database.replace('`', '``')}`", "TabSeparated")

    def close(self) -> None:
        with self._sessions_lock:
            for conn in self._sessions.values():
                with conn.lock:
                    conn.session.close()
            self._sessions.clear()
        self._anchor.close()


# -- HTTP ---------------------------------------------------------------------------------------


def _read_chunked(rfile: Any) -> bytes:
    out = bytearray()
    while True:
        size = int(rfile.readline().split(b";")[0].strip() or b"0", 16)
        if size == 0:
            while rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return bytes(out)
        out += rfile.read(size)
        rfile.readline()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as urllib3's pool expects
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes: without this, Nagle's algorithm holds the
        # second until the client's delayed ACK, 40 ms per request.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # quiet under pytest
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self.server.front.count("chunked")
            return _read_chunked(self.rfile)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, answer: Answer) -> None:
        self.send_response(answer.status)
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer.body)))
        self.end_headers()
        self.wfile.write(answer.body)

    def _handle(self) -> None:
        parts = urlsplit(self.path)
        body = self._body()
        if parts.path == "/ping" or (parts.path == "/" and not parts.query and not body):
            self._send(Answer(200, b"Ok.\n", {"Content-Type": "text/html; charset=UTF-8"}))
            return
        if parts.path != "/":
            self._send(Answer(404, b"There is no handle " + parts.path.encode() + b"\n"))
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        front = self.server.front
        if "content-encoding" in headers:
            front.count(f"request:{headers['content-encoding']}")
        if headers.get("content-type", "").startswith("multipart/form-data"):
            front.count("form")
        try:
            call = parse_call(parts.query, headers, body)
        except FrontError as exc:
            self._send(Answer(exc.status, f"{exc}\n".encode(), {"Content-Type": "text/plain"}))
            return
        self._send(front.execute(call))

    do_GET = _handle
    do_POST = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    front: ChdbFront


@contextlib.contextmanager
def serve_chdb(path: Path) -> Iterator[tuple[str, ChdbFront]]:
    """Serve the chDB folder `path` on an ephemeral 127.0.0.1 port: yields (base URL, front).

    The folder may be open elsewhere in this process too (chDB allows one folder per process,
    shared by all its connections)."""
    front = ChdbFront(path)
    server = _Server(("127.0.0.1", 0), _Handler)
    server.front = front
    thread = threading.Thread(target=server.serve_forever, name="chdb-http-front", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", front
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
        front.close()
