"""The dashboard in headless Chromium against the running API (see conftest.py for the data)."""

from __future__ import annotations

import csv
import io
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import pyarrow.parquet as pq
import pytest

from api.app import create_app
from tests.dashboard.conftest import RUNAWAY, Dashboard, ServerThread, free_port, month_start

pytestmark = pytest.mark.integration

LAPTOP = {"width": 1366, "height": 900}
NARROW = {"width": 390, "height": 844}
TIMEOUT_MS = 60_000  # a loaded 2-core machine: generous, never a timing goal
CENT = Decimal("0.01")


@dataclass
class Tab:
    page: Any
    errors: list[str] = field(default_factory=list)

    def goto(self, dashboard: Dashboard, path: str) -> None:
        self.page.goto(dashboard.base_url + path)
        self.wait_ready()

    def wait_ready(self) -> None:
        self.page.wait_for_selector("body[data-ready=yes]", timeout=TIMEOUT_MS)

    def shot(self, dashboard: Dashboard, name: str) -> None:
        path = dashboard.artifacts / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 10_000


@pytest.fixture
def tab(browser: Any, dashboard: Dashboard) -> Iterator[Callable[..., Tab]]:
    """A new page, logged in with the named key (or not, with None); at the end, no console
    errors and no uncaught exceptions may have happened on it."""
    opened: list[Tab] = []

    def open_tab(key: str | None = "admin", viewport: dict[str, int] = LAPTOP) -> Tab:
        page = browser.new_page()
        page.set_viewport_size(viewport)
        page.set_default_timeout(TIMEOUT_MS)
        tab = Tab(page)
        page.on("console", lambda msg: tab.errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: tab.errors.append(f"uncaught: {exc}"))
        if key is not None:
            page.add_init_script(f"sessionStorage.setItem('agentledger.key', {dashboard.keys[key]!r});")
        opened.append(tab)
        return tab

    yield open_tab
    for t in opened:
        t.page.close()
    assert [e for t in opened for e in t.errors] == []


def cents(value: str) -> str:
    return f"${Decimal(value).quantize(CENT, rounding=ROUND_HALF_UP):,}"


def table_rows(page: Any, selector: str = "#report-table tbody tr") -> list[dict[str, str]]:
    """Each row of the on-screen table as {column: exact value} (data-exact, never display text)."""
    return page.eval_on_selector_all(
        selector,
        "rows => rows.map(r => Object.fromEntries([...r.querySelectorAll('td[data-col]')]"
        ".map(td => [td.dataset.col, td.dataset.exact])))",
    )


def month_params(dashboard: Dashboard) -> dict[str, str]:
    start, end = month_start(dashboard.now), month_start(dashboard.now, -1)
    return {"from": start.strftime("%Y-%m-%dT%H:%M:%SZ"), "to": end.strftime("%Y-%m-%dT%H:%M:%SZ")}


# -- every page renders ------------------------------------------------------------------------


def test_login_then_every_page_renders_without_console_errors(dashboard: Dashboard, tab: Callable[..., Tab]) -> None:
    t = tab(key=None)
    t.page.goto(dashboard.base_url + "/dashboard/overview")
    t.page.wait_for_url("**/dashboard/login", timeout=TIMEOUT_MS)  # no key yet: sent to log in
    t.page.wait_for_selector("body[data-ready=yes]")
    assert t.errors == ["Failed to load resource: the server responded with a status of 401 (Unauthorized)"]
    t.errors.clear()  # the probe for AGENTLEDGER_AUTH=disabled, refused as it must be
    t.page.fill("#api-key", "alk_not-a-real-key")
    t.page.click("button[type=submit]")
    t.page.wait_for_selector("#error:not([hidden])")
    assert "unknown or revoked" in t.page.inner_text("#error")
    assert t.errors == ["Failed to load resource: the server responded with a status of 401 (Unauthorized)"]
    t.errors.clear()  # that refusal was the point; nothing else may fail from here on
    t.page.fill("#api-key", dashboard.keys["admin"])
    t.page.click("button[type=submit]")
    t.page.wait_for_url("**/dashboard/overview")
    t.wait_ready()
    assert t.page.inner_text("#who").startswith("platform admin")
    # The chart library is the one served from the plotly package, not a CDN.
    assert t.page.evaluate("typeof window.Plotly.newPlot") == "function"
    sources = t.page.eval_on_selector_all("script[src]", "s => s.map(x => x.src)")
    assert sources and all(s.startswith(dashboard.base_url + "/dashboard/static/") for s in sources)
    month = dashboard.now.strftime("%Y-%m")
    this = dashboard.get("/v1/chargeback", group_by="team", **month_params(dashboard))
    assert t.page.get_attribute("#kpi-this", "data-exact") == this["total"]["cost"]
    assert cents(this["total"]["cost"]) in t.page.inner_text("#kpi-this")
    # Last month up to the same hour as now in this one, from the hourly rollup.
    end_text = t.page.get_attribute("#kpi-last", "data-to-date-end")
    hours = (dashboard.now - month_start(dashboard.now)) // timedelta(hours=1)
    if end_text is None:  # the first hour of a month: nothing to compare yet
        assert hours == 0
    else:
        end, last_start = datetime.fromisoformat(end_text), month_start(dashboard.now, 1)
        assert (end - last_start) // timedelta(hours=1) in (hours, hours + 1)  # an hour may turn meanwhile
        want = sum((e.cost for e in dashboard.events if last_start <= e.event.occurred_at < end), Decimal(0))
        assert Decimal(t.page.get_attribute("#kpi-last", "data-to-date")) == want
        assert f"{cents(str(want))} by the same hour" in t.page.inner_text("#kpi-last")
    flagged = dashboard.get("/v1/reports/flagged", **month_params(dashboard))
    assert flagged["unpriced"]["events"] > 0 and flagged["late"]["events"] > 0
    assert f"{flagged['unpriced']['events']} events" in t.page.inner_text("#kpi-unpriced")
    teams = t.page.evaluate("document.getElementById('chart-team-days').data.map(t => t.name)")
    assert sorted(teams) == ["(no team)", "payments", "search", "support"]
    t.shot(dashboard, "overview")
    assert month in t.page.input_value("#month")

    for page, ready in (
        ("chargeback", "#report-table"),
        ("budgets", "#policies .policy"),
        (f"sessions?id={RUNAWAY}", "#session-detail"),
        ("sessions?team=payments&period=month", "#sessions-table"),
    ):
        t.goto(dashboard, f"/dashboard/{page}")
        assert t.page.query_selector(ready) is not None, page
        t.shot(dashboard, page.split("?")[0] + ("-list" if "team=" in page else ""))


def test_pages_fit_a_narrow_window(dashboard: Dashboard, tab: Callable[..., Tab]) -> None:
    t = tab(viewport=NARROW)
    for page in ("overview", "chargeback", "budgets", f"sessions?id={RUNAWAY}"):
        t.goto(dashboard, f"/dashboard/{page}")
        # Wide tables scroll inside their own box; the page itself never scrolls sideways.
        overflow = t.page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, (page, overflow)
        t.shot(dashboard, f"narrow-{page.split('?')[0]}")


# -- chargeback: the table is the API's, to the cent; downloads are the table -------------------


def test_chargeback_table_totals_equal_the_api_to_the_cent(dashboard: Dashboard, tab: Callable[..., Tab]) -> None:
    t = tab(key="finance")
    start, end = month_start(dashboard.now, 1), month_start(dashboard.now, -1)
    t.goto(dashboard, f"/dashboard/chargeback?from={start:%Y-%m-%d}&to={end:%Y-%m-%d}&group_by=team,project,month")
    api = dashboard.get(
        "/v1/chargeback", key="finance", group_by="team,project,month", **{"from": f"{start:%Y-%m-%dT%H:%M:%SZ}"},
        to=f"{end:%Y-%m-%dT%H:%M:%SZ}",
    )  # fmt: skip
    assert api["source"] == "rollup_daily"
    total = t.page.eval_on_selector(
        "#report-total",
        "r => Object.fromEntries([...r.querySelectorAll('td[data-col]')].map(td => [td.dataset.col, td.dataset.exact]))",
    )
    assert total["cost"] == api["total"]["cost"]
    assert total["list_cost"] == api["total"]["list_cost"]
    assert int(total["calls"]) == api["total"]["calls"] == len(dashboard.events)
    # What is shown is the exact total rounded half up to the cent.
    shown = t.page.inner_text("#report-total td[data-col=cost]")
    assert shown == cents(api["total"]["cost"])
    # And the total is the independent Decimal sum of what went into the pipeline.
    assert Decimal(total["cost"]) == sum((e.cost for e in dashboard.events), Decimal(0))
    rows = table_rows(t.page)
    assert len(rows) == len(api["rows"])
    for row, want in zip(rows, api["rows"], strict=True):
        assert row["cost"] == want["cost"] and int(row["calls"]) == want["calls"]
        assert row["team"] == (want["group"]["team"] or "") and row["month"] == want["group"]["month"]
    unallocated = sum((Decimal(r["cost"]) for r in rows if r["team"] == ""), Decimal(0))
    assert unallocated > 0
    # Shared cost distributed proportionally by team: the same figures as the API's, and the
    # no-team cost spread over the teams to the last decimal place.
    t.page.select_option("#unallocated", "proportional")
    t.page.click("#show")
    t.wait_ready()
    t.page.wait_for_selector("#report-table td[data-col=allocated_cost]")
    api = dashboard.get(
        "/v1/chargeback", key="finance", group_by="team,project,month", unallocated="proportional",
        allocate_by="team", **{"from": f"{start:%Y-%m-%dT%H:%M:%SZ}"}, to=f"{end:%Y-%m-%dT%H:%M:%SZ}",
    )  # fmt: skip
    rows = table_rows(t.page)
    assert [r["allocated_cost"] for r in rows] == [r["allocated_cost"] for r in api["rows"]]
    assert {r["team"] for r in rows} == {"payments", "search", "support"}
    assert sum((Decimal(r["allocated_cost"]) for r in rows), Decimal(0)) == unallocated
    assert sum((Decimal(r["cost"]) for r in rows), Decimal(0)) == Decimal(api["total"]["cost"])
    assert t.page.get_attribute("#report-total td[data-col=cost]", "data-exact") == api["total"]["cost"]
    t.shot(dashboard, "chargeback-proportional")


def _download(t: Tab, button: str) -> bytes:
    with t.page.expect_download(timeout=TIMEOUT_MS) as info:
        t.page.click(button)
    path = info.value.path()
    assert path is not None
    with open(path, "rb") as f:
        return f.read()


def test_downloads_hold_exactly_the_rows_on_screen(dashboard: Dashboard, tab: Callable[..., Tab]) -> None:
    t = tab(key="finance")
    t.goto(dashboard, "/dashboard/chargeback?group_by=team,customer&model=gpt-4o")
    rows = table_rows(t.page)
    assert rows and all(set(r) >= {"team", "customer", "cost", "calls"} for r in rows)
    screen = [(r["team"], r["customer"], r["cost"], r["list_cost"], r["calls"], r["input_tokens"]) for r in rows]

    text = _download(t, "#download-csv").decode()
    csv_rows = list(csv.DictReader(io.StringIO(text)))
    assert [
        (r["team"], r["customer"], r["cost"], r["list_cost"], r["calls"], r["input_tokens"]) for r in csv_rows
    ] == screen

    table = pq.read_table(io.BytesIO(_download(t, "#download-parquet"))).to_pylist()
    parquet_rows = [
        (r["team"] or "", r["customer"] or "", f"{r['cost']:.12f}", f"{r['list_cost']:.12f}", str(r["calls"]), str(r["input_tokens"]))
        for r in table
    ]  # fmt: skip
    assert parquet_rows == screen

    focus = list(csv.DictReader(io.StringIO(_download(t, "#download-focus").decode())))
    screen_total = t.page.get_attribute("#report-total td[data-col=cost]", "data-exact")
    assert sum((Decimal(r["BilledCost"]) for r in focus), Decimal(0)) == Decimal(screen_total)
    assert {r["x_Model"] for r in focus} == {"gpt-4o"}  # the filter on screen went into the file


# -- isolation: a team key sees and downloads its team only --------------------------------------


def test_team_key_sees_and_downloads_only_its_team(dashboard: Dashboard, tab: Callable[..., Tab]) -> None:
    t = tab(key="payments")
    t.goto(dashboard, "/dashboard/overview")
    assert t.page.inner_text("#team-badge") == "team payments"
    teams = t.page.evaluate("document.getElementById('chart-team-days').data.map(t => t.name)")
    assert teams == ["payments"]
    mine = dashboard.get("/v1/chargeback", key="payments", group_by="team", **month_params(dashboard))
    everyone = dashboard.get("/v1/chargeback", key="admin", group_by="team", **month_params(dashboard))
    assert mine["total"]["cost"] != everyone["total"]["cost"]
    assert t.page.get_attribute("#kpi-this", "data-exact") == mine["total"]["cost"]
    t.shot(dashboard, "team-overview")

    # Even asked for every team, the table and the files hold payments only.
    t.goto(dashboard, "/dashboard/chargeback?group_by=team,project")
    assert t.page.get_attribute("#filter-team", "readonly") is not None
    rows = table_rows(t.page)
    assert rows and {r["team"] for r in rows} == {"payments"}
    csv_rows = list(csv.DictReader(io.StringIO(_download(t, "#download-csv").decode())))
    assert csv_rows and {r["team"] for r in csv_rows} == {"payments"}
    focus = list(csv.DictReader(io.StringIO(_download(t, "#download-focus").decode())))
    assert focus and {r["x_Team"] for r in focus} == {"payments"}
    # A hand-made request for another team's file, with the page's own key: refused.
    status = t.page.evaluate(
        """async () => (await fetch('/v1/chargeback?group_by=team&team=search&format=csv',
             {headers: {Authorization: 'Bearer ' + sessionStorage.getItem('agentledger.key')}})).status"""
    )
    assert status == 403
    assert t.errors.pop() == "Failed to load resource: the server responded with a status of 403 (Forbidden)"

    t.goto(dashboard, "/dashboard/budgets")
    policies = t.page.eval_on_selector_all("#policies .policy", "ps => ps.map(p => p.dataset.policy)")
    assert policies == ["payments-monthly"]
    alerts = t.page.inner_text("#alerts-table")
    assert "payments-monthly" in alerts and "search-agents-7d" not in alerts

    t.goto(dashboard, "/dashboard/sessions?period=month")
    listed = t.page.eval_on_selector_all(
        "#sessions-table tbody tr td:first-child", "tds => tds.map(td => td.innerText)"
    )
    assert listed and all(s.startswith("payments-") for s in listed)
    # Another team's session does not exist for this key.
    t.page.goto(f"{dashboard.base_url}/dashboard/sessions?id={RUNAWAY}")
    t.page.wait_for_selector("body[data-ready=error]", timeout=TIMEOUT_MS)
    assert "No session" in t.page.inner_text("#error")
    assert t.page.query_selector("#session-detail") is None
    # Chromium logs the refused fetches; they are the point here, and the only errors allowed.
    assert t.errors and all("status of 404 (Not Found)" in e for e in t.errors)
    t.errors.clear()


# -- budgets and sessions --------------------------------------------------------------------------


def test_budgets_show_spend_against_limits_and_a_team_key_can_create_its_policy(
    dashboard: Dashboard, tab: Callable[..., Tab]
) -> None:
    t = tab(key="admin")
    t.goto(dashboard, "/dashboard/budgets")
    spend = dashboard.get("/v1/budgets/payments-monthly/spend")
    [row] = spend["scopes"]
    assert row["scope_value"] == "team=payments"
    mine = dashboard.get("/v1/chargeback", key="admin", group_by="team", team="payments", **month_params(dashboard))
    assert row["spent_cost"] == mine["total"]["cost"]  # the calendar month, through the rollup
    bar = t.page.query_selector("[data-policy=payments-monthly] .budget-row")
    assert bar is not None and bar.get_attribute("data-spent") == row["spent_cost"]
    assert len(t.page.query_selector_all("[data-policy=payments-monthly] .mark")) == 3
    # One budget per session: read when asked (it cannot come from a rollup), the 10 closest shown.
    assert t.page.query_selector("[data-policy=session-tokens] .budget-row") is None
    t.page.click("[data-policy=session-tokens] .load-spend")
    t.page.wait_for_selector("[data-policy=session-tokens] .budget-row")
    fractions = t.page.eval_on_selector_all(
        "[data-policy=session-tokens] .budget-row", "rs => rs.map(r => Number(r.dataset.fraction))"
    )
    assert len(fractions) == 10 and fractions == sorted(fractions, reverse=True)
    every = dashboard.get("/v1/budgets/session-tokens/spend")["scopes"]
    assert fractions[0] == max(float(s["fraction"]) for s in every)
    assert "failing" in t.page.inner_text("#alerts-table") and "delivered" in t.page.inner_text("#alerts-table")

    p = tab(key="payments")
    p.goto(dashboard, "/dashboard/budgets")
    p.page.click("#new-policy")
    p.page.fill("#policy-policy_id", "payments-daily")
    p.page.fill("#policy-name", "Payments daily")
    p.page.select_option("#policy-window", "calendar_day")
    p.page.select_option("#policy-action", "pause")
    p.page.fill("#policy-limit_cost", "12.5")
    assert p.page.input_value("#policy-match_team") == "payments"
    p.page.click("#policy-save")
    p.page.wait_for_selector("[data-policy=payments-daily]", timeout=TIMEOUT_MS)
    p.wait_ready()
    created = dashboard.get("/v1/budgets/payments-daily", key="payments")
    assert created["limit_cost"] == "12.5" and created["match"] == {"team": "payments"}
    assert created["action"] == "pause" and created["window"] == "calendar_day"
    p.shot(dashboard, "budgets-team")
    # Edit it: the form comes back filled in, and the change is read back from the topic.
    p.page.click("[data-policy=payments-daily] button.edit")
    assert p.page.input_value("#policy-limit_cost") == "12.5"
    assert p.page.get_attribute("#policy-policy_id", "readonly") is not None
    p.page.fill("#policy-limit_cost", "20")
    p.page.fill("#policy-thresholds", "0.9, 1")
    with p.page.expect_navigation(timeout=TIMEOUT_MS):  # a saved policy reloads the page
        p.page.click("#policy-save")
    p.wait_ready()
    edited = dashboard.get("/v1/budgets/payments-daily", key="payments")
    assert (edited["limit_cost"], edited["thresholds"]) == ("20", ["0.9", "1"])
    assert "$20.00" in p.page.inner_text("[data-policy=payments-daily]")
    # And delete it (the page asks first).
    p.page.once("dialog", lambda dialog: dialog.accept())
    with p.page.expect_navigation(timeout=TIMEOUT_MS):
        p.page.click("[data-policy=payments-daily] button.danger")
    p.wait_ready()
    assert p.page.query_selector("[data-policy=payments-daily]") is None
    r = dashboard.http.get(
        "/v1/budgets/payments-daily", headers={"Authorization": f"Bearer {dashboard.keys['payments']}"}
    )
    assert r.status_code == 404


def test_session_page_shows_calls_budgets_and_the_signal_that_stopped_it(
    dashboard: Dashboard, tab: Callable[..., Tab]
) -> None:
    t = tab(key="admin")
    t.goto(dashboard, "/dashboard/sessions?agent_type=researcher&state=killed")
    listed = t.page.eval_on_selector_all(
        "#sessions-table tbody tr td:first-child", "tds => tds.map(td => td.innerText)"
    )
    assert listed == [RUNAWAY]
    t.page.click(f"#sessions-table button:text('{RUNAWAY}')")
    t.page.wait_for_selector("#session-detail")
    t.wait_ready()
    assert t.page.inner_text("#session-state") == "killed"
    stopped = t.page.inner_text("#stopped-by")
    assert "kill by policy search-agents-7d" in stopped and "reached: cost 2.5125 of 2.5" in stopped
    session = dashboard.get(f"/v1/sessions/{RUNAWAY}")
    assert t.page.get_attribute("#session-cost", "data-exact") == session["cost"]
    points = t.page.evaluate("document.getElementById('chart-session').data[1].x.length")
    assert points == session["calls"] == 12
    covering = t.page.eval_on_selector_all("#session-detail .budget-row", "rs => rs.map(r => r.dataset.policy)")
    assert sorted(covering) == ["search-agents-7d", "session-tokens"]


def test_money_is_rounded_half_up_on_the_decimal_text_never_through_a_float(
    dashboard: Dashboard, tab: Callable[..., Tab]
) -> None:
    rng = random.Random(7)
    cases = ["0", "12", "0.004999999999", "0.005", "1.995", "9.999", "-0.004", "-1.005", "0.000000000001"]
    cases += [
        "99999999999999.995000000000",
        "0.015",
        "1.005",
        "2.675",
        "1.000000000000",
    ]  # floats get 1.005, 2.675 wrong
    cases += [f"{rng.randrange(10**16)}.{rng.randrange(10**12):012d}" for _ in range(300)]
    t = tab()
    t.goto(dashboard, "/dashboard/login")
    got = t.page.evaluate(
        "async (cases) => { const m = await import('/dashboard/static/common.js');"
        " return cases.map(c => [m.roundMoney(c, 2), m.roundMoney(c, 12), m.fmtMoney(c)]); }",
        cases,
    )
    for case, (two, twelve, shown) in zip(cases, got, strict=True):
        want = Decimal(case).quantize(CENT, rounding=ROUND_HALF_UP)
        assert two == f"{want:f}".replace("-0.00", "0.00"), case
        assert Decimal(twelve) == Decimal(case).quantize(Decimal("1e-12")), case
        assert shown == cents(case).replace("$-0.00", "$0.00"), case


def test_without_auth_on_loopback_the_dashboard_needs_no_key(dashboard: Dashboard, tab: Callable[..., Tab]) -> None:
    """`agentledger up` runs with AGENTLEDGER_AUTH=disabled on loopback: no login page then."""
    settings = dashboard.settings.model_copy(update={"auth": "disabled"})
    port = free_port()
    server = ServerThread(create_app(settings, dashboard.warehouse, with_sink=False), port)
    server.start(f"http://127.0.0.1:{port}")
    try:
        t = tab(key=None)
        t.page.goto(f"http://127.0.0.1:{port}/dashboard/overview")
        t.wait_ready()
        assert t.page.url.endswith("/dashboard/overview")
        assert t.page.inner_text("#who").startswith("auth disabled")
        everyone = dashboard.get("/v1/chargeback", group_by="team", **month_params(dashboard))
        assert t.page.get_attribute("#kpi-this", "data-exact") == everyone["total"]["cost"]
    finally:
        server.stop()
