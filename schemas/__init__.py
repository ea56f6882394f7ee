"""The agentledger contract: cost events, priced events, budgets, signals and topics."""

from schemas.budgets import (
    Action,
    Alert,
    BudgetPolicy,
    Scope,
    SessionState,
    SessionStatus,
    Signal,
    Window,
)
from schemas.events import (
    MAX_EVENT_BYTES,
    SCHEMA_VERSION,
    CostEvent,
    DeadLetter,
    EventKind,
    PricedEvent,
    derive_event_id,
    utcnow,
)

__all__ = [
    "MAX_EVENT_BYTES",
    "SCHEMA_VERSION",
    "Action",
    "Alert",
    "BudgetPolicy",
    "CostEvent",
    "DeadLetter",
    "EventKind",
    "PricedEvent",
    "Scope",
    "SessionState",
    "SessionStatus",
    "Signal",
    "Window",
    "derive_event_id",
    "utcnow",
]
