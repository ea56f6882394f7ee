"""Shared cost: rows with no value in the allocation dimension (no team, say) reported as
unallocated, or distributed over the dimension's values proportionally or evenly.

Exactness: each unallocated row is split with the largest-remainder method in units of
MONEY_QUANTUM (1e-12, the warehouse's Decimal(38, 12) scale) for money and of 1 for tokens
and calls, so the parts of a row add up exactly to the row, and the report's total is the
same to the last of the 12 decimal places (hence to the cent) with or without distribution.
"""

from __future__ import annotations

import decimal
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, Literal

MONEY_QUANTUM = Decimal("0.000000000001")
Mode = Literal["report", "proportional", "even"]
ALLOCATABLE = ("team", "project", "customer", "agent_type")
"""Dimensions cost can be allocated by (`allocate_by`)."""

_PRECISE = decimal.Context(prec=80, rounding=decimal.ROUND_FLOOR)


class AllocationError(ValueError):
    """Weights that cannot split anything (none, or all zero)."""


def largest_remainder(total: Decimal, weights: Sequence[Decimal], quantum: Decimal) -> list[Decimal]:
    """Split `total` (a multiple of `quantum`) in proportion to non-negative `weights`:
    every part is a multiple of `quantum`, the parts add up to `total` exactly, and the
    leftover units go to the largest fractional parts (ties: the earlier weight)."""
    if not weights or any(w < 0 for w in weights):
        raise AllocationError("weights must be non-negative and not empty")
    weight_sum = sum(weights, Decimal(0))
    if weight_sum == 0:
        raise AllocationError("weights add up to zero")
    units = _PRECISE.divide(total, quantum)
    if units != units.to_integral_value():
        raise AllocationError(f"{total} is not a multiple of {quantum}")
    sign = -1 if units < 0 else 1
    units = abs(units)
    shares = [_PRECISE.divide(_PRECISE.multiply(units, w), weight_sum) for w in weights]
    floors = [s.to_integral_value(rounding=decimal.ROUND_FLOOR) for s in shares]
    left = int(units - sum(floors, Decimal(0)))
    order = sorted(range(len(weights)), key=lambda i: (-(shares[i] - floors[i]), i))
    for i in order[:left]:
        floors[i] += 1
    return [(sign * f * quantum).quantize(quantum) if quantum < 1 else sign * f for f in floors]


def allocate(
    rows: Sequence[Mapping[str, Any]],
    group_by: Sequence[str],
    allocate_by: str,
    mode: Mode,
    money: Sequence[str],
    counts: Sequence[str],
) -> list[dict[str, Any]]:
    """Rows with `allocation` ("direct" or "unallocated") and, when distributing,
    `allocated_<money>` parts merged into the rows of the receiving values.

    Targets are the non-null values of `allocate_by` in the report. Proportional weights are
    each target's direct `cost` over the whole report (a negative net counts as zero; if all
    are zero the split is even). With no target, unallocated rows stay as they are."""
    if allocate_by not in group_by:
        raise AllocationError(f"{allocate_by} must be in group_by")
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    unallocated: list[Mapping[str, Any]] = []
    for row in rows:
        if row[allocate_by] is None:
            unallocated.append(row)
            continue
        item: dict[str, Any] = dict(row)
        item["allocation"] = "direct"
        out[tuple(row[g] for g in group_by)] = item
    targets = sorted({row[allocate_by] for row in rows if row[allocate_by] is not None})
    if mode == "report" or not targets:
        for row in unallocated:
            out[tuple(row[g] for g in group_by)] = {**row, "allocation": "unallocated"}
        return [out[k] for k in sorted(out, key=_sort_key)]

    direct = dict.fromkeys(targets, Decimal(0))
    for row in rows:
        if row[allocate_by] is not None:
            direct[row[allocate_by]] += Decimal(row["cost"])
    weights = [max(direct[t], Decimal(0)) for t in targets] if mode == "proportional" else []
    if not weights or sum(weights) == 0:
        weights = [Decimal(1)] * len(targets)

    for row in unallocated:
        parts = {m: largest_remainder(Decimal(row[m]), weights, MONEY_QUANTUM) for m in money}
        parts.update({c: largest_remainder(Decimal(int(row[c])), weights, Decimal(1)) for c in counts})
        for i, target in enumerate(targets):
            key = tuple(target if g == allocate_by else row[g] for g in group_by)
            if key not in out:
                item = {g: k for g, k in zip(group_by, key, strict=True)}
                item.update({m: Decimal(0) for m in money})
                item.update(dict.fromkeys(counts, 0))
                item["allocation"] = "direct"
                out[key] = item
            item = out[key]
            for m in money:
                item[m] = Decimal(item[m]) + parts[m][i]
                item[f"allocated_{m}"] = item.get(f"allocated_{m}", Decimal(0)) + parts[m][i]
            for c in counts:
                item[c] = int(item[c]) + int(parts[c][i])
    for item in out.values():
        for m in money:
            item.setdefault(f"allocated_{m}", Decimal(0))
    return [out[k] for k in sorted(out, key=_sort_key)]


def _sort_key(key: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple((v is None, str(v) if v is not None else "") for v in key)
