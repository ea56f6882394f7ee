import {
  allAnswered, api, content, el, fmtInt, fmtMoney, fmtTime, isoInstant, monthStart, percent, plot, showError, start,
} from "./common.js";

const STATES = ["", "active", "warned", "downgraded", "paused", "killed"];
const PERIODS = { "24h": "last 24 hours", "7d": "last 7 days", month: "this month (UTC)" };

// Sessions by spend over a bounded period read the ledger for that period only (fast over
// millions of events); a state filter asks /v1/sessions, which starts from the (few) stopped ones.
function periodStart(period) {
  const now = new Date();
  if (period === "month") return isoInstant(monthStart(now.getUTCFullYear(), now.getUTCMonth()));
  const hours = period === "7d" ? 168 : 24;
  const start = new Date(now.getTime() - hours * 3600 * 1000);
  start.setUTCMinutes(0, 0, 0);
  return isoInstant(start);
}

function searchForm(state, me, onSearch) {
  const field = (label, control) => el("label", { class: "field" }, el("span", {}, label), control);
  const node = el("form", { class: "card controls", id: "session-search" },
    el("div", { class: "row" },
      field("Session id", el("input", { name: "id", id: "session-id", value: state.id || "", maxlength: "128", placeholder: "exact id" })),
      field("Agent type", el("input", { name: "agent_type", id: "agent-type", value: state.agent_type || "", maxlength: "128", placeholder: "any" })),
      field("Team", el("input", { name: "team", id: "team", value: me.team || state.team || "", maxlength: "128", placeholder: "any", readonly: me.team ? true : null })),
      field("State", el("select", { name: "state", id: "state" }, STATES.map((s) => el("option", { value: s, selected: s === (state.state || "") }, s || "any")))),
      field("Spend over", el("select", { name: "period", id: "period" }, Object.entries(PERIODS).map(([v, label]) => el("option", { value: v, selected: v === (state.period || "24h") }, label)))),
      el("div", { class: "field" }, el("span", {}, "\u00a0"), el("button", { type: "submit", class: "primary" }, "Search"))));
  node.addEventListener("submit", (event) => {
    event.preventDefault();
    const d = new FormData(node);
    const next = {};
    for (const name of ["id", "agent_type", "team", "state", "period"]) {
      const value = String(d.get(name) || "").trim();
      if (value) next[name] = value;
    }
    onSearch(next);
  });
  return node;
}

function listTable(sessions, open, withState) {
  if (!sessions.length) return el("p", { class: "empty" }, "No sessions match.");
  const heads = withState ? ["session", "state", "calls", "cost", "last event", "status at"] : ["session", "calls", "cost"];
  return el("div", { class: "table-wrap" }, el("table", { class: "report", id: "sessions-table" },
    el("thead", {}, el("tr", {}, heads.map((h) => el("th", { class: h === "calls" || h === "cost" ? "num" : "" }, h)))),
    el("tbody", {}, sessions.map((s) => el("tr", {},
      el("td", {}, el("button", { type: "button", class: "link", onclick: () => open(s.session_id) }, s.session_id)),
      withState ? el("td", {}, el("span", { class: `badge state-${s.state}` }, s.state)) : null,
      el("td", { class: "num" }, fmtInt(s.calls)), el("td", { class: "num", dataset: { exact: s.cost } }, fmtMoney(s.cost)),
      withState ? [el("td", {}, fmtTime(s.last_event_at)), el("td", {}, fmtTime(s.status_updated_at))] : null)))));
}

function timeline(node, events, signals) {
  const charged = events.filter((e) => e.kind !== "call_started");
  if (!charged.length) {
    node.replaceChildren(el("p", { class: "empty" }, "No charged calls."));
    return;
  }
  let running = 0;
  const cumulative = charged.map((e) => (running += Number(e.cost)));
  const what = (e) => (e.model ? `${e.provider}/${e.model}` : e.tool_name || e.kind);
  const traces = [
    { type: "scatter", mode: "lines", name: "spend so far", x: charged.map((e) => e.occurred_at), y: cumulative, line: { shape: "hv", color: "#3b6fb6" }, hovertemplate: "%{x}<br>$%{y:,.4f}<extra></extra>" },
    { type: "scatter", mode: "markers", name: "calls", x: charged.map((e) => e.occurred_at), y: charged.map((e) => Number(e.cost)), yaxis: "y2",
      marker: { size: 7, color: charged.map((e) => (e.unpriced ? "#c0392b" : "#7a8fa6")) },
      text: charged.map((e) => `${what(e)} · ${fmtInt(e.input_tokens + e.output_tokens)} tokens · ${fmtMoney(e.cost, 6)}`), hovertemplate: "%{x}<br>%{text}<extra></extra>" },
  ];
  const shapes = signals.map((s) => ({ type: "line", xref: "x", yref: "paper", x0: s.issued_at, x1: s.issued_at, y0: 0, y1: 1, line: { color: s.action === "kill" ? "#c0392b" : "#d68910", dash: "dot" } }));
  const annotations = signals.map((s) => ({ x: s.issued_at, y: 1, yref: "paper", text: s.action, showarrow: false, yanchor: "bottom", font: { size: 11 } }));
  plot(node, traces, {
    xaxis: { type: "date" }, yaxis: { title: { text: "spend so far" }, tickprefix: "$", rangemode: "tozero" },
    yaxis2: { overlaying: "y", side: "right", tickprefix: "$", showgrid: false, rangemode: "tozero", title: { text: "per call" } },
    shapes, annotations, margin: { l: 64, r: 64, t: 20, b: 40 },
  });
}

function budgetBars(covering) {
  if (!covering.budgets.length) return el("p", { class: "empty" }, "No budget policy you can see covers this session.");
  return el("div", { class: "bars" }, covering.budgets.map((b) => {
    const limit = b.policy.limit_cost !== null ? `${fmtMoney(b.spent_cost)} / ${fmtMoney(b.policy.limit_cost)}` : `${fmtInt(b.spent_tokens)} / ${fmtInt(b.policy.limit_tokens)} tokens`;
    const tone = Number(b.fraction) >= 1 ? "over" : b.policy.thresholds.some((t) => Number(t) < 1 && Number(b.fraction) >= Number(t)) ? "near" : "under";
    return el("div", { class: "budget-row", dataset: { policy: b.policy.policy_id } },
      el("div", { class: "budget-label" }, el("span", { class: "scope-value" }, `${b.policy.name || b.policy.policy_id} · ${b.scope_value}`),
        el("span", { class: "muted" }, `${limit} · ${percent(b.fraction)} · ${b.policy.window} · ${b.policy.action}`)),
      el("div", { class: "bar", role: "meter", "aria-valuenow": b.fraction, "aria-label": b.policy.policy_id },
        el("span", { class: `fill ${tone}`, style: `width:${Math.min(Number(b.fraction), 1) * 100}%` }),
        b.policy.thresholds.map((t) => el("span", { class: "mark", style: `left:${Math.min(Number(t), 1) * 100}%` }))));
  }));
}

async function detail(id) {
  const [session, events, covering] = await allAnswered([
    api(`/v1/sessions/${encodeURIComponent(id)}`),
    api(`/v1/reports/sessions/${encodeURIComponent(id)}`).catch((error) => (error.status === 404 ? { events: [] } : Promise.reject(error))),
    api(`/v1/sessions/${encodeURIComponent(id)}/budgets`).catch((error) => (error.status === 404 ? { budgets: [] } : Promise.reject(error))),
  ]);
  const chart = el("div", { class: "chart tall", id: "chart-session" });
  const stopped = session.stopped_by;
  const node = el("section", { id: "session-detail", dataset: { session: session.session_id } },
    el("div", { class: "policy-head" }, el("h2", {}, session.session_id), el("span", { class: `badge state-${session.state}`, id: "session-state" }, session.state)),
    el("section", { class: "kpis" },
      el("div", { class: "kpi", id: "session-cost", dataset: { exact: session.cost } }, el("div", { class: "kpi-title" }, "Settled spend"), el("div", { class: "kpi-value" }, fmtMoney(session.cost)), el("div", { class: "kpi-note" }, `list ${fmtMoney(session.list_cost)}`)),
      el("div", { class: "kpi" }, el("div", { class: "kpi-title" }, "Calls"), el("div", { class: "kpi-value" }, fmtInt(session.calls)), el("div", { class: "kpi-note" }, `${fmtInt(session.input_tokens)} in · ${fmtInt(session.output_tokens)} out`)),
      el("div", { class: "kpi" }, el("div", { class: "kpi-title" }, "Teams"), el("div", { class: "kpi-value small" }, session.teams.join(", ") || "(none)"), el("div", { class: "kpi-note" }, `${fmtTime(session.first_event_at)} → ${fmtTime(session.last_event_at)}`))),
    stopped
      ? el("div", { class: "card stopped", id: "stopped-by" },
        el("h3", {}, `Stopped: ${stopped.action} by policy ${stopped.policy_id}`),
        el("p", {}, stopped.reason),
        el("p", { class: "muted" }, `${stopped.scope_value} · spent ${fmtMoney(stopped.spent_cost)}${stopped.limit_cost !== null ? ` of ${fmtMoney(stopped.limit_cost)}` : ""} · ${fmtInt(stopped.spent_tokens)} tokens${stopped.limit_tokens !== null ? ` of ${fmtInt(stopped.limit_tokens)}` : ""} · ${fmtTime(stopped.issued_at)}`))
      : null,
    el("section", { class: "card" }, el("h2", {}, "Calls over time"), chart),
    el("section", { class: "card" }, el("h2", {}, "Budgets covering this session"), budgetBars(covering)),
    session.signals.length
      ? el("section", { class: "card" }, el("h2", {}, "Signals"), el("div", { class: "table-wrap" }, el("table", { class: "report", id: "signals-table" },
        el("thead", {}, el("tr", {}, ["issued", "action", "policy", "scope value", "reason"].map((h) => el("th", {}, h)))),
        el("tbody", {}, session.signals.map((s) => el("tr", {}, el("td", {}, fmtTime(s.issued_at)), el("td", {}, s.action), el("td", {}, s.policy_id), el("td", {}, s.scope_value), el("td", { class: "wrap" }, s.reason)))))))
      : null);
  return { node, draw: () => timeline(chart, events.events, session.signals) };
}

async function render(me) {
  const q = new URLSearchParams(window.location.search);
  const state = Object.fromEntries([...q.entries()].filter(([k]) => ["id", "agent_type", "team", "state", "period"].includes(k)));
  const result = el("section", { id: "sessions-result" });
  const open = async (id) => {
    window.history.replaceState(null, "", `?id=${encodeURIComponent(id)}`);
    document.getElementById("session-id").value = id;
    await show({ id });
  };
  const show = async (next) => {
    showError(null);
    document.body.dataset.ready = "loading";
    try {
      if (next.id) {
        const { node, draw } = await detail(next.id);
        result.replaceChildren(node);
        draw();
      } else if (next.state) {
        const params = { agent_type: next.agent_type, team: me.team || next.team, state: next.state, limit: 100 };
        const { sessions } = await api("/v1/sessions", params);
        result.replaceChildren(el("p", { class: "meta" }, `${sessions.length} ${next.state} sessions, by settled spend`), listTable(sessions, (id) => open(id).catch(showError), true));
      } else {
        const period = PERIODS[next.period] ? next.period : "24h";
        const params = { agent_type: next.agent_type, team: me.team || next.team, from: periodStart(period), limit: 100 };
        const report = await api("/v1/reports/top-sessions", params);
        const sessions = report.rows.map((r) => ({ session_id: r.group.session_id, calls: r.calls, cost: r.cost }));
        result.replaceChildren(el("p", { class: "meta" }, `Top ${sessions.length} sessions by spend, ${PERIODS[period]}`), listTable(sessions, (id) => open(id).catch(showError), false));
      }
      document.body.dataset.ready = "yes";
    } catch (error) {
      result.replaceChildren();
      showError(error.status === 404 ? `No session ${next.id} that this key can see.` : error);
      document.body.dataset.ready = "error";
    }
  };
  content().replaceChildren(searchForm(state, me, (next) => {
    window.history.replaceState(null, "", `?${new URLSearchParams(next)}`);
    show(next);
  }), result);
  await show(state);
}

start(render);
