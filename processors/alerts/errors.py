"""Errors of the alert dispatcher; each says what the operator should do about it."""

from __future__ import annotations

from processors.errors import ProcessorError


class AlertError(ProcessorError):
    """Root of every error raised by `processors.alerts`."""


class DestinationRefused(AlertError):
    """A webhook URL, or an address its host resolves to, is not an allowed destination: fix the
    URL in `alert_webhooks`, or (for a private receiver you trust) set
    `alert_allow_private_destinations`, which `overridable` says would help."""

    def __init__(self, code: str, message: str, *, overridable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.overridable = overridable


class DeliveryLogError(AlertError):
    """Delivery records could not be written to or read from the `alert-deliveries` topic: check
    the broker; the dispatcher exits without committing, and redelivers nothing already recorded."""
