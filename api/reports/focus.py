"""FOCUS 1.2 (FinOps Open Cost and Usage Specification) export of chargeback rows.

The column list below is the one the export is validated against (tests/api/test_reports_focus.py):
every FOCUS 1.2 column with its data type, feature level and whether the spec allows null.
Source: FinOps Foundation, FOCUS specification v1.2, `specification/columns/*.md` in
github.com/FinOps-Open-Cost-and-Usage-Spec/FOCUS_Spec (tag v1.2), cross-checked with
Microsoft's FocusCost 1.2 dataset metadata (learn.microsoft.com/cloud-computing/finops/focus/metadata).

One FOCUS row per UTC day (ChargePeriod) x team x project x customer x agent type x provider x
model x tool x currency (x session when asked). With shared cost distributed
(`unallocated=proportional|even`), rows without a team (or the chosen dimension) are split
over the teams exactly as in the JSON report; `x_AllocatedCost` says how much of a row came so. agentledger is the invoice issuer of an
internal chargeback; the LLM provider is ProviderName/PublisherName. Custom columns carry the
`x_` prefix the spec reserves for them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

import orjson
import pyarrow as pa

from api.reports.export import MONEY_TYPE

FOCUS_VERSION = "1.2"
FocusType = Literal["Decimal", "String", "DateTime", "JSON"]
Level = Literal["Mandatory", "Conditional", "Recommended"]


@dataclass(frozen=True, slots=True)
class FocusColumn:
    name: str
    type: FocusType
    level: Level
    nullable: bool
    """Whether the spec allows null in this column."""


def _c(name: str, type_: FocusType, level: Level, nullable: bool) -> FocusColumn:
    return FocusColumn(name, type_, level, nullable)


M: Level = "Mandatory"
C: Level = "Conditional"
R: Level = "Recommended"
FOCUS_1_2_COLUMNS: tuple[FocusColumn, ...] = (
    _c("AvailabilityZone", "String", R, True),
    _c("BilledCost", "Decimal", M, False),
    _c("BillingAccountId", "String", M, False),
    _c("BillingAccountName", "String", M, True),
    _c("BillingAccountType", "String", C, False),
    _c("BillingCurrency", "String", M, False),
    _c("BillingPeriodEnd", "DateTime", M, False),
    _c("BillingPeriodStart", "DateTime", M, False),
    _c("CapacityReservationId", "String", C, True),
    _c("CapacityReservationStatus", "String", C, True),
    _c("ChargeCategory", "String", M, False),
    _c("ChargeClass", "String", M, True),
    _c("ChargeDescription", "String", M, True),
    _c("ChargeFrequency", "String", R, False),
    _c("ChargePeriodEnd", "DateTime", M, False),
    _c("ChargePeriodStart", "DateTime", M, False),
    _c("CommitmentDiscountCategory", "String", C, True),
    _c("CommitmentDiscountId", "String", C, True),
    _c("CommitmentDiscountName", "String", C, True),
    _c("CommitmentDiscountQuantity", "Decimal", C, True),
    _c("CommitmentDiscountStatus", "String", C, True),
    _c("CommitmentDiscountType", "String", C, True),
    _c("CommitmentDiscountUnit", "String", C, True),
    _c("ConsumedQuantity", "Decimal", C, True),
    _c("ConsumedUnit", "String", C, True),
    _c("ContractedCost", "Decimal", M, False),
    _c("ContractedUnitPrice", "Decimal", C, True),
    _c("EffectiveCost", "Decimal", M, False),
    _c("InvoiceId", "String", R, True),
    _c("InvoiceIssuerName", "String", M, False),
    _c("ListCost", "Decimal", M, False),
    _c("ListUnitPrice", "Decimal", C, True),
    _c("PricingCategory", "String", C, True),
    _c("PricingCurrency", "String", C, True),
    _c("PricingCurrencyContractedUnitPrice", "Decimal", C, True),
    _c("PricingCurrencyEffectiveCost", "Decimal", C, True),
    _c("PricingCurrencyListUnitPrice", "Decimal", C, True),
    _c("PricingQuantity", "Decimal", M, True),
    _c("PricingUnit", "String", M, True),
    _c("ProviderName", "String", M, False),
    _c("PublisherName", "String", M, False),
    _c("RegionId", "String", C, True),
    _c("RegionName", "String", C, True),
    _c("ResourceId", "String", C, True),
    _c("ResourceName", "String", C, True),
    _c("ResourceType", "String", C, True),
    _c("ServiceCategory", "String", M, False),
    _c("ServiceName", "String", M, False),
    _c("ServiceSubcategory", "String", R, True),
    _c("SkuId", "String", C, True),
    _c("SkuMeter", "String", C, True),
    _c("SkuPriceDetails", "JSON", C, True),
    _c("SkuPriceId", "String", C, True),
    _c("SubAccountId", "String", C, True),
    _c("SubAccountName", "String", C, True),
    _c("SubAccountType", "String", C, True),
    _c("Tags", "JSON", C, True),
)
"""Every FOCUS 1.2 column (alphabetical), as the export is validated against."""

CHARGE_CATEGORIES = frozenset({"Usage", "Purchase", "Tax", "Credit", "Adjustment"})
SERVICE_CATEGORY = "AI and Machine Learning"

EXTENSION_COLUMNS: tuple[tuple[str, str], ...] = (
    ("x_InputTokens", "int"),
    ("x_OutputTokens", "int"),
    ("x_CacheReadTokens", "int"),
    ("x_CacheWriteTokens", "int"),
    ("x_ReasoningTokens", "int"),
    ("x_Calls", "int"),
    ("x_SessionId", "String"),
    ("x_AgentType", "String"),
    ("x_Model", "String"),
    ("x_Provider", "String"),
    ("x_ToolName", "String"),
    ("x_Team", "String"),
    ("x_Project", "String"),
    ("x_Customer", "String"),
    ("x_Allocation", "String"),
    ("x_AllocatedCost", "Decimal"),
)
COLUMNS: tuple[str, ...] = tuple(c.name for c in FOCUS_1_2_COLUMNS) + tuple(n for n, _ in EXTENSION_COLUMNS)

GROUP_BY: tuple[str, ...] = (
    "day", "team", "project", "customer", "agent_type", "provider", "model", "tool_name", "currency",
)  # fmt: skip
"""The report grouping a FOCUS export is built from (plus session_id when asked)."""
PERIOD_GROUP_BY: tuple[str, ...] = (*GROUP_BY, "charge_category")
"""The grouping of a billing period's FOCUS export (api.periods.PERIOD_DIMENSIONS)."""

_ARROW = {"Decimal": MONEY_TYPE, "String": pa.string(), "JSON": pa.string(), "DateTime": pa.timestamp("s", tz="UTC")}


def arrow_types() -> dict[str, pa.DataType]:
    types = {c.name: _ARROW[c.type] for c in FOCUS_1_2_COLUMNS}
    types.update({n: {"int": pa.int64(), "Decimal": MONEY_TYPE}.get(t, pa.string()) for n, t in EXTENSION_COLUMNS})
    return types


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _month_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime(day.year, day.month, 1, tzinfo=UTC)
    end = datetime(day.year + (day.month == 12), day.month % 12 + 1, 1, tzinfo=UTC)
    return start, end


TOKEN_FIELDS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")


def focus_row(row: Mapping[str, Any], *, billing_account: str, billing_period: date | None = None) -> dict[str, Any]:
    """One FOCUS 1.2 row (plus x_ columns) from a report row grouped by GROUP_BY.

    Without `billing_period` a row is billed in the month it occurred in. With it (a billing
    period's export, rows grouped by PERIOD_GROUP_BY), a row that occurred in an earlier, closed
    month is a `Correction` of that month's invoice, and adjustment events are `Adjustment`s."""
    day: date = row["day"]
    period_start, period_end = _month_bounds(billing_period or day)
    category = row.get("charge_category") or "Usage"
    correction = billing_period is not None and (day.year, day.month) != (billing_period.year, billing_period.month)
    provider = row.get("provider") or "agentledger"
    model, tool = row.get("model"), row.get("tool_name")
    tokens = sum(int(row[t]) for t in TOKEN_FIELDS)
    if model is not None:
        quantity, unit, sku = Decimal(tokens), "Tokens", model
        service, subcategory = f"{provider} {model}", "Generative AI"
        description = f"{model} calls by {row['agent_type']} agents"
    else:
        quantity, unit, sku = Decimal(int(row["calls"])), "Requests", tool or "unknown"
        service, subcategory = f"tool {tool or 'unknown'}", "Other (AI and Machine Learning)"
        description = f"{tool or 'unknown'} tool calls by {row['agent_type']} agents"
    team, project, customer = row.get("team"), row.get("project"), row.get("customer")
    cost, list_cost = Decimal(row["cost"]), Decimal(row["list_cost"])
    tags = {k: v for k, v in (("team", team), ("project", project), ("customer", customer)) if v is not None}
    out: dict[str, Any] = dict.fromkeys(COLUMNS)
    out.update(
        {
            "BilledCost": cost,
            "BillingAccountId": billing_account,
            "BillingAccountName": billing_account,
            "BillingAccountType": "Organization",
            "BillingCurrency": row.get("currency") or "USD",
            "BillingPeriodStart": period_start,
            "BillingPeriodEnd": period_end,
            "ChargeCategory": category,
            "ChargeClass": "Correction" if correction else None,
            "ChargeDescription": description,
            "ChargeFrequency": "Usage-Based",
            "ChargePeriodStart": _midnight(day),
            "ChargePeriodEnd": _midnight(day) + timedelta(days=1),
            # consumption is what usage rows measure; FOCUS wants it null on other categories
            "ConsumedQuantity": quantity if category == "Usage" else None,
            "ConsumedUnit": unit if category == "Usage" else None,
            # The rate card's price is the contracted one: effective = contracted, list beside it.
            "ContractedCost": cost,
            "EffectiveCost": cost,
            "InvoiceIssuerName": "agentledger",
            "ListCost": list_cost,
            "PricingCategory": "Standard",
            "PricingCurrency": row.get("currency") or "USD",
            "PricingCurrencyEffectiveCost": cost,
            "PricingQuantity": quantity,
            "PricingUnit": unit,
            "ProviderName": provider,
            "PublisherName": provider,
            "ResourceId": f"{project or '-'}/{row['agent_type']}",
            "ResourceName": row["agent_type"],
            "ResourceType": "AI Agent",
            "ServiceCategory": SERVICE_CATEGORY,
            "ServiceName": service,
            "ServiceSubcategory": subcategory,
            "SkuId": sku,
            "SkuMeter": unit,
            "SkuPriceId": sku,
            "SubAccountId": team,
            "SubAccountName": team,
            "SubAccountType": "Team" if team is not None else None,
            "Tags": orjson.dumps(tags).decode(),
            "x_InputTokens": int(row["input_tokens"]),
            "x_OutputTokens": int(row["output_tokens"]),
            "x_CacheReadTokens": int(row["cache_read_tokens"]),
            "x_CacheWriteTokens": int(row["cache_write_tokens"]),
            "x_ReasoningTokens": int(row["reasoning_tokens"]),
            "x_Calls": int(row["calls"]),
            "x_SessionId": row.get("session_id"),
            "x_AgentType": row["agent_type"],
            "x_Model": model,
            "x_Provider": row.get("provider"),
            "x_ToolName": tool,
            "x_Team": team,
            "x_Project": project,
            "x_Customer": customer,
            # with shared cost distributed: "direct", and the part of BilledCost that came from
            # rows without a value in the allocation dimension
            "x_Allocation": row.get("allocation"),
            "x_AllocatedCost": row.get("allocated_cost"),
        }
    )
    return out


def focus_rows(
    rows: Sequence[Mapping[str, Any]], *, billing_account: str = "agentledger", billing_period: date | None = None
) -> list[dict[str, Any]]:
    return [focus_row(r, billing_account=billing_account, billing_period=billing_period) for r in rows]
