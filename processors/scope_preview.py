"""Signals for budgets wider than a session (team, agent type, ...) before anything commits.

The exact spend of a wide budget is kept by agent `scopes` from `scope-usage` records read
committed: each record counts once, but only after the session worker's transaction commits
(every `commit_interval_s`, 2.8 s by default). A kill that waits for that lets a runaway
team spend for seconds more. So each worker also reads `scope-usage` uncommitted, for the
partitions whose scope budgets it owns, and keeps a preview per scope value: the committed
state (the same table the agent writes) with the records it has not handled yet applied on
top, by the same `BudgetBook`. A limit the preview reaches is signalled at once, with the
`signal_id` the committed path will compute later (consumers treat the second as a repeat).

Why the preview counts nothing twice: a record is in the preview only while its offset is
past what the agent has handled on that partition (the agent reports its progress under
`lock`, together with its state writes); an aborted transaction's records are replaced by
their replay, which carries the same event ids (items are kept by event id); anything the
worker no longer owns is dropped. Alerts (exactly once, with their threshold history) stay
with the committed path; the preview sends only limit and escalation signals.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, cast

import orjson
from confluent_kafka import OFFSET_END, Consumer, KafkaError, TopicPartition

from agentledger.settings import Settings
from processors.budget import BudgetBook, Crossing, Usage, make_signal
from schemas.budgets import BudgetPolicy, Signal
from schemas.topics import SCOPE_USAGE

log = logging.getLogger(__name__)

POLL_S = 0.05
BAD_ITEM = (ValueError, KeyError, TypeError, AttributeError)
"""What `apply_scope_item` raises on an item that is not what the session's worker writes."""


class Publisher(Protocol):
    def publish(self, signal: Signal) -> bool:
        """Send unless this (signal id, session) was sent already; whether it was sent."""
        ...

    def already_sent(self, signal_id: str, session_id: str) -> bool: ...


def parse_scope_record(raw: bytes | None) -> tuple[str, list[dict[str, Any]]] | None:
    """(scope value, usage items) of a scope-usage record, or None if it is not one."""
    try:
        rec = orjson.loads(raw or b"")
        sval, items = rec["sv"], rec["items"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(sval, str) or not isinstance(items, list):
        return None
    return sval, items


def apply_scope_item(
    book: BudgetBook, policies: Mapping[str, BudgetPolicy], sval: str, item: Mapping[str, Any], tag: Any
) -> list[Crossing]:
    """One forwarded event's usage applied to the wide budgets it names; raises one of BAD_ITEM
    on a malformed item."""
    usage = Usage.from_json(item["u"])
    at = datetime.fromisoformat(item["at"])
    seen_at = datetime.fromisoformat(item["now"])
    crossings: list[Crossing] = []
    for policy_id in item["p"]:
        policy = policies.get(policy_id)
        if policy is None or not policy.enabled:
            continue  # deleted or disabled since the session's worker saw it
        crossings += book.record_scope(
            policy, sval, at, usage, tag=tag, now=seen_at, late=bool(item.get("late")), session_id=item["s"]
        )
    return crossings


@dataclass
class _Pending:
    """A scope value's items not yet handled by the agent, by event id, in arrival order."""

    partition: int
    items: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)  # event id -> (offset, item)
    book: BudgetBook | None = None
    """Committed state plus `items`; None when it must be rebuilt."""


class ScopePreview:
    """Reads `scope-usage` uncommitted on a thread and signals wide budgets' limits early."""

    def __init__(
        self,
        settings: Settings,
        *,
        load_state: Callable[[str], Mapping[str, Any] | None],
        policies: Callable[[], Mapping[str, BudgetPolicy]],
        publisher: Publisher,
        now: Callable[[], datetime],
    ) -> None:
        self.topic = settings.topic(SCOPE_USAGE.suffix)
        self.lock = threading.Lock()
        """Held by the agent while it writes scope state and reports progress (`handled`)."""
        self._load_state = load_state
        self._policies = policies
        self._publisher = publisher
        self._now = now
        self._owned: frozenset[int] = frozenset()
        self._handled: dict[int, int] = {}  # partition -> last offset the agent handled
        self._pending: dict[str, _Pending] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._settings = settings
        self._consumer: Consumer | None = None
        self.signals_sent = 0

    # -- called from the agent's loop

    def set_owned(self, partitions: frozenset[int]) -> None:
        """The scope-usage partitions this worker owns now; everything else is forgotten."""
        if partitions == self._owned:
            return
        with self.lock:
            self._owned = partitions
            self._handled = {p: o for p, o in self._handled.items() if p in partitions}
            # the agent's state was (or is being) rebuilt from the changelog: rebuild previews too
            self._pending = {s: p for s, p in self._pending.items() if p.partition in partitions}
            for pending in self._pending.values():
                pending.book = None

    def handled(self, progress: Mapping[int, int]) -> None:
        """The agent has applied records up to these offsets (call with `lock` held, after the state
        writes): their items leave the previews, which are rebuilt from the new state."""
        for partition, offset in progress.items():
            if offset > self._handled.get(partition, -1):
                self._handled[partition] = offset
        for sval in list(self._pending):
            pending = self._pending[sval]
            done = self._handled.get(pending.partition)
            if done is None:
                continue
            before = len(pending.items)
            pending.items = {e: (o, i) for e, (o, i) in pending.items.items() if o > done}
            if len(pending.items) != before:
                pending.book = None
            if not pending.items:
                del self._pending[sval]

    # -- the thread

    def start(self, timeout: float = 30.0) -> None:
        settings = self._settings
        consumer = self._consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                "group.id": f"{settings.worker_id}-scope-preview",  # required by the client, never joined
                "enable.auto.commit": False,
                "isolation.level": "read_uncommitted",
                "fetch.wait.max.ms": 5,
            }
        )
        meta = consumer.list_topics(self.topic, timeout=timeout)
        parts = sorted(meta.topics[self.topic].partitions)
        # from the end: what was written before this worker started is the agent's alone
        consumer.assign([TopicPartition(self.topic, p, OFFSET_END) for p in parts])
        self._thread = threading.Thread(target=self._run, args=(consumer,), name="scope-preview", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._consumer is not None:
            self._consumer.close()

    def _run(self, consumer: Consumer) -> None:
        while not self._stop.is_set():
            try:
                for msg in consumer.consume(500, POLL_S):
                    error = msg.error()
                    if error is not None:
                        if error.code() != KafkaError._PARTITION_EOF:
                            log.warning("scope preview: %s", error)
                        continue
                    self.on_record(cast(int, msg.partition()), cast(int, msg.offset()), msg.value())
            except Exception:  # the preview is an accelerator: the committed path still signals
                log.exception("scope preview failed; going on")

    def on_record(self, partition: int, offset: int, raw: bytes | None) -> None:
        if partition not in self._owned:
            return
        parsed = parse_scope_record(raw)
        if parsed is None:
            return  # the agent logs it
        sval, items = parsed
        policies = self._policies()
        now = self._now()
        with self.lock:
            if offset <= self._handled.get(partition, -1):
                return
            pending = self._pending.get(sval)
            if pending is None or pending.partition != partition:
                pending = self._pending[sval] = _Pending(partition)
            fresh: list[dict[str, Any]] = []
            for item in items:
                event_id = item.get("e") if isinstance(item, dict) else None
                if not isinstance(event_id, str):
                    continue
                if event_id in pending.items:
                    pending.book = None  # a replay of an aborted record: count it once
                else:
                    fresh.append(item)
                pending.items[event_id] = (offset, item)
            if pending.book is None:
                book = BudgetBook(loader=self._load_state)
                replay = [i for _, i in pending.items.values()]
                self._apply(book, policies, sval, replay, now)
                pending.book = book
            else:
                self._apply(pending.book, policies, sval, fresh, now)

    def _apply(
        self,
        book: BudgetBook,
        policies: Mapping[str, BudgetPolicy],
        sval: str,
        items: list[dict[str, Any]],
        now: datetime,
    ) -> None:
        for item in items:
            try:
                crossings = apply_scope_item(book, policies, sval, item, None)
            except BAD_ITEM:
                continue
            for crossing in crossings:
                if crossing.at_limit:
                    self._signal(crossing, item, now)
        book.dirty.clear()

    def _signal(self, crossing: Crossing, item: Mapping[str, Any], now: datetime) -> None:
        for session in crossing.sessions:
            if self._publisher.already_sent(crossing.signal_id, session):
                continue  # a rebuilt preview reaching a limit it (or the agent) signalled already
            signal = make_signal(crossing, session_id=session, now=now, trigger_event_id=item["e"], model=item.get("m"))
            if self._publisher.publish(signal):
                self.signals_sent += 1
