"""The HTTP transport: spool rows posted in order to the API's `POST /v1/events`.

For agents that cannot reach Kafka (`configure(transport="http", api_url=..., api_key=...)`).
The delivery thread posts the oldest spooled events in batches (at most `http_batch_size`
events and `http_max_bytes` bytes) over one keep-alive connection and waits for the answer,
which the API gives once Kafka has acknowledged the accepted events. Then:

- 200: rows of accepted events are deleted (delivered); rows of rejected ones (per-item
  validation errors, which can never succeed) are deleted and counted `invalid`, logged with
  field names and error codes only, never values.
- 422 / 403 `batch_rejected`: every event of the batch was refused item by item: the same.
- 413: the batch is halved and tried again; a single event the server finds too big is
  refused for good (`invalid`).
- 5xx (503: Kafka unavailable), 429, timeouts, connection errors: everything stays in the
  spool and is posted again after a backoff (0.5 s doubling to 30 s, or the server's
  Retry-After). Re-posting is safe: the worker counts an event_id once.
- 401, 403 (the key), other 4xx: logged as errors and retried every `http_auth_retry_s`,
  since a key can be fixed or a route deployed; nothing is deleted.
"""

from __future__ import annotations

import email.utils
import logging
import time
from typing import Any

import httpx
import orjson

from ingest.config import IngestConfig
from ingest.spool import Spool, SpoolRow
from ingest.stats import Stats

log = logging.getLogger("agentledger.ingest")

EVENTS_PATH = "/v1/events"
MAX_BACKOFF_S = 30.0
MAX_RETRY_AFTER_S = 300.0


def events_url(api_url: str) -> str:
    """`https://host[/prefix]` or the full `.../v1/events` URL, as given."""
    url = api_url.rstrip("/")
    return url if url.endswith(EVENTS_PATH) else url + EVENTS_PATH


def retry_after_s(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_S)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    delta = when.timestamp() - (time.time() if now is None else now)
    return min(max(delta, 0.0), MAX_RETRY_AFTER_S)


def describe_rejections(rejected: list[dict[str, Any]]) -> str:
    """`field: code` of each refused item, never the values (tags could hold anything)."""
    seen: dict[str, None] = {}
    for item in rejected:
        for error in item.get("errors") or ():
            seen[f"{error.get('field') or '-'}: {error.get('code') or 'invalid'}"] = None
    return "; ".join(list(seen)[:10]) or "no details"


class HttpSender:
    """The `Sender` of `transport="http"`: synchronous POSTs from the delivery thread."""

    def __init__(
        self, config: IngestConfig, stats: Stats, spool: Spool, transport: httpx.BaseTransport | None = None
    ) -> None:
        assert config.api_url is not None
        self.config = config
        self.stats = stats
        self.spool = spool
        self.url = events_url(config.api_url)
        self.down = False
        self.deadline: float | None = None
        self._transport = transport
        """Tests pass an `httpx.MockTransport`; None is the network."""
        self._client: httpx.Client | None = None
        self._batch_size = config.http_batch_size
        """Shrinks after a 413, grows back after successes."""
        self._backoff = 0.5
        self._next_try = 0.0
        self._last_problem: str | None = None
        self._held: set[int] = set()
        """Rows appended as not waiting that an outage held back: they count as replayed."""

    # -- Sender ----------------------------------------------------------------------

    def pump(self) -> int:
        if self.spool.count == 0 or time.monotonic() < self._next_try:
            return 0
        rows = self._batch()
        if not rows:
            return 0
        return self._post(rows)

    def in_flight(self) -> int:
        return 0  # a POST is answered before pump() returns

    def wait(self, timeout: float) -> None:
        time.sleep(timeout)

    def shutdown(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def abandon_after_fork(self) -> None:
        # the parent's pooled sockets are the parent's: drop them unclosed
        self._client = None

    # -- internals -------------------------------------------------------------------

    def _make_client(self) -> httpx.Client:
        headers = {"Content-Type": "application/json", "User-Agent": "agentledger-hook"}
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        return httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(self.config.http_timeout_s, connect=5.0),
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1, keepalive_expiry=60.0),
            transport=self._transport,
        )

    def _batch(self) -> list[SpoolRow]:
        rows = self.spool.read_after(0, self._batch_size)
        size, taken = 2, 0
        for row in rows:
            size += len(row.value) + 1
            if taken and size > self.config.http_max_bytes:
                break
            taken += 1
        return rows[:taken]

    def _timeout(self) -> httpx.Timeout | None:
        if self.deadline is None:
            return None  # the client's own
        left = max(self.deadline - time.monotonic(), 0.1)
        return httpx.Timeout(min(self.config.http_timeout_s, left), connect=min(5.0, left))

    def _post(self, rows: list[SpoolRow]) -> int:
        if self._client is None:
            self._client = self._make_client()
        body = b"[" + b",".join(row.value for row in rows) + b"]"
        try:
            timeout = self._timeout()
            if timeout is None:
                response = self._client.post(self.url, content=body)
            else:
                response = self._client.post(self.url, content=body, timeout=timeout)
        except httpx.TimeoutException as exc:
            self._unavailable(f"no answer from {self.url} ({type(exc).__name__})", None, rows)
            return 0
        except httpx.RequestError as exc:
            self._unavailable(f"cannot reach {self.url} ({type(exc).__name__}: {exc})", None, rows)
            return 0
        status = response.status_code
        if status == 200:
            return self._answered(rows, self._json(response))
        error = self._json(response).get("error")
        error = error if isinstance(error, dict) else {}
        if status in (403, 422) and error.get("code") == "batch_rejected":
            rejected = error.get("rejected")
            self._answered(rows, {"accepted": [], "rejected": rejected if isinstance(rejected, list) else []})
            return len(rows)
        if status == 413:
            return self._too_large(rows)
        if status >= 500 or status == 429:
            wait = retry_after_s(response.headers.get("Retry-After"))
            self._unavailable(f"{self.url} answered {status} {error.get('code') or ''}".rstrip(), wait, rows)
            return 0
        self._refused(status, error, rows)
        return 0

    @staticmethod
    def _json(response: httpx.Response) -> dict[str, Any]:
        try:
            doc = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            return {}
        return doc if isinstance(doc, dict) else {}

    def _answered(self, rows: list[SpoolRow], result: dict[str, Any]) -> int:
        """Delete the rows the server decided about: accepted (delivered) or rejected (invalid)."""
        accepted = {item.get("index") for item in result.get("accepted") or () if isinstance(item, dict)}
        rejected = [item for item in result.get("rejected") or () if isinstance(item, dict)]
        refused = {item.get("index") for item in rejected}
        done = [row for i, row in enumerate(rows) if i in accepted or i in refused]
        self.spool.delete([row.id for row in done], sum(len(row.value) for row in done))
        delivered = [row for i, row in enumerate(rows) if i in accepted]
        if delivered:
            self.stats.add("delivered", len(delivered))
            replayed = sum(
                1 for row in delivered if row.waited or row.id <= self.spool.inherited_upto or row.id in self._held
            )
            if replayed:
                self.stats.add("replayed", replayed)
        self._held.difference_update(row.id for row in done)
        if rejected:
            self.stats.add("invalid", len(rejected))
            log.error(
                "agentledger: the API refused %d events for good (%s); they are dropped",
                len(rejected),
                describe_rejections(rejected),
            )
        if len(done) < len(rows):
            # an answer that does not cover the batch: keep the rest and post it again
            rest = [row for i, row in enumerate(rows) if i not in accepted and i not in refused]
            self._unavailable(f"{self.url} answered for {len(done)} of {len(rows)} events", None, rest)
            return len(done)
        self._recovered()
        if self._batch_size < self.config.http_batch_size:
            self._batch_size = min(self._batch_size * 2, self.config.http_batch_size)
        return len(rows)

    def _too_large(self, rows: list[SpoolRow]) -> int:
        if len(rows) > 1:
            self._batch_size = max(len(rows) // 2, 1)
            log.warning(
                "agentledger: %s found %d events too large; posting %d at a time", self.url, len(rows), self._batch_size
            )
            return 1  # progress: try again at once, smaller
        row = rows[0]
        self.spool.delete([row.id], len(row.value))
        self.stats.add("invalid")
        log.error("agentledger: %s refused one event of %d bytes as too large; it is dropped", self.url, len(row.value))
        return 1

    def _unavailable(self, problem: str, wait: float | None, rows: list[SpoolRow]) -> None:
        self._mark_waiting(rows)
        self.down = True
        delay = wait if wait is not None else self._backoff
        self._backoff = min(self._backoff * 2, MAX_BACKOFF_S)
        self._next_try = time.monotonic() + delay
        if problem != self._last_problem:
            log.warning("agentledger: %s; events wait in %s, next try in %.1fs", problem, self.spool.path, delay)
            self._last_problem = problem

    def _refused(self, status: int, error: dict[str, Any], rows: list[SpoolRow]) -> None:
        self._mark_waiting(rows)
        self.down = True
        self._next_try = time.monotonic() + self.config.http_auth_retry_s
        what = {401: "the API key is missing, unknown or revoked", 403: "the API key lacks the `ingest` scope"}
        log.error(
            "agentledger: %s answered %d (%s: %s); %d events kept in %s, next try in %.0fs",
            self.url,
            status,
            what.get(status, "unexpected answer"),
            error.get("code") or "no code",
            self.spool.count,
            self.spool.path,
            self.config.http_auth_retry_s,
        )

    def _mark_waiting(self, rows: list[SpoolRow]) -> None:
        """Events held back by an outage count as spooled (once), like the Kafka path's."""
        fresh = [row.id for row in rows if not row.waited and row.id not in self._held]
        if fresh:
            self._held.update(fresh)
            self.stats.add("spooled", len(fresh))

    def _recovered(self) -> None:
        if self.down:
            log.warning("agentledger: %s reachable again, replaying the spool", self.url)
        self.down = False
        self._backoff = 0.5
        self._next_try = 0.0
        self._last_problem = None
