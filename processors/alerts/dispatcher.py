"""The alert dispatcher: `alerts` -> every configured webhook, each alert at most once per destination.

One consumer in group `<prefix>alert-dispatcher`, one alert at a time (alerts are rare: one per
policy threshold and window). For each alert and destination not yet delivered it renders the
payload, sends it through `PinnedTransport` (redirects not followed), retries as `retry` says,
and records every attempt on `alert-deliveries`. The alert's offset is committed only after the
records are flushed and every destination is final (delivered, or given up), so a crash
re-sends only to destinations with no successful record; the delivery log (read back at start-up
and at each assignment) keeps restarts and duplicate alert events from sending twice.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import FrameType

import httpx
import structlog
from confluent_kafka import Consumer, KafkaException, Message, TopicPartition
from pydantic import ValidationError

from agentledger.kafka_admin import ensure_topics
from agentledger.settings import AlertWebhook, Settings
from processors.alerts.deliveries import DeliveryRecorder, KafkaDeliveryLog
from processors.alerts.destinations import (
    DestinationRefused,
    PinnedTransport,
    Resolver,
    destination_id,
    system_resolver,
)
from processors.alerts.errors import AlertError
from processors.alerts.formats import render
from processors.alerts.retry import RetryPolicy, Verdict, classify, next_delay
from schemas import codec
from schemas.budgets import Alert
from schemas.deliveries import AlertDelivery
from schemas.topics import ALERT_DELIVERIES, ALERTS

log = structlog.get_logger(__name__)

ERROR_BODY_BYTES = 512


@dataclass(frozen=True, slots=True)
class Target:
    webhook: AlertWebhook
    destination: str


def targets_of(settings: Settings) -> tuple[Target, ...]:
    return tuple(Target(w, destination_id(w.url, w.name)) for w in settings.alert_webhooks)


def consumer_group(settings: Settings) -> str:
    return f"{settings.topic_prefix}alert-dispatcher"


def make_client(settings: Settings, resolver: Resolver = system_resolver) -> httpx.Client:
    return httpx.Client(
        transport=PinnedTransport(allow_private=settings.alert_allow_private_destinations, resolver=resolver),
        follow_redirects=False,
        trust_env=False,  # an environment proxy would connect to the name, not the checked address
        timeout=httpx.Timeout(settings.alert_timeout_s),
    )


@dataclass(frozen=True, slots=True)
class Outcome:
    verdict: Verdict
    status_code: int | None
    error: str
    retry_after: str | None


class Dispatcher:
    """Delivers alerts; `deliver` is the whole policy, `run` the Kafka loop around it."""

    def __init__(
        self,
        settings: Settings,
        recorder: DeliveryRecorder,
        *,
        client: httpx.Client | None = None,
        stop: threading.Event | None = None,
        rng: Callable[[], float] = random.random,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.recorder = recorder
        self.targets = targets_of(settings)
        self.policy = RetryPolicy.from_settings(settings)
        self.client = client if client is not None else make_client(settings)
        self.stop = stop if stop is not None else threading.Event()
        self.rng = rng
        self.now = now

    def _send(self, target: Target, body: bytes, headers: dict[str, str]) -> Outcome:
        try:
            with self.client.stream("POST", target.webhook.url, content=body, headers=headers) as response:
                status = response.status_code
                verdict = classify(status)
                error = ""
                if verdict is not Verdict.DELIVERED:
                    snippet = b""
                    for chunk in response.iter_bytes():
                        snippet += chunk
                        if len(snippet) >= ERROR_BODY_BYTES:
                            break
                    text = snippet[:ERROR_BODY_BYTES].decode("utf-8", "replace")
                    if 300 <= status < 400:
                        error = f"redirect ({status}) not followed"
                    else:
                        error = f"HTTP {status}: {text}".strip()
                return Outcome(verdict, status, error, response.headers.get("retry-after"))
        except DestinationRefused as exc:
            return Outcome(Verdict.FAILED, None, f"refused ({exc.code}): {exc}", None)
        except httpx.TimeoutException as exc:
            return Outcome(Verdict.RETRY, None, f"timeout: {type(exc).__name__}: {exc}", None)
        except httpx.TransportError as exc:
            return Outcome(Verdict.RETRY, None, f"connection: {type(exc).__name__}: {exc}", None)

    def deliver_to(self, alert: Alert, target: Target) -> bool:
        """Attempts until delivered, given up, or stopped; False only when stopped before a final answer."""
        if self.recorder.delivered(alert.alert_id, target.destination):
            log.info("alert.already_delivered", alert_id=alert.alert_id, destination=target.destination)
            return True
        payload = render(alert, target.webhook.format)
        first = self.recorder.last_attempt(alert.alert_id, target.destination) + 1
        for tries in range(1, self.policy.max_attempts + 1):
            if self.stop.is_set():
                return False
            attempted_at = self.now()
            started = time.perf_counter()
            outcome = self._send(target, payload.body, payload.headers)
            latency_ms = round((time.perf_counter() - started) * 1000, 3)
            delay = None
            if outcome.verdict is Verdict.RETRY:
                delay = next_delay(self.policy, tries, outcome.status_code, outcome.retry_after, attempted_at, self.rng)
            final = delay is None
            self.recorder.record(
                AlertDelivery(
                    alert_id=alert.alert_id,
                    policy_id=alert.policy_id,
                    destination=target.destination,
                    format=target.webhook.format,
                    attempt=first + tries - 1,
                    attempted_at=attempted_at,
                    ok=outcome.verdict is Verdict.DELIVERED,
                    final=final,
                    status_code=outcome.status_code,
                    error=outcome.error[:1024],
                    latency_ms=latency_ms,
                    next_attempt_at=None if delay is None else attempted_at + timedelta(seconds=delay),
                )
            )
            logged = log.info if outcome.verdict is Verdict.DELIVERED else log.warning
            logged(
                "alert.attempt",
                alert_id=alert.alert_id,
                destination=target.destination,
                attempt=first + tries - 1,
                verdict=outcome.verdict.value,
                status=outcome.status_code,
                error=outcome.error[:200],
                retry_in_s=delay,
            )
            if final:
                return True
            assert delay is not None
            if self.stop.wait(delay):
                return False
        return True  # unreachable: the last try is always final

    def deliver(self, alert: Alert) -> bool:
        """Every destination in turn; False when stopped before all were final."""
        return all(self.deliver_to(alert, target) for target in self.targets)

    def close(self) -> None:
        self.client.close()


class AlertConsumer:
    """The Kafka side: consume `alerts`, deliver, flush the records, commit."""

    def __init__(self, settings: Settings, *, resolver: Resolver = system_resolver) -> None:
        self.settings = settings
        self.resolver = resolver
        self.delivered_alerts = 0
        self.skipped = 0

    def max_poll_interval_ms(self) -> int:
        policy = RetryPolicy.from_settings(self.settings)
        per_target = policy.worst_case_wait_s() + policy.max_attempts * self.settings.alert_timeout_s * 4
        worst = per_target * max(1, len(self.settings.alert_webhooks)) + 60
        return int(min(max(300.0, worst), 86_400.0) * 1000)

    def _commit(self, consumer: Consumer, msg: Message) -> None:
        consumer.commit(message=msg, asynchronous=False)

    def run(self, stop: threading.Event) -> None:
        """Consume until `stop` is set. An alert in progress when it is set is not committed."""
        settings = self.settings
        if not settings.alert_webhooks:
            log.warning("alert_dispatcher.no_webhooks", hint="set AGENTLEDGER_ALERT_WEBHOOKS; alerts are consumed")
        ensure_topics(settings, (ALERTS, ALERT_DELIVERIES))
        deliveries = KafkaDeliveryLog(settings)
        dispatcher = Dispatcher(settings, deliveries, client=make_client(settings, self.resolver), stop=stop)
        consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                "group.id": consumer_group(settings),
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": 100,
                "max.poll.interval.ms": self.max_poll_interval_ms(),
                "client.id": "agentledger-alert-dispatcher",
            }
        )

        def on_assign(_consumer: Consumer, partitions: list[TopicPartition]) -> None:
            # Another dispatcher may have delivered on these partitions until just now.
            deliveries.catch_up()
            log.info("alert_dispatcher.assigned", partitions=[p.partition for p in partitions], known=deliveries.read)

        try:
            deliveries.catch_up()
            consumer.subscribe([settings.topic(ALERTS.suffix)], on_assign=on_assign)
            while not stop.is_set():
                msg = consumer.poll(0.2)
                if msg is None:
                    continue
                err = msg.error()
                if err is not None:
                    if err.fatal():
                        raise AlertError(f"fatal Kafka error: {err}")
                    log.warning("alert_dispatcher.kafka_error", error=str(err))
                    continue
                value = msg.value()
                try:
                    alert = codec.decode(Alert, value) if value is not None else None
                except (ValidationError, ValueError) as exc:
                    alert = None
                    log.error(
                        "alert_dispatcher.unreadable",
                        partition=msg.partition(),
                        offset=msg.offset(),
                        error=str(exc)[:500],
                    )
                if alert is None:
                    self.skipped += 1
                elif not dispatcher.deliver(alert):
                    break  # stopped mid-alert: leave it uncommitted, the next run finishes it
                else:
                    self.delivered_alerts += 1
                deliveries.flush()
                self._commit(consumer, msg)
        except KafkaException as exc:
            raise AlertError(f"Kafka error: {exc}") from exc
        finally:
            try:
                deliveries.flush()
            except AlertError as exc:
                log.error("alert_dispatcher.unflushed", error=str(exc))
            consumer.close()
            deliveries.close()
            dispatcher.close()


def run_dispatcher(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT (`agentledger dispatcher`)."""
    stop = threading.Event()

    def handle(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        AlertConsumer(settings).run(stop)
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
