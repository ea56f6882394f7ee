"""Pure parts: the budget-spend queries, the flagged-events queries, the dashboard's own routes."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from fastapi.testclient import TestClient

from agentledger.settings import Settings
from api.app import create_app
from api.budget_status import policy_filters, scope_value_text, spend_query, used_fraction
from api.dashboard.routes import ASSETS, plotly_version
from api.queries import DAILY, HOURLY, LEDGER, flagged_events_queries
from schemas.budgets import BudgetPolicy

pytestmark = pytest.mark.unit

NOW = datetime(2026, 3, 20, 12, 34, 56, tzinfo=UTC)


def policy(**fields: object) -> BudgetPolicy:
    values: dict[str, object] = {"policy_id": "p", "scope": ("team",), "limit_cost": Decimal("10")}
    values.update(fields)
    return BudgetPolicy.model_validate(values)


def test_policy_filters_merge_the_match_with_the_narrowing_and_detect_contradictions() -> None:
    p = policy(match={"team": "payments", "agent_type": "bot"})
    assert policy_filters(p, {}) == {"team": "payments", "agent_type": "bot"}
    assert policy_filters(p, {"team": "payments", "session_id": "s1"}) == {
        "team": "payments", "agent_type": "bot", "session_id": "s1",
    }  # fmt: skip
    assert policy_filters(p, {"team": "search"}) is None


@pytest.mark.parametrize(
    ("window", "timezone", "source", "start"),
    [
        ("calendar_month", "UTC", DAILY, datetime(2026, 3, 1, tzinfo=UTC)),
        ("calendar_day", "Europe/Paris", HOURLY, datetime(2026, 3, 19, 23, tzinfo=UTC)),
        ("rolling_7d", "UTC", HOURLY, datetime(2026, 3, 13, 13, tzinfo=UTC)),
        ("rolling_1h", "UTC", LEDGER, datetime(2026, 3, 20, 11, 35, tzinfo=UTC)),
        ("lifetime", "UTC", DAILY, None),
    ],
)
def test_spend_query_reads_the_cheapest_exact_source_from_the_window_start(window, timezone, source, start) -> None:
    q = spend_query("db", policy(window=window, timezone=timezone, match={"team": "x' OR 1=1"}), NOW, {}, limit=50)
    assert q is not None
    assert (q.source, q.window_start, q.group_by) == (source, start, ("team",))
    assert "x' OR 1=1" not in q.sql and "x' OR 1=1" in q.params.values()  # bound, never pasted
    assert "ORDER BY cost DESC" in q.sql and q.params["limit"] == 50


def test_spend_query_by_session_reads_the_ledger() -> None:
    q = spend_query("db", policy(scope=("session",), limit_tokens=100, limit_cost=None), NOW, {"session_id": "s"}, 1)
    assert q is not None and q.source == LEDGER and q.group_by == ("session_id",)
    assert spend_query("db", policy(match={"team": "a"}), NOW, {"team": "b"}, 1) is None


def test_used_fraction_is_the_larger_of_the_limits_used() -> None:
    both = policy(limit_cost=Decimal("10"), limit_tokens=1000)
    assert used_fraction(both, Decimal("2.5"), 900) == Decimal("0.9000")
    assert used_fraction(both, Decimal("25"), 10) == Decimal("2.5000")
    assert used_fraction(policy(limit_cost=Decimal("3")), Decimal("1"), 10**9) == Decimal("0.3333")


def test_scope_value_text_names_each_dimension_or_none() -> None:
    p = policy(scope=("team", "agent_type"))
    assert scope_value_text(p, {"team": "t1", "agent_type": "x"}) == "team=t1|agent_type=x"
    assert scope_value_text(p, {"team": None, "agent_type": "x"}) is None


def test_flagged_queries_bind_filters_and_dedupe_the_raw_flags() -> None:
    (unpriced_sql, unpriced_params), (flags_sql, flags_params) = flagged_events_queries(
        "db", datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC), {"team": "pay'ments"}
    )
    assert "event_ledger" in unpriced_sql and "countIf(unpriced)" in unpriced_sql
    assert "priced_events" in flags_sql and "(late OR clamped)" in flags_sql and "GROUP BY event_id" in flags_sql
    for sql, params in ((unpriced_sql, unpriced_params), (flags_sql, flags_params)):
        assert "pay'ments" not in sql and params["f0"] == "pay'ments"
        assert "kind != 'call_started'" in sql


# -- the dashboard's routes (no lifespan: they touch no state) --------------------------------------


@pytest.fixture
def client() -> TestClient:
    return TestClient(create_app(Settings(auth="disabled", api_host="127.0.0.1"), with_sink=False))


def test_pages_are_served_with_a_strict_content_security_policy(client: TestClient) -> None:
    for page in ("overview", "chargeback", "budgets", "sessions", "login"):
        r = client.get(f"/dashboard/{page}")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "connect-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert f'src="/dashboard/static/{page}.js"' in r.text
        assert f"/dashboard/static/plotly-{plotly_version()}.min.js" in r.text
        assert "http://" not in r.text and "https://" not in r.text  # nothing from elsewhere
    assert client.get("/dashboard", follow_redirects=False).headers["location"] == "/dashboard/overview"
    assert client.get("/dashboard/secrets").status_code == 404


def test_only_listed_assets_are_served(client: TestClient) -> None:
    for name, media in ASSETS.items():
        r = client.get(f"/dashboard/static/{name}")
        assert r.status_code == 200 and r.headers["content-type"] == media
        assert "https://" not in r.text and "http://" not in r.text
    for name in ("routes.py", "..%2F__init__.py", "..%2F..%2Fapp.py", "page.html", "%2Fetc%2Fpasswd"):
        assert client.get(f"/dashboard/static/{name}").status_code == 404, name


def test_plotly_comes_from_the_installed_package_compressed_when_asked(client: TestClient) -> None:
    url = f"/dashboard/static/plotly-{plotly_version()}.min.js"
    plain = client.get(url, headers={"Accept-Encoding": "identity"})
    assert plain.status_code == 200 and "content-encoding" not in plain.headers
    assert len(plain.content) > 1_000_000 and b"plotly.js" in plain.content[:2000]
    zipped = client.get(url, headers={"Accept-Encoding": "gzip"})
    assert (
        zipped.headers["content-encoding"] == "gzip" and int(zipped.headers["content-length"]) < len(plain.content) / 2
    )
    assert zipped.content == plain.content  # httpx decoded it: the same bundle
    assert client.get("/dashboard/static/plotly-0.0.1.min.js").status_code == 404
