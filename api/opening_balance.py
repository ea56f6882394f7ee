"""A budget's opening balance: the spend already made in its window when a policy is written.

Without it a policy created at 15:00 with a calendar-day window would start at zero, and a
team that spent $90 of a $100 day since midnight would be stopped at $190. The API (and the
CLI, through the same function) reads the settled spend per scope value from the warehouse,
stamps it with `as_of`, and publishes it with the policy; workers seed a budget state from it
only where none exists yet (processors.budget.seed_states).

What it can miss, never count twice: the warehouse holds what the sink had written by `as_of`
(stamped after the reads), and a worker applies the policy to the events it processes after it
loaded it; a state seeded from the balance ignores any event processed before `as_of`. Events
processed in between are in neither: those of the worker's last commit interval (faust's, about
2.8 s) and the sink's last flush before the read, and those of the policy's trip to the workers
after it. bench.opening_balance_gap measured 2.4-5.6 s of a steady stream's spend (never a
negative figure, which would be spend counted twice).

The record must fit in one Kafka message (1 MB): it keeps the biggest spenders, up to
MAX_BALANCE_BYTES; the rest start at zero and are counted in `omitted_scopes` /
`omitted_sessions`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from pydantic import BaseModel

from api.budget_status import (
    SCOPE_COLUMN,
    opening_buckets_query,
    opening_scope_count_query,
    opening_sessions_query,
    opening_totals_query,
    opening_window,
    scope_value_text,
    spent_tokens,
)
from api.money import MoneyText, money
from api.warehouse import Warehouse, WarehouseError
from processors.budget.windows import is_rolling
from schemas.budgets import MAX_OPENING_SCOPES, BudgetPolicy, OpeningBalance, OpeningScope, Scope
from schemas.codec import encode

MAX_BALANCE_BYTES = 800_000
"""Under the broker's 1 MB message limit, with room for the policy itself."""
DETAILED_SCOPES = 2000
"""Scope values whose buckets (rolling windows) or sessions (wider scopes) are read; a rolling
budget beyond them is left out (it would need its buckets), a wider one keeps its total only
(`omitted_sessions` counts the sessions of these 2,000 only)."""
SESSIONS_PER_SCOPE = 100
"""Sessions kept per scope value: the biggest, for alerts' top sessions and the breach signal.
Any other session of a breached scope is refused at its next event (the worker signals a
session it has not seen in a breached window at its first event)."""


def _dims(policy: BudgetPolicy, row: Mapping[str, Any]) -> dict[str, Any]:
    return {SCOPE_COLUMN[dim]: row[SCOPE_COLUMN[dim]] for dim in policy.scope}


def build_opening_balance(
    policy: BudgetPolicy,
    now: datetime,
    as_of: datetime,
    totals: Sequence[Mapping[str, Any]],
    buckets: Sequence[Mapping[str, Any]] = (),
    sessions: Sequence[Mapping[str, Any]] = (),
    *,
    scope_count: int | None = None,
    max_bytes: int = MAX_BALANCE_BYTES,
) -> OpeningBalance:
    """The balance of the window containing `now`, read by `as_of`, from the warehouse rows: `totals` per scope value, biggest first; `buckets`
    (rolling) per scope value and bucket start; `sessions` (wider scopes) per scope value and
    session, with `scope_sessions`. Scope values are kept in the order of `totals` while the
    record stays under `max_bytes`. `scope_count`: how many scope values there are in all, when
    `totals` holds only the first ones."""
    rolling = is_rolling(policy.window)
    wide = Scope.SESSION not in policy.scope
    by_scope_buckets: dict[str, list[tuple[int, int, Decimal]]] = {}
    for row in buckets:
        sval = scope_value_text(policy, _dims(policy, row))
        if sval is not None:
            by_scope_buckets.setdefault(sval, []).append((int(row["bucket"]), spent_tokens(row), Decimal(row["cost"])))
    by_scope_sessions: dict[str, list[tuple[str, int, Decimal]]] = {}
    session_counts: dict[str, int] = {}
    for row in sessions:
        sval = scope_value_text(policy, _dims(policy, row))
        if sval is None:
            continue
        by_scope_sessions.setdefault(sval, []).append((row["session_id"], spent_tokens(row), Decimal(row["cost"])))
        session_counts[sval] = int(row["scope_sessions"])

    start, _ = opening_window(policy, now)
    kept: list[OpeningScope] = []
    size = len(encode(OpeningBalance(as_of=as_of, window_start=start)))
    omitted_scopes = omitted_sessions = 0
    full = False
    for row in totals:
        sval = scope_value_text(policy, _dims(policy, row))
        if sval is None:
            continue  # events without a value in a scope dimension are not covered by the policy
        listed = by_scope_sessions.get(sval, [])
        if full or len(kept) >= MAX_OPENING_SCOPES or (rolling and sval not in by_scope_buckets):
            omitted_scopes += 1
            omitted_sessions += session_counts.get(sval, 0)
            continue
        entry = OpeningScope(
            scope_value=sval,
            tokens=spent_tokens(row),
            cost=Decimal(row["cost"]),
            buckets=tuple(by_scope_buckets.get(sval, ())) if rolling else (),
            sessions=tuple(listed[:SESSIONS_PER_SCOPE]) if wide else (),
        )
        entry_size = len(encode(entry)) + 1
        if size + entry_size > max_bytes:
            full = True
            omitted_scopes += 1
            omitted_sessions += session_counts.get(sval, 0)
            continue
        size += entry_size
        kept.append(entry)
        if wide:
            omitted_sessions += max(session_counts.get(sval, 0) - len(entry.sessions), 0)
    if scope_count is not None:
        omitted_scopes = max(scope_count - len(kept), omitted_scopes)
    return OpeningBalance(
        as_of=as_of,
        window_start=None if rolling else start,
        scopes=tuple(kept),
        omitted_scopes=omitted_scopes,
        omitted_sessions=omitted_sessions,
    )


def compute_opening_balance(warehouse: Warehouse, database: str, policy: BudgetPolicy, now: datetime) -> OpeningBalance:
    """Read the settled spend of `policy`'s budgets in the window containing `now` from the
    warehouse. Raises api.warehouse.WarehouseError when it cannot answer."""
    totals = warehouse.query(*opening_totals_query(database, policy, now, limit=MAX_OPENING_SCOPES + 1))
    top = min(len(totals), DETAILED_SCOPES)
    buckets: list[dict[str, Any]] = []
    sessions: list[dict[str, Any]] = []
    if top and is_rolling(policy.window):
        buckets = warehouse.query(*opening_buckets_query(database, policy, now, top))
    if top and Scope.SESSION not in policy.scope:
        sessions = warehouse.query(*opening_sessions_query(database, policy, now, top, SESSIONS_PER_SCOPE))
    # stamped after the reads: an event a worker processes from then on cannot be in them (the
    # sink writes an event after its worker processed it)
    as_of = datetime.now(UTC)
    scope_count = None
    if len(totals) > MAX_OPENING_SCOPES:
        scope_count = int(warehouse.query(*opening_scope_count_query(database, policy, now))[0]["scopes"])
    return build_opening_balance(policy, now, as_of, totals, buckets, sessions, scope_count=scope_count)


class OpeningStatus(StrEnum):
    APPLIED = "applied"
    """Budgets with spend in the window start from it."""
    NONE = "none"
    """Nothing was spent in the window yet: every budget starts at zero."""
    SKIPPED = "skipped"
    """Not asked for (`opening_balance=false`, `--no-opening-balance`): budgets start at zero."""
    FAILED = "failed"
    """The warehouse could not answer: the policy was written without one, budgets start at zero."""


class OpeningSummary(BaseModel):
    """What a policy write did about the spend already made in the window."""

    status: OpeningStatus
    as_of: datetime | None = None
    window_start: datetime | None = None
    scopes: int = 0
    """Scope values whose budgets start from their spend."""
    spent_cost: MoneyText = Decimal(0)
    spent_tokens: int = 0
    omitted_scopes: int = 0
    omitted_sessions: int = 0
    error: str | None = None


def opening_for_write(
    warehouse: Warehouse | None, database: str, policy: BudgetPolicy, now: datetime, *, wanted: bool = True
) -> tuple[OpeningBalance | None, OpeningSummary]:
    """The balance to publish with `policy` (None: none), and what to tell the writer (and log). A
    failure to read the warehouse never stops the write: the policy goes out without a balance."""
    if not wanted:
        return None, OpeningSummary(status=OpeningStatus.SKIPPED)
    try:
        if warehouse is None:
            raise WarehouseError("no warehouse to read")
        balance = compute_opening_balance(warehouse, database, policy, now)
    except Exception as exc:  # whatever went wrong, the policy itself must still be written
        return None, OpeningSummary(status=OpeningStatus.FAILED, error=f"{type(exc).__name__}: {exc}"[:1000])
    summary = OpeningSummary(
        status=OpeningStatus.APPLIED if balance.scopes else OpeningStatus.NONE,
        as_of=balance.as_of,
        window_start=balance.window_start,
        scopes=len(balance.scopes),
        spent_cost=money(sum((s.cost for s in balance.scopes), Decimal(0))),
        spent_tokens=sum(s.tokens for s in balance.scopes),
        omitted_scopes=balance.omitted_scopes,
        omitted_sessions=balance.omitted_sessions,
    )
    return (balance if balance.scopes else None), summary
