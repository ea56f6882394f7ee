"""Write budget policies to the compacted `budget-policies` topic (key: policy id)."""

from __future__ import annotations

from confluent_kafka import KafkaException, Producer

from agentledger.settings import Settings
from processors.errors import PolicyPublishError
from schemas.budgets import BudgetPolicy, OpeningBalance, PolicyRecord
from schemas.codec import encode
from schemas.topics import BUDGET_POLICIES


def _produce(settings: Settings, key: str, value: bytes | None, timeout: float) -> None:
    producer = Producer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 0,
        }
    )
    errors: list[str] = []

    def on_delivery(err: object, _msg: object) -> None:
        if err is not None:
            errors.append(str(err))

    try:
        producer.produce(settings.topic(BUDGET_POLICIES.suffix), key=key.encode(), value=value, on_delivery=on_delivery)
        remaining = producer.flush(timeout)
    except (KafkaException, BufferError) as exc:
        raise PolicyPublishError(f"cannot publish policy {key!r}: {exc}") from exc
    if remaining or errors:
        raise PolicyPublishError(f"policy {key!r} not delivered: {errors or 'flush timed out'}")


def publish_policy(
    settings: Settings, policy: BudgetPolicy, timeout: float = 10.0, opening_balance: OpeningBalance | None = None
) -> None:
    """Create or replace a budget policy; workers apply it within seconds.

    With `opening_balance` (api.opening_balance computes it) the budgets it names start from the
    spend already made in the window instead of zero."""
    if opening_balance is None:
        _produce(settings, policy.policy_id, encode(policy), timeout)
        return
    record = PolicyRecord.model_validate({**policy.model_dump(exclude_unset=True), "opening_balance": opening_balance})
    _produce(settings, policy.policy_id, encode(record), timeout)


def delete_policy(settings: Settings, policy_id: str, timeout: float = 10.0) -> None:
    """Delete a budget policy (a tombstone on the compacted topic)."""
    _produce(settings, policy_id, None, timeout)
