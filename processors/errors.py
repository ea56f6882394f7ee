"""Errors of the stream processors; each says what the operator should do about it."""

from __future__ import annotations


class ProcessorError(Exception):
    """Root of every error raised by `processors`."""


class RateCardError(ProcessorError):
    """The YAML rate card cannot be read or is invalid: fix the file named in the message and restart."""


class PolicyPublishError(ProcessorError):
    """A budget policy could not be written to Kafka: check that the broker is reachable and retry."""
