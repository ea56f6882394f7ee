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

    def to_dict(self) -> dict[str, str | None]:
        return {"code": self.code, "field": self.field, "message": self.message}


class InvalidParameter(ApiError):
    """A request parameter is outside what the API allows; the message names the allowed values."""

    code = "invalid_parameter"
    status = 422


class WarehouseUnavailable(ApiError):
    """The warehouse could not answer; retry later or check the ClickHouse server / chDB folder."""

    code = "warehouse_unavailable"
    status = 503
