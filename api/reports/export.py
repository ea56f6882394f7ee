"""Tables out of report rows: a pandas DataFrame, then CSV or Parquet bytes.

Money stays Decimal end to end: object columns of `Decimal` in pandas, fixed-point text in
CSV (never exponent notation), `decimal128(38, 12)` in Parquet (never float).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

MONEY_TYPE = pa.decimal128(38, 12)
MONEY_QUANTUM = Decimal("0.000000000001")


def frame(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> pd.DataFrame:
    """The rows as a DataFrame with exactly `columns`, in that order (missing values: None)."""
    return pd.DataFrame([[row.get(c) for c in columns] for row in rows], columns=list(columns), dtype=object)


def _csv_cell(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value.quantize(MONEY_QUANTUM), "f")
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, date):
        return value.isoformat()
    return value


_FORMATTED = (Decimal, datetime, date)


def to_csv(df: pd.DataFrame) -> bytes:
    """RFC 4180 CSV with a header; Decimals as fixed-point text, datetimes as ISO UTC ('Z')."""
    out = df.copy()
    for column in out.columns:
        # only columns holding such values are rewritten: a FOCUS month has ~70 columns x 260k rows
        if any(issubclass(t, _FORMATTED) for t in set(map(type, out[column]))):
            out[column] = out[column].map(_csv_cell)
    return out.to_csv(index=False, lineterminator="\r\n").encode()


def arrow_type(values: Sequence[Any], declared: pa.DataType | None = None) -> pa.DataType:
    if declared is not None:
        return declared
    sample = next((v for v in values if v is not None), None)
    if isinstance(sample, Decimal):
        return MONEY_TYPE
    if isinstance(sample, bool):
        return pa.bool_()
    if isinstance(sample, int):
        return pa.int64()
    if isinstance(sample, datetime):
        return pa.timestamp("us", tz="UTC")
    if isinstance(sample, date):
        return pa.date32()
    return pa.string()


def to_arrow(df: pd.DataFrame, types: Mapping[str, pa.DataType] | None = None) -> pa.Table:
    """An Arrow table built column by column from the Python values (no float detour)."""
    types = types or {}
    arrays, fields = [], []
    for column in df.columns:
        values = list(df[column])
        type_ = arrow_type(values, types.get(column))
        if pa.types.is_decimal(type_):
            values = [None if v is None else Decimal(v).quantize(MONEY_QUANTUM) for v in values]
        arrays.append(pa.array(values, type=type_))
        fields.append(pa.field(column, type_, nullable=True))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def to_parquet(df: pd.DataFrame, types: Mapping[str, pa.DataType] | None = None) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(to_arrow(df, types), buffer)
    return buffer.getvalue()
