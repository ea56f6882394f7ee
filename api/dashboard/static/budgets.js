import {
  allAnswered, api, canWriteBudgets, content, el, fmtInt, fmtMoney, fmtTime, percent, showError, start,
} from "./common.js";

const SCOPES = ["session", "agent_type", "team", "project", "customer"];
const WINDOWS = ["lifetime", "rolling_1h", "rolling_24h", "rolling_7d", "rolling_30d", "calendar_day", "calendar_week", "calendar_month"];
const ACTIONS = ["warn", "downgrade", "pause", "kill"];
const BARS = 10;

function limitText(policy) {
  const parts = [];
  if (policy.limit_cost !== null && policy.limit_cost !== undefined) parts.push(fmtMoney(policy.limit_cost));
  if (policy.limit_tokens !== null && policy.limit_tokens !== undefined) parts.push(`${fmtInt(policy.limit_tokens)} tokens`);
  return parts.join(" or ");
}

function matchText(policy) {
  const entries = Object.entries(policy.match || {});
  return entries.length ? entries.map(([k, v]) => `${k}=${v}`).join(", ") : "every value";
}

function tone(fraction, policy) {
  const f = Number(fraction);
  if (f >= 1) return "over";
  const thresholds = policy.thresholds.map(Number).filter((t) => t < 1);
  return thresholds.some((t) => f >= t) ? "near" : "under";
}

function bar(policy, scope) {
  const width = Math.min(Number(scope.fraction), 1) * 100;
  const marks = policy.thresholds.map((t) =>
    el("span", { class: "mark", style: `left:${Math.min(Number(t), 1) * 100}%`, title: `threshold ${percent(t)}` }));
  const spent = [];
  if (policy.limit_cost !== null && policy.limit_cost !== undefined) spent.push(`${fmtMoney(scope.spent_cost)} / ${fmtMoney(policy.limit_cost)}`);
  if (policy.limit_tokens !== null && policy.limit_tokens !== undefined) spent.push(`${fmtInt(scope.spent_tokens)} / ${fmtInt(policy.limit_tokens)} tokens`);
  return el("div", { class: "budget-row", dataset: { scope: scope.scope_value, fraction: scope.fraction, spent: scope.spent_cost } },
    el("div", { class: "budget-label" }, el("span", { class: "scope-value" }, scope.scope_value), el("span", { class: "muted" }, `${spent.join(" · ")} · ${percent(scope.fraction)}`)),
    el("div", { class: "bar", role: "meter", "aria-valuemin": "0", "aria-valuemax": "1", "aria-valuenow": scope.fraction, "aria-label": scope.scope_value },
      el("span", { class: `fill ${tone(scope.fraction, policy)}`, style: `width:${width}%` }), marks));
}

function policyCard(policy, spend, me, actions) {
  const head = el("div", { class: "policy-head" },
    el("h2", {}, policy.name || policy.policy_id),
    el("span", { class: `badge action-${policy.action}` }, policy.action),
    policy.enabled ? null : el("span", { class: "badge" }, "disabled"),
    el("span", { class: "spacer" }),
    canWriteBudgets(me) ? el("button", { type: "button", class: "edit", onclick: () => actions.edit(policy) }, "Edit") : null,
    canWriteBudgets(me) ? el("button", { type: "button", class: "danger", onclick: () => actions.remove(policy) }, "Delete") : null);
  const facts = el("dl", { class: "facts" },
    el("dt", {}, "id"), el("dd", {}, policy.policy_id),
    el("dt", {}, "scope"), el("dd", {}, policy.scope.join(" × ")),
    el("dt", {}, "match"), el("dd", {}, matchText(policy)),
    el("dt", {}, "limit"), el("dd", {}, limitText(policy)),
    el("dt", {}, "window"), el("dd", {}, `${policy.window}${policy.timezone !== "UTC" ? ` (${policy.timezone})` : ""}`),
    el("dt", {}, "thresholds"), el("dd", {}, policy.thresholds.map(percent).join(", ")),
    Object.keys(policy.escalation || {}).length
      ? [el("dt", {}, "escalation"), el("dd", {}, Object.entries(policy.escalation).map(([a, f]) => `${a} at ${percent(f)}`).join(", "))]
      : null);
  const card = el("article", { class: "card policy", dataset: { policy: policy.policy_id } }, head, facts);
  const fill = (s) => {
    const span = s.window_start ? `window from ${fmtTime(s.window_start)}` : "lifetime";
    const top = [...s.scopes].sort((a, b) => Number(b.fraction) - Number(a.fraction)).slice(0, BARS);
    card.append(
      el("p", { class: "meta" }, `Settled spend in the warehouse, ${span}${s.scopes.length > BARS ? `; the ${BARS} closest to the limit` : ""}`),
      el("div", { class: "bars" }, top.length ? top.map((x) => bar(policy, x)) : el("p", { class: "empty" }, "No settled spend in the current window.")));
  };
  if (spend) {
    fill(spend);
  } else {
    const button = el("button", { type: "button", class: "load-spend" }, "Show the sessions closest to the limit");
    button.addEventListener("click", async () => {
      button.disabled = true;
      button.textContent = "Reading every session's spend...";
      try {
        const s = await spendOf(policy);
        button.remove();
        fill(s);
      } catch (error) {
        showError(error);
        button.disabled = false;
      }
    });
    card.append(el("p", { class: "meta" }, "One budget per session."), button);
  }
  return card;
}

function perSession(policy) {
  return policy.scope.includes("session");
}

function spendOf(policy) {
  return api(`/v1/budgets/${encodeURIComponent(policy.policy_id)}/spend`, { limit: 50 });
}

function pairs(text, numeric) {
  const out = {};
  for (const part of String(text || "").split(",")) {
    const [k, v] = part.split("=").map((s) => (s || "").trim());
    if (k && v) out[k] = numeric ? v : v;
  }
  return out;
}

function policyForm(me, policy, onSaved, onCancel) {
  const p = policy || { policy_id: "", name: "", scope: ["team"], match: me.team ? { team: me.team } : {}, limit_cost: "", limit_tokens: "", window: "calendar_month", timezone: "UTC", action: "warn", thresholds: ["0.5", "0.8", "1"], escalation: {}, downgrade_to: {}, enabled: true };
  const input = (name, value, attrs = {}) => el("input", { name, id: `policy-${name}`, value: value ?? "", ...attrs });
  const select = (name, options, value) => el("select", { name, id: `policy-${name}` }, options.map((o) => el("option", { value: o, selected: o === value }, o)));
  const field = (label, control) => el("label", { class: "field" }, el("span", {}, label), control);
  const matchInputs = SCOPES.filter((s) => s !== "session").map((s) => field(`match ${s}`,
    input(`match_${s}`, (p.match || {})[s], { placeholder: "*", readonly: s === "team" && me.team ? true : null })));
  const node = el("form", { class: "card policy-form", id: "policy-form" },
    el("h2", {}, policy ? `Edit ${policy.policy_id}` : "New policy"),
    el("div", { class: "row" },
      field("policy id", input("policy_id", p.policy_id, { required: true, pattern: "[A-Za-z0-9_.:\\-]{1,64}", readonly: policy ? true : null })),
      field("name", input("name", p.name, { maxlength: "128" })),
      field("window", select("window", WINDOWS, p.window)),
      field("time zone", input("timezone", p.timezone)),
      field("action at the limit", select("action", ACTIONS, p.action))),
    el("fieldset", {}, el("legend", {}, "Scope (one budget per value of these)"),
      el("div", { class: "checks" }, SCOPES.map((s) => el("label", { class: "check" }, el("input", { type: "checkbox", name: "scope", value: s, checked: p.scope.includes(s) }), s)))),
    el("div", { class: "row" }, matchInputs),
    el("div", { class: "row" },
      field("limit (USD)", input("limit_cost", p.limit_cost, { inputmode: "decimal", placeholder: "none" })),
      field("limit (tokens)", input("limit_tokens", p.limit_tokens, { inputmode: "numeric", placeholder: "none" })),
      field("alert thresholds", input("thresholds", p.thresholds.join(", "))),
      field("escalation", input("escalation", Object.entries(p.escalation || {}).map(([a, f]) => `${a}=${f}`).join(", "), { placeholder: "warn=0.5, downgrade=0.8" })),
      field("downgrade to", input("downgrade_to", Object.entries(p.downgrade_to || {}).map(([a, b]) => `${a}=${b}`).join(", "), { placeholder: "gpt-4o=gpt-4o-mini" }))),
    el("div", { class: "row actions" },
      el("label", { class: "check" }, el("input", { type: "checkbox", name: "enabled", checked: p.enabled }), "enabled"),
      el("span", { class: "spacer" }),
      el("button", { type: "button", onclick: onCancel }, "Cancel"),
      el("button", { type: "submit", class: "primary", id: "policy-save" }, "Save")));
  node.addEventListener("submit", async (event) => {
    event.preventDefault();
    const d = new FormData(node);
    const match = {};
    for (const s of SCOPES) if (s !== "session" && String(d.get(`match_${s}`) || "").trim()) match[s] = String(d.get(`match_${s}`)).trim();
    const text = (name) => String(d.get(name) || "").trim();
    const body = {
      policy_id: text("policy_id"), name: text("name"), scope: d.getAll("scope"), match,
      limit_cost: text("limit_cost") || null, limit_tokens: text("limit_tokens") ? Number(text("limit_tokens")) : null,
      window: text("window"), timezone: text("timezone") || "UTC", action: text("action"),
      thresholds: text("thresholds").split(",").map((s) => s.trim()).filter(Boolean),
      escalation: pairs(text("escalation")), downgrade_to: pairs(text("downgrade_to")), enabled: d.get("enabled") !== null,
    };
    showError(null);
    try {
      await api(`/v1/budgets/${encodeURIComponent(body.policy_id)}`, null, { method: "PUT", body });
      onSaved();
    } catch (error) {
      showError(error);
    }
  });
  return node;
}

function alertsTable(alerts) {
  if (!alerts.length) return el("p", { class: "empty" }, "No alerts.");
  const detail = el("div", { id: "alert-detail" });
  const rows = alerts.map((a) => {
    const limit = a.limit_cost !== null ? fmtMoney(a.limit_cost) : `${fmtInt(a.limit_tokens)} tokens`;
    const spent = a.limit_cost !== null ? fmtMoney(a.spent_cost) : `${fmtInt(a.spent_tokens)} tokens`;
    const status = a.delivery_attempts === 0 ? "not sent" : a.deliveries_ok > 0 ? "delivered" : "failing";
    const show = async () => {
      const full = await api(`/v1/alerts/${encodeURIComponent(a.alert_id)}`);
      detail.replaceChildren(el("h3", {}, `Deliveries of ${a.alert_id}`), full.deliveries.length
        ? el("div", { class: "table-wrap" }, el("table", { class: "report" },
          el("thead", {}, el("tr", {}, ["destination", "attempt", "at", "ok", "status", "error"].map((h) => el("th", {}, h)))),
          el("tbody", {}, full.deliveries.map((d) => el("tr", {}, el("td", {}, d.destination), el("td", { class: "num" }, String(d.attempt)),
            el("td", {}, fmtTime(d.attempted_at)), el("td", {}, d.ok ? "yes" : "no"), el("td", {}, d.status_code ?? ""), el("td", {}, d.error))))))
        : el("p", { class: "empty" }, "No delivery attempts recorded."));
    };
    return el("tr", {},
      el("td", {}, fmtTime(a.issued_at)), el("td", {}, a.policy_id), el("td", {}, a.scope_value),
      el("td", { class: "num" }, percent(a.threshold)), el("td", { class: "num" }, `${spent} / ${limit}`),
      el("td", {}, el("span", { class: `badge delivery-${status.replace(" ", "-")}` }, `${status} (${a.deliveries_ok}/${a.delivery_attempts})`)),
      el("td", {}, el("button", { type: "button", class: "link", onclick: () => show().catch(showError) }, "attempts")));
  });
  return el("div", {}, el("div", { class: "table-wrap" }, el("table", { class: "report", id: "alerts-table" },
    el("thead", {}, el("tr", {}, ["issued", "policy", "scope value", "threshold", "spent / limit", "delivery", ""].map((h) => el("th", {}, h)))),
    el("tbody", {}, rows))), detail);
}

async function render(me) {
  const [{ budgets }, { alerts }] = await allAnswered([api("/v1/budgets"), api("/v1/alerts", { limit: 100 })]);
  // A policy per session has a budget per session: its spend reads the ledger (no rollup has
  // sessions), seconds over millions of events, so it is fetched when asked, not on page load.
  const spends = await allAnswered(budgets.map((b) => (perSession(b) ? null : spendOf(b))));
  const formSlot = el("div", { id: "form-slot" });
  const reload = () => window.location.reload();
  const actions = {
    edit: (policy) => { formSlot.replaceChildren(policyForm(me, policy, reload, () => formSlot.replaceChildren())); formSlot.scrollIntoView(); },
    remove: async (policy) => {
      if (!window.confirm(`Delete the policy ${policy.policy_id}?`)) return;
      try {
        await api(`/v1/budgets/${encodeURIComponent(policy.policy_id)}`, null, { method: "DELETE" });
        reload();
      } catch (error) {
        showError(error);
      }
    },
  };
  content().replaceChildren(
    el("div", { class: "toolbar" },
      el("p", { class: "meta" }, `${budgets.length} policies`),
      el("span", { class: "spacer" }),
      canWriteBudgets(me) ? el("button", { type: "button", class: "primary", id: "new-policy", onclick: () => formSlot.replaceChildren(policyForm(me, null, reload, () => formSlot.replaceChildren())) }, "New policy") : null),
    formSlot,
    el("section", { id: "policies", class: "policies" }, budgets.length ? budgets.map((b, i) => policyCard(b, spends[i], me, actions)) : el("p", { class: "empty" }, "No policies.")),
    el("section", { class: "card" }, el("h2", {}, "Alert history"), alertsTable(alerts)));
}

start(render);
