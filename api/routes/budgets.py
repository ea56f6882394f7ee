"""/v1/budgets: budget policies, written as events on the compacted budget-policies topic.

A write first reads the spend already made in the policy's window from the warehouse (its
opening balance, api.opening_balance), publishes it with the policy, so budgets start from it
rather than from zero.

The topic is the source of truth: a write publishes the policy (or a tombstone) and then
waits until the API's policy cache has read the topic to its end, so the answer and every
later read show it; workers apply it within seconds.

Scopes: `reports:read` to read, `budgets:write` to change. A key restricted to a team sees
and changes only the policies whose `match` pins that team (`match.team == key.team`): it
cannot create one without that pin, and a policy of another team (or of every team) is
404 to it, as if it did not exist, so ids of other teams' policies do not leak.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel

from api.auth import require
from api.budget_status import scope_value_text, spend_query, spent_tokens, used_fraction
from api.errors import Forbidden, InvalidParameter, KafkaUnavailable, NotFound
from api.keys import ApiKey
from api.money import MoneyText, money
from api.opening_balance import OpeningStatus, OpeningSummary, opening_for_write
from api.policy_cache import PolicyCache, PolicyCacheUnavailable
from processors.errors import PolicyPublishError
from processors.policies import delete_policy, publish_policy
from schemas.budgets import BudgetPolicy, Scope

log = structlog.get_logger(__name__)

router = APIRouter(prefix="/v1/budgets", tags=["budgets"])

OpeningQuery = Annotated[
    bool, Query(description="Start the budgets from the spend already made in their window (default) or from zero")
]
OPENING_DOC = (
    "The budgets start from the settled spend the warehouse holds for the policy's window at the time "
    "of the write (`opening_balance` in the answer says what was found); `opening_balance=false` starts "
    "them at zero. If the warehouse cannot answer, the policy is still written, without it "
    "(`opening_balance.status` = `failed`)."
)
PolicyIdPath = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]


class BudgetList(BaseModel):
    budgets: list[BudgetPolicy]


class ScopeSpend(BaseModel):
    scope_value: str
    group: dict[str, str]
    spent_cost: MoneyText
    spent_tokens: int
    fraction: Decimal
    """The larger of spent/limit over the limits the policy sets (1 = at the limit)."""


class BudgetSpend(BaseModel):
    policy: BudgetPolicy
    window_start: datetime | None
    as_of: datetime
    source: str
    scopes: list[ScopeSpend]
    """Biggest spenders first; settled spend in the warehouse (reservations excluded)."""


def policy_cache_of(request: Request) -> PolicyCache:
    try:
        cache: PolicyCache = request.app.state.admin.policies()
    except PolicyCacheUnavailable as exc:
        raise KafkaUnavailable(str(exc)) from None
    return cache


def visible_to(policy: BudgetPolicy, key: ApiKey) -> bool:
    """Whether `key` may see `policy`: every policy for an unrestricted key, its team's pinned ones otherwise."""
    return key.team is None or policy.match.get(Scope.TEAM) == key.team


def _visible_or_404(cache: PolicyCache, policy_id: str, key: ApiKey) -> BudgetPolicy:
    policy = cache.get(policy_id)
    if policy is None or not visible_to(policy, key):
        raise NotFound(f"no budget policy {policy_id!r}", field="policy_id")
    return policy


class BudgetWritten(BudgetPolicy):
    """The policy as written, and what became of the spend already made in its window."""

    opening_balance: OpeningSummary


def _write(
    request: Request, policy: BudgetPolicy, key: ApiKey, response: Response, opening_balance: bool
) -> BudgetWritten:
    if key.team is not None and policy.match.get(Scope.TEAM) != key.team:
        raise Forbidden(f"a key restricted to team {key.team!r} may only set policies with match.team equal to it",
                        field="match")  # fmt: skip
    cache = policy_cache_of(request)
    existing = cache.get(policy.policy_id)
    if existing is not None and not visible_to(existing, key):
        raise Forbidden(f"the policy {policy.policy_id!r} belongs to another team", field="policy_id")
    settings = request.app.state.settings
    balance, summary = opening_for_write(
        request.app.state.warehouse, settings.database, policy, datetime.now(UTC), wanted=opening_balance
    )
    log_opening = log.warning if summary.status is OpeningStatus.FAILED else log.info
    log_opening("budgets.opening_balance", policy_id=policy.policy_id, **summary.model_dump(mode="json"))
    try:
        publish_policy(settings, policy, opening_balance=balance)
        cache.wait_caught_up()
    except PolicyPublishError as exc:
        raise KafkaUnavailable(str(exc)) from None
    except PolicyCacheUnavailable as exc:
        raise KafkaUnavailable(str(exc)) from None
    response.status_code = 200 if existing is not None else 201
    return BudgetWritten.model_validate({**policy.model_dump(exclude_unset=True), "opening_balance": summary})


@router.get("", response_model=BudgetList, summary="List budget policies")
def list_budgets(request: Request, key: Annotated[ApiKey, Depends(require("reports:read"))]) -> BudgetList:
    return BudgetList(budgets=[p for p in policy_cache_of(request).policies() if visible_to(p, key)])


@router.get("/{policy_id}", response_model=BudgetPolicy, summary="One budget policy")
def get_budget(
    request: Request, policy_id: PolicyIdPath, key: Annotated[ApiKey, Depends(require("reports:read"))]
) -> BudgetPolicy:
    return _visible_or_404(policy_cache_of(request), policy_id, key)


@router.post(
    "",
    response_model=BudgetWritten,
    status_code=201,
    summary="Create or replace a budget policy (201 created, 200 replaced)",
    description=OPENING_DOC,
)
def post_budget(
    request: Request,
    body: BudgetPolicy,
    response: Response,
    key: Annotated[ApiKey, Depends(require("budgets:write"))],
    opening_balance: OpeningQuery = True,
) -> BudgetWritten:
    return _write(request, body, key, response, opening_balance)


@router.put(
    "/{policy_id}",
    response_model=BudgetWritten,
    status_code=201,
    summary="Create or replace a budget policy (201 created, 200 replaced)",
    description=OPENING_DOC,
)
def put_budget(
    request: Request,
    policy_id: PolicyIdPath,
    body: BudgetPolicy,
    response: Response,
    key: Annotated[ApiKey, Depends(require("budgets:write"))],
    opening_balance: OpeningQuery = True,
) -> BudgetWritten:
    if body.policy_id != policy_id:
        raise InvalidParameter(f"body policy_id {body.policy_id!r} differs from the path", field="policy_id")
    return _write(request, body, key, response, opening_balance)


@router.delete("/{policy_id}", status_code=204, summary="Delete a budget policy (a tombstone)")
def delete_budget(
    request: Request, policy_id: PolicyIdPath, key: Annotated[ApiKey, Depends(require("budgets:write"))]
) -> Response:
    cache = policy_cache_of(request)
    _visible_or_404(cache, policy_id, key)
    try:
        delete_policy(request.app.state.settings, policy_id)
        cache.wait_caught_up()
    except PolicyPublishError as exc:
        raise KafkaUnavailable(str(exc)) from None
    except PolicyCacheUnavailable as exc:
        raise KafkaUnavailable(str(exc)) from None
    return Response(status_code=204)


def scope_spends(policy: BudgetPolicy, rows: list[dict[str, Any]], group_by: tuple[str, ...]) -> list[ScopeSpend]:
    out = []
    for row in rows:
        group = {g: row[g] for g in group_by}
        value = scope_value_text(policy, group)
        if value is None:
            continue  # events without a value in a scope dimension are not covered by the policy
        cost, tokens = money(row["cost"]), spent_tokens(row)
        out.append(ScopeSpend(scope_value=value, group=group, spent_cost=cost, spent_tokens=tokens,
                              fraction=used_fraction(policy, cost, tokens)))  # fmt: skip
    return out


@router.get(
    "/{policy_id}/spend",
    response_model=BudgetSpend,
    summary="A policy's settled spend per scope value in its current window, biggest first",
)
def budget_spend(
    request: Request,
    policy_id: PolicyIdPath,
    key: Annotated[ApiKey, Depends(require("reports:read"))],
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> BudgetSpend:
    policy = _visible_or_404(policy_cache_of(request), policy_id, key)
    state = request.app.state
    now = datetime.now(UTC)
    within = {"team": key.team} if key.team is not None else {}
    query = spend_query(state.settings.database, policy, now, within, limit)
    assert query is not None  # a visible policy pins the key's team, so the team filter agrees
    rows = state.warehouse.query(query.sql, query.params)
    return BudgetSpend(policy=policy, window_start=query.window_start, as_of=now, source=query.source,
                       scopes=scope_spends(policy, rows, query.group_by))  # fmt: skip
