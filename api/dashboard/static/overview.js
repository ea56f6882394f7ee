import {
  allAnswered, api, content, el, fmtInt, fmtMoney, isoInstant, monthStart, plot, showError, start,
} from "./common.js";

const NONE = "(none)";
const TOP = 8;

function label(value, none = NONE) {
  return value === null || value === undefined ? none : String(value);
}

function monthParam() {
  const asked = new URLSearchParams(window.location.search).get("month");
  if (asked && /^\d{4}-\d{2}$/.test(asked)) return asked;
  const now = new Date();
  return `${now.getUTCFullYear()}-${String(now.getUTCMonth() + 1).padStart(2, "0")}`;
}

function periods(month) {
  const [year, m] = month.split("-").map(Number);
  const from = monthStart(year, m - 1);
  const previousStart = monthStart(year, m - 2);
  // A month in progress is compared with last month up to the same hour (whole hours: the
  // hourly rollup answers), as well as with the whole of last month.
  const now = new Date();
  let sameTime = null;
  if (now >= from && now < monthStart(year, m)) {
    const hours = Math.floor((now - from) / 3600000);
    const end = new Date(Math.min(previousStart.getTime() + hours * 3600000, from.getTime()));
    if (hours > 0) sameTime = { from: isoInstant(previousStart), to: isoInstant(end) };
  }
  return {
    current: { from: isoInstant(from), to: isoInstant(monthStart(year, m)) },
    previous: { from: isoInstant(previousStart), to: isoInstant(from) },
    sameTime,
  };
}

function monthName(month) {
  const [year, m] = month.split("-").map(Number);
  return monthStart(year, m - 1).toLocaleString("en", { month: "long", year: "numeric", timeZone: "UTC" });
}

function change(now, before, what) {
  const a = Number(now);
  const b = Number(before);
  if (b === 0) return a === 0 ? `no change vs ${what}` : `new spend vs ${what}`;
  const pct = ((a - b) / b) * 100;
  return `${pct >= 0 ? "+" : ""}${pct.toFixed(1)}% vs ${what}`;
}

function kpi(id, title, value, note, tone = "") {
  return el("div", { class: `kpi ${tone}`, id }, el("div", { class: "kpi-title" }, title),
    el("div", { class: "kpi-value" }, value), note ? el("div", { class: "kpi-note" }, note) : null);
}

function flaggedCard(id, title, flagged, help) {
  const tone = flagged.events > 0 ? "warn" : "ok";
  return kpi(id, title, `${fmtInt(flagged.events)} events`, flagged.events > 0 ? `${fmtMoney(flagged.cost)} · ${help}` : help, tone);
}

function stackedByTeam(node, report) {
  const days = [...new Set(report.rows.map((r) => r.group.day))].sort();
  const teams = [...new Set(report.rows.map((r) => label(r.group.team, "(no team)")))].sort();
  const traces = teams.map((team) => {
    const byDay = new Map(report.rows.filter((r) => label(r.group.team, "(no team)") === team).map((r) => [r.group.day, Number(r.cost)]));
    return { type: "bar", name: team, x: days, y: days.map((d) => byDay.get(d) || 0), hovertemplate: "%{x}<br>$%{y:,.2f}<extra>%{fullData.name}</extra>" };
  });
  if (!traces.length) {
    node.replaceChildren(el("p", { class: "empty" }, "No spend in this period."));
    return;
  }
  plot(node, traces, { barmode: "stack", yaxis: { tickprefix: "$", rangemode: "tozero" }, xaxis: { type: "date" } });
}

function topBars(node, report, dim) {
  const rows = [...report.rows].sort((a, b) => Number(b.cost) - Number(a.cost)).slice(0, TOP).reverse();
  if (!rows.length) {
    node.replaceChildren(el("p", { class: "empty" }, "No spend."));
    return;
  }
  const name = (r) => {
    if (dim !== "model") return label(r.group[dim]);
    return r.group.model === null ? "(tool calls)" : `${label(r.group.provider)}/${r.group.model}`;
  };
  const names = rows.map(name);
  plot(node, [{
    type: "bar", orientation: "h", x: rows.map((r) => Number(r.cost)), y: names,
    text: rows.map((r) => fmtMoney(r.cost)), textposition: "auto", hovertemplate: "%{y}: %{text}<extra></extra>",
    marker: { color: "#3b6fb6" },
  }], { margin: { l: 120, r: 8, t: 4, b: 28 }, xaxis: { tickprefix: "$" }, yaxis: { automargin: true }, showlegend: false });
}

async function render() {
  const month = monthParam();
  const { current, previous, sameTime } = periods(month);
  const picker = el("input", { type: "month", id: "month", value: month, "aria-label": "month" });
  picker.addEventListener("change", () => {
    if (picker.value) window.location.assign(`/dashboard/overview?month=${picker.value}`);
  });
  const [byDayTeam, last, lastToDate, projects, customers, agentTypes, models, flagged] = await allAnswered([
    api("/v1/chargeback", { group_by: "day,team", ...current }),
    api("/v1/chargeback", { group_by: "team", ...previous }),
    sameTime ? api("/v1/chargeback", { group_by: "team", ...sameTime }) : null,
    api("/v1/chargeback", { group_by: "project", ...current }),
    api("/v1/chargeback", { group_by: "customer", ...current }),
    api("/v1/chargeback", { group_by: "agent_type", ...current }),
    api("/v1/reports/spend-by-model", current),
    api("/v1/reports/flagged", current),
  ]);
  const total = byDayTeam.total;
  const charts = {
    team: el("div", { class: "chart tall", id: "chart-team-days" }),
    project: el("div", { class: "chart", id: "chart-projects" }),
    customer: el("div", { class: "chart", id: "chart-customers" }),
    agent_type: el("div", { class: "chart", id: "chart-agent-types" }),
    model: el("div", { class: "chart", id: "chart-models" }),
  };
  content().replaceChildren(
    el("div", { class: "toolbar" }, el("label", { for: "month" }, "Month (UTC)"), picker),
    el("section", { class: "kpis" },
      kpi("kpi-this", `Spend in ${monthName(month)}`, fmtMoney(total.cost),
        lastToDate ? change(total.cost, lastToDate.total.cost, "last month to the same hour") : change(total.cost, last.total.cost, "last month")),
      kpi("kpi-last", "Last month", fmtMoney(last.total.cost),
        lastToDate ? `${fmtMoney(lastToDate.total.cost)} by the same hour · ${fmtInt(last.total.calls)} calls` : `${fmtInt(last.total.calls)} calls`),
      kpi("kpi-calls", "Calls", fmtInt(total.calls), `${fmtInt(total.input_tokens + total.output_tokens)} tokens in + out`),
      flaggedCard("kpi-unpriced", "Unpriced", flagged.unpriced, "charged a fallback rate"),
      flaggedCard("kpi-late", "Late", flagged.late, "arrived after the grace period"),
    ),
    el("section", { class: "card" }, el("h2", {}, "Spend by team, per day"), charts.team),
    el("section", { class: "grid" },
      el("div", { class: "card" }, el("h2", {}, "Top projects"), charts.project),
      el("div", { class: "card" }, el("h2", {}, "Top customers"), charts.customer),
      el("div", { class: "card" }, el("h2", {}, "Top agent types"), charts.agent_type),
      el("div", { class: "card" }, el("h2", {}, "Top models"), charts.model),
    ),
  );
  document.getElementById("kpi-this").dataset.exact = total.cost;
  document.getElementById("kpi-this").title = `exact: ${total.cost}`;
  document.getElementById("kpi-last").dataset.exact = last.total.cost;
  if (lastToDate) Object.assign(document.getElementById("kpi-last").dataset, { toDate: lastToDate.total.cost, toDateEnd: sameTime.to });
  stackedByTeam(charts.team, byDayTeam);
  topBars(charts.project, projects, "project");
  topBars(charts.customer, customers, "customer");
  topBars(charts.agent_type, agentTypes, "agent_type");
  topBars(charts.model, models, "model");
  showError(null);
}

start(render);
