"""The scope preview without Kafka: records fed as the uncommitted reader would see them, the
committed state in a dict as the agent's table holds it."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest

from agentledger.settings import Settings
from processors.budget import BudgetBook, Usage
from processors.scope_preview import ScopePreview, apply_scope_item
from schemas.budgets import BudgetPolicy, Scope, Signal

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 29, 12, tzinfo=UTC)
POLICY = BudgetPolicy(policy_id="team-cap", scope=(Scope.TEAM,), limit_tokens=1000, thresholds=(Decimal(1),))
SVAL = "team=blue"


class Publisher:
    def __init__(self) -> None:
        self.sent: dict[tuple[str, str], Signal] = {}

    def publish(self, signal: Signal) -> bool:
        key = (signal.signal_id, signal.session_id)
        if key in self.sent:
            return False
        self.sent[key] = signal
        return True

    def already_sent(self, signal_id: str, session_id: str) -> bool:
        return (signal_id, session_id) in self.sent


def item(event_id: str, session: str, tokens: int) -> dict[str, Any]:
    return {
        "p": [POLICY.policy_id],
        "s": session,
        "e": event_id,
        "m": "gpt-4o",
        "at": NOW.isoformat(),
        "now": NOW.isoformat(),
        "late": False,
        "u": Usage(tokens=tokens).to_json(),
    }


def record(*items: dict[str, Any]) -> bytes:
    return orjson.dumps({"sv": SVAL, "items": list(items)})


def preview(store: dict[str, Any]) -> tuple[ScopePreview, Publisher]:
    publisher = Publisher()
    p = ScopePreview(
        Settings(topic_prefix="unit."),
        load_state=store.get,
        policies=lambda: {POLICY.policy_id: POLICY},
        publisher=publisher,
        now=lambda: NOW,
    )
    p.set_owned(frozenset({0}))
    return p, publisher


def commit(store: dict[str, Any], items: list[dict[str, Any]]) -> None:
    """What the agent does with committed records: apply them to the table's state."""
    book = BudgetBook(loader=store.get)
    for i in items:
        apply_scope_item(book, {POLICY.policy_id: POLICY}, SVAL, i, 0)
    for key, (state, _) in book.take_dirty().items():
        store[key] = state.to_json()


def test_a_limit_reached_by_uncommitted_records_signals_every_session_once() -> None:
    p, publisher = preview({})
    p.on_record(0, 10, record(item("e1", "s1", 400), item("e2", "s2", 400)))
    assert publisher.sent == {}
    p.on_record(0, 11, record(item("e3", "s1", 200)))
    assert sorted(s for _, s in publisher.sent) == ["s1", "s2"]
    assert {sig.spent_tokens for sig in publisher.sent.values()} == {1000}
    assert {sig.trigger_event_id for sig in publisher.sent.values()} == {"e3"}
    p.on_record(0, 12, record(item("e4", "s3", 10)))  # a session joining the breached scope
    assert sorted(s for _, s in publisher.sent) == ["s1", "s2", "s3"]


def test_a_replayed_record_after_an_abort_counts_once() -> None:
    p, publisher = preview({})
    batch = [item(f"e{i}", "s1", 150) for i in range(6)]  # 900 tokens
    p.on_record(0, 10, record(*batch))
    p.on_record(0, 11, record(*batch))  # the same events again: the aborted transaction's replay
    assert publisher.sent == {}
    p.on_record(0, 12, record(item("e9", "s1", 100)))
    assert [sig.spent_tokens for sig in publisher.sent.values()] == [1000]


def test_records_the_agent_has_handled_leave_the_preview_and_state_counts_them_once() -> None:
    store: dict[str, Any] = {}
    p, publisher = preview(store)
    first = [item("e1", "s1", 500), item("e2", "s2", 300)]
    p.on_record(0, 10, record(*first))
    with p.lock:  # the agent: state written, progress reported
        commit(store, first)
        p.handled({0: 10})
    p.on_record(0, 11, record(item("e3", "s2", 150)))  # 950: committed 800 + 150
    assert publisher.sent == {}
    p.on_record(0, 12, record(item("e4", "s3", 50)))
    assert sorted(s for _, s in publisher.sent) == ["s1", "s2", "s3"]
    assert {sig.spent_tokens for sig in publisher.sent.values()} == {1000}


def test_records_of_partitions_the_worker_does_not_own_or_has_handled_are_ignored() -> None:
    p, publisher = preview({})
    p.on_record(1, 10, record(item("e1", "s1", 5000)))  # partition 1 is another worker's
    assert publisher.sent == {}
    with p.lock:
        p.handled({0: 20})
    p.on_record(0, 15, record(item("e2", "s1", 5000)))  # read late: the agent has it already
    assert publisher.sent == {}
    p.set_owned(frozenset({0, 1}))
    p.on_record(1, 11, record(item("e3", "s1", 5000)))
    assert [s for _, s in publisher.sent] == ["s1"]


def test_a_bad_record_or_item_is_skipped() -> None:
    p, publisher = preview({})
    p.on_record(0, 1, b"not json")
    p.on_record(0, 2, orjson.dumps({"sv": SVAL, "items": [{"e": "e1", "u": "bad"}, item("e2", "s1", 1000)]}))
    assert [s for _, s in publisher.sent] == ["s1"]
