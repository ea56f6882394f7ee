"""Wire format: UTF-8 JSON via orjson. Decimals travel as strings, never floats."""

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
    return orjson.dumps(
        model.model_dump(mode="python", exclude_none=True), default=_default, option=orjson.OPT_NON_STR_KEYS
    )


def decode(model_type: type[M], data: bytes | str) -> M:
    """Parse and validate; raises pydantic.ValidationError or orjson.JSONDecodeError."""
    return model_type.model_validate_json(data)


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, default=_default)
