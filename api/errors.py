"""Domain errors of the API: a stable code, the field at fault, and the HTTP status.

Routes and query builders raise these; `api.app` turns them into responses in one place.
"""

from __future__ import annotations


class ApiError(Exception):
    """Root of the API's domain errors."""

    code = "api_error"
    status = 400

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def to_dict(self) -> dict[str, object]:
        return {"code": self.code, "field": self.field, "message": self.message}

    def headers(self) -> dict[str, str] | None:
        """HTTP headers the response must carry (WWW-Authenticate, Retry-After)."""
        return None


class InvalidParameter(ApiError):
    """A request parameter is outside what the API allows; the message names the allowed values."""

    code = "invalid_parameter"
    status = 422


class WarehouseUnavailable(ApiError):
    """The warehouse could not answer; retry later or check the ClickHouse server / chDB folder."""

    code = "warehouse_unavailable"
    status = 503


class Unauthenticated(ApiError):
    """No API key, or one that is unknown, malformed or revoked: send
    `Authorization: Bearer <key>` (or `X-API-Key`) with a key from `agentledger keys create`."""

    code = "unauthenticated"
    status = 401

    def headers(self) -> dict[str, str] | None:
        return {"WWW-Authenticate": "Bearer"}


class Forbidden(ApiError):
    """The key is valid but lacks the scope, or is restricted to another team."""

    code = "forbidden"
    status = 403


class NotFound(ApiError):
    """The named resource does not exist."""

    code = "not_found"
    status = 404


class PayloadTooLarge(ApiError):
    """The request body or batch is over the configured limit: split it into smaller batches."""

    code = "payload_too_large"
    status = 413


class MalformedBody(ApiError):
    """The request body is not valid JSON, or not of the documented shape."""

    code = "malformed_body"
    status = 400


class BatchRejected(ApiError):
    """No event of the batch was accepted; `rejected` lists each one with its fields at fault.

    Status 422 when events are invalid, 403 when every rejection is a team restriction."""

    code = "batch_rejected"
    status = 422

    def __init__(self, message: str, rejected: list[dict[str, object]], *, status: int = 422) -> None:
        super().__init__(message)
        self.rejected = rejected
        self.status = status

    def to_dict(self) -> dict[str, object]:
        return {**super().to_dict(), "rejected": self.rejected}


class KafkaUnavailable(ApiError):
    """Kafka did not acknowledge the events in time; nothing may be assumed stored.
    Retry the whole batch after Retry-After seconds: event_ids make the retry safe."""

    code = "kafka_unavailable"
    status = 503

    def __init__(self, message: str, *, retry_after_s: int = 5) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str] | None:
        return {"Retry-After": str(self.retry_after_s)}
