"""Wire format: UTF-8 JSON (pydantic-core for models, orjson for plain values). Decimals travel as strings, never floats."""

from __future__ import annotations

from decimal import Decimal
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel

M = TypeVar("M", bound=BaseModel)


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def encode(model: BaseModel) -> bytes:
    """The model as JSON without its None fields, by pydantic-core's serializer (twice as fast as
    model_dump + orjson). Datetimes are RFC 3339 with `Z` for UTC, without the fraction when it is
    zero (`2026-03-01T12:00:53Z`, `2026-03-01T12:00:53.500000Z`); Decimals are strings."""
    return model.__pydantic_serializer__.to_json(model, exclude_none=True)


def decode(model_type: type[M], data: bytes | str) -> M:
    """Parse and validate; raises pydantic.ValidationError or orjson.JSONDecodeError."""
    return model_type.model_validate_json(data)


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, default=_default)
