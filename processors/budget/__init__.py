"""Pure budget arithmetic: no Kafka, no clock; the worker feeds it events and policies."""

from processors.budget.ledger import (
    DEFAULT_SESSION_POLICY_ID,
    UNPRICED_POLICY_ID,
    BudgetBook,
    BudgetState,
    Crossing,
    attribution_of,
    default_session_policy,
    make_signal,
    scope_value,
    signal_id,
    state_key,
    unpriced_kill_signal,
    usage_of,
)
from processors.budget.windows import calendar_start, window_start

__all__ = [
    "DEFAULT_SESSION_POLICY_ID",
    "UNPRICED_POLICY_ID",
    "BudgetBook",
    "BudgetState",
    "Crossing",
    "attribution_of",
    "calendar_start",
    "default_session_policy",
    "make_signal",
    "scope_value",
    "signal_id",
    "state_key",
    "unpriced_kill_signal",
    "usage_of",
    "window_start",
]
