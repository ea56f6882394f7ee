"""The SDK's exceptions: one root, and the budget stops that agent code is meant to handle."""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from schemas.budgets import Signal


class AgentLedgerError(Exception):
    """Root of every exception the agentledger SDK raises on purpose."""


class BudgetExceeded(AgentLedgerError):
    """A budget stopped this session: stop the agent's work for it.

    Raised by the next guarded call (`record_*`, `llm_call`, `check`) of a session that a
    budget policy killed, or whose own `token_cap` a call would cross. The usage that was
    recorded before the raise is already accounted. What to do: end the session, report
    `reason` to the user, and do not retry with the same session; a platform owner can
    raise the budget (`policy_id`) if the stop was wrong.
    """

    def __init__(
        self,
        reason: str,
        *,
        session_id: str,
        policy_id: str,
        limit_tokens: int | None = None,
        limit_cost: Decimal | None = None,
        spent_tokens: int | None = None,
        spent_cost: Decimal | None = None,
        signal: Signal | None = None,
    ) -> None:
        super().__init__(f"session {session_id}: {reason} (policy {policy_id})")
        self.reason = reason
        self.session_id = session_id
        self.policy_id = policy_id
        self.limit_tokens = limit_tokens
        self.limit_cost = limit_cost
        self.spent_tokens = spent_tokens
        self.spent_cost = spent_cost
        self.signal = signal

    @property
    def limit(self) -> Decimal | int | None:
        """The limit that was crossed: money (USD) when the policy has one, else tokens."""
        return self.limit_cost if self.limit_cost is not None else self.limit_tokens

    @property
    def spend(self) -> Decimal | int | None:
        """The spend that crossed it, in the same unit as `limit`."""
        return self.spent_cost if self.limit_cost is not None else self.spent_tokens

    @classmethod
    def from_signal(cls, signal: Signal) -> BudgetExceeded:
        return cls(
            signal.reason,
            session_id=signal.session_id,
            policy_id=signal.policy_id,
            limit_tokens=signal.limit_tokens,
            limit_cost=signal.limit_cost,
            spent_tokens=signal.spent_tokens,
            spent_cost=signal.spent_cost,
            signal=signal,
        )


class BudgetPaused(BudgetExceeded):
    """A budget paused this session: wait, or stop; it is not over for good.

    A subclass of `BudgetExceeded`, so code that stops on `BudgetExceeded` also stops on a
    pause. Code that can wait catches `BudgetPaused` first and retries later (for example
    after the budget window rolls over); `session.check()` tells when it is lifted.
    """


class InvalidEvent(AgentLedgerError, ValueError):
    """An event failed validation or is larger than `MAX_EVENT_BYTES`.

    Raised at the call site in development mode only; in production mode the event is
    counted (`ingest.stats().invalid`) and logged instead. Fix the arguments named in the
    message: they break the event contract in `schemas.events`.
    """
