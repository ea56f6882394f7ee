"""Re-pricing: what a time range would cost under another rate card, as adjustment events.

For every settled event in [start, end) (llm_call, tool_call, call_aborted; reservations and
adjustments are not re-priced) the event is priced again with `processors.pricing` under
the new rate card and compared with what it is charged now: its stored cost plus the
re-pricing adjustments already stored for it (tag `adjusts`). A difference becomes an
`adjustment` CostEvent on `cost-events`, dated at the original event (so a closed month's
difference is carried over to the next open month), with the original's attribution,
tags `adjusts=<event_id>` and `rate_card=<hash>`, and no tokens.

Idempotent: the adjustment's event_id is sha256(original event_id, rate card hash), so
re-running the same re-pricing produces the same ids; the pipeline counts each id once,
and an id already stored is reported as `already_applied` and not sent again. Re-pricing
under a second card corrects from what the first left, never from the original alone.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from confluent_kafka import KafkaException, Producer

from agentledger.settings import Settings
from api.producer import producer_config
from api.queries import deduplicated
from api.warehouse import Warehouse
from processors.pricing import price_event
from processors.ratecard import RateCard
from schemas import codec
from schemas.events import CostEvent, EventKind, utcnow
from schemas.topics import COST_EVENTS, topic_name

MAX_EVENTS = 200_000
"""Events one re-pricing may examine; ask for a narrower range beyond this."""
MAX_LISTED = 1000
REPRICED_KINDS = (EventKind.LLM_CALL.value, EventKind.TOOL_CALL.value, EventKind.CALL_ABORTED.value)

EVENT_COLUMNS = (
    "kind", "occurred_at", "session_id", "thread_id", "workflow_id", "step", "step_name", "agent_type",
    "team", "project", "customer", "tags", "provider", "model", "input_tokens", "output_tokens",
    "cache_read_tokens", "cache_write_tokens", "reasoning_tokens", "latency_ms", "streamed", "cache_hit",
    "tool_name", "duration_ms", "tool_fee", "error", "max_output_tokens", "estimated_cost", "settles",
    "reported_cost",
)  # fmt: skip


class RepriceError(Exception):
    """A re-pricing cannot run as asked; the message says what to change."""


class TooManyEvents(RepriceError):
    """The range holds more than MAX_EVENTS events: re-price it in smaller ranges."""


class EmitFailed(RepriceError):
    """Kafka did not acknowledge the adjustment events; re-run: the event ids make it safe."""


def card_hash(card: RateCard) -> str:
    """A stable hash of the rate card's content (version included)."""
    return hashlib.sha256(card.model_dump_json().encode()).hexdigest()[:16]


def adjustment_event_id(event_id: str, rate_card_hash: str) -> str:
    return hashlib.sha256(f"reprice:{event_id}:{rate_card_hash}".encode()).hexdigest()[:32]


def source_events_query(database: str, start: datetime, end: datetime) -> tuple[str, dict[str, Any]]:
    columns = ("event_id", *EVENT_COLUMNS, "cost", "list_cost")
    where = (
        " WHERE occurred_at >= {start:DateTime64(6, 'UTC')} AND occurred_at < {end:DateTime64(6, 'UTC')}"
        " AND kind IN {kinds:Array(String)}"
    )
    sql = (
        f"SELECT * FROM ({deduplicated('database', columns, where)}) "
        "ORDER BY occurred_at, event_id LIMIT {limit:UInt32}"
    )
    params = {"database": database, "start": start, "end": end, "kinds": list(REPRICED_KINDS), "limit": MAX_EVENTS + 1}
    return sql.replace("picked.1 AS event_id", "toString(picked.1) AS event_id"), params


def adjustments_query(database: str, start: datetime, end: datetime) -> tuple[str, dict[str, Any]]:
    """Re-pricing adjustments stored for events of the range: per original event, their sums
    (paid and list) and ids."""
    where = (
        " WHERE occurred_at >= {start:DateTime64(6, 'UTC')} AND occurred_at < {end:DateTime64(6, 'UTC')}"
        " AND kind = 'adjustment' AND mapContains(tags, 'adjusts')"
    )
    inner = deduplicated("database", ("event_id", "tags", "adjustment_amount", "list_cost"), where)
    sql = (
        "SELECT tags['adjusts'] AS adjusts, sum(adjustment_amount) AS adjusted, sum(list_cost) AS adjusted_list, "
        f"groupArray(toString(event_id)) AS ids FROM ({inner}) GROUP BY adjusts"
    )
    return sql, {"database": database, "start": start, "end": end}


@dataclass(frozen=True, slots=True)
class Difference:
    event_id: str
    adjustment_event_id: str
    session_id: str
    team: str | None
    model: str | None
    tool_name: str | None
    occurred_at: datetime
    stored_cost: Decimal
    current_cost: Decimal
    new_cost: Decimal
    difference: Decimal
    adjustment: CostEvent


@dataclass(slots=True)
class RepriceResult:
    rate_card_version: str
    rate_card_hash: str
    start: datetime
    end: datetime
    dry_run: bool
    events_examined: int = 0
    unchanged: int = 0
    already_applied: int = 0
    total_difference: Decimal = Decimal(0)
    differences: list[Difference] = field(default_factory=list)
    emitted: int = 0


def _event(row: dict[str, Any]) -> CostEvent:
    values = {c: row[c] for c in EVENT_COLUMNS}
    values["event_id"] = row["event_id"]
    return CostEvent.model_validate({k: v for k, v in values.items() if v is not None})


def plan(
    warehouse: Warehouse,
    settings: Settings,
    card: RateCard,
    start: datetime,
    end: datetime,
    *,
    now: datetime | None = None,
) -> RepriceResult:
    """The differences a re-pricing would emit; reads the warehouse, sends nothing."""
    now = now or utcnow()
    digest = card_hash(card)
    result = RepriceResult(card.version, digest, start, end, dry_run=True)
    rows = warehouse.query(*source_events_query(settings.database, start, end))
    if len(rows) > MAX_EVENTS:
        raise TooManyEvents(f"more than {MAX_EVENTS} events in the range; re-price it in smaller ranges")
    adjusted: dict[str, tuple[Decimal, Decimal, set[str]]] = {
        r["adjusts"]: (Decimal(r["adjusted"]), Decimal(r["adjusted_list"]), set(r["ids"]))
        for r in warehouse.query(*adjustments_query(settings.database, start, end))
    }
    result.events_examined = len(rows)
    for row in rows:
        event = _event(row)
        adj_id = adjustment_event_id(event.event_id, digest)
        already, already_list, ids = adjusted.get(event.event_id, (Decimal(0), Decimal(0), set()))
        if adj_id in ids:
            result.already_applied += 1
            continue
        stored = Decimal(row["cost"])
        current = stored + already
        repriced = price_event(
            event,
            rate_card=card,
            unpriced_policy=settings.unpriced_policy,
            fallback_input_per_mtok=settings.fallback_price_per_mtok_input,
            fallback_output_per_mtok=settings.fallback_price_per_mtok_output,
            now=now,
        )
        new = repriced.cost
        diff = new - current
        # list prices move only with genai-prices' data, not with the rate card: usually 0
        list_diff = repriced.list_cost - (Decimal(row["list_cost"]) + already_list)
        if diff == 0 and list_diff == 0:
            result.unchanged += 1
            continue
        adjustment = CostEvent(
            event_id=adj_id,
            kind=EventKind.ADJUSTMENT,
            occurred_at=event.occurred_at,
            session_id=event.session_id,
            thread_id=event.thread_id,
            workflow_id=event.workflow_id,
            step=event.step,
            step_name="reprice",
            agent_type=event.agent_type,
            team=event.team,
            project=event.project,
            customer=event.customer,
            tags={"adjusts": event.event_id, "rate_card": digest},
            provider=event.provider,
            model=event.model,
            tool_name=event.tool_name,
            adjustment_amount=diff,
            adjustment_list_amount=list_diff,
            reason=f"re-priced under rate card {card.version or digest}: {current} -> {new}"[:256],
        )
        result.differences.append(
            Difference(
                event_id=event.event_id,
                adjustment_event_id=adj_id,
                session_id=event.session_id,
                team=event.team,
                model=event.model,
                tool_name=event.tool_name,
                occurred_at=event.occurred_at,
                stored_cost=stored,
                current_cost=current,
                new_cost=new,
                difference=diff,
                adjustment=adjustment,
            )
        )
        result.total_difference += diff
    return result


def emit(settings: Settings, result: RepriceResult, timeout: float = 30.0) -> int:
    """Send the adjustments to cost-events (keyed by session id) and wait for every ack."""
    if not result.differences:
        return 0
    config = producer_config(settings)
    config["client.id"] = "agentledger-reprice"
    producer = Producer(config)
    errors: list[str] = []

    def delivered(err: object, _msg: object) -> None:
        if err is not None:
            errors.append(str(err))

    topic = topic_name(settings.topic_prefix, COST_EVENTS)
    try:
        for d in result.differences:
            while True:
                try:
                    producer.produce(
                        topic, codec.encode(d.adjustment), key=d.session_id.encode(), on_delivery=delivered
                    )
                    break
                except BufferError:  # the local queue is full: let deliveries drain it
                    producer.poll(0.5)
            producer.poll(0)
        remaining = producer.flush(timeout)
    except (KafkaException, BufferError) as exc:
        raise EmitFailed(f"cannot send adjustments: {exc}") from exc
    if remaining or errors:
        raise EmitFailed(f"adjustments not acknowledged: {errors[:3] or f'{remaining} in flight'}")
    result.dry_run = False
    result.emitted = len(result.differences)
    return result.emitted
