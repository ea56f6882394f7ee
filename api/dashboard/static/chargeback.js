import {
  api, content, download, el, fmtInt, fmtMoney, isoDay, monthStart, showError, start,
} from "./common.js";

const DIMENSIONS = ["team", "project", "customer", "agent_type", "model", "provider", "tool_name", "session_id", "hour", "day", "week", "month"];
const FILTERS = ["team", "project", "customer", "agent_type", "model", "provider", "tool_name", "session_id"];
const MONEY = ["cost", "list_cost", "allocated_cost", "allocated_list_cost"];
const TOKENS = ["input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens", "calls"];
const HEADINGS = {
  cost: "Cost", list_cost: "List cost", allocation: "Allocation", allocated_cost: "Allocated cost",
  allocated_list_cost: "Allocated list cost", input_tokens: "Input", output_tokens: "Output",
  cache_read_tokens: "Cache read", cache_write_tokens: "Cache write", reasoning_tokens: "Reasoning", calls: "Calls",
};

let shown = null; // the parameters of the report on screen: downloads use exactly these

function defaults() {
  const now = new Date();
  return {
    from: isoDay(monthStart(now.getUTCFullYear(), now.getUTCMonth())),
    to: isoDay(monthStart(now.getUTCFullYear(), now.getUTCMonth() + 1)),
    group_by: "team,project",
    unallocated: "report",
    allocate_by: "team",
  };
}

function fromUrl() {
  const q = new URLSearchParams(window.location.search);
  const state = defaults();
  for (const name of ["from", "to", "group_by", "unallocated", "allocate_by", ...FILTERS]) {
    if (q.has(name)) state[name] = q.get(name);
  }
  return state;
}

// The form's state as /v1/chargeback parameters: days as UTC midnights, [from, to).
function apiParams(state) {
  const params = { group_by: state.group_by };
  if (state.from) params.from = `${state.from}T00:00:00Z`;
  if (state.to) params.to = `${state.to}T00:00:00Z`;
  for (const name of FILTERS) if (state[name]) params[name] = state[name];
  if (state.unallocated && state.unallocated !== "report") {
    params.unallocated = state.unallocated;
    params.allocate_by = state.allocate_by;
  }
  return params;
}

function columnsOf(report) {
  const columns = [...report.group_by, "cost", "list_cost"];
  if (report.allocate_by && report.group_by.includes(report.allocate_by)) {
    columns.push("allocation");
    if (report.unallocated !== "report") columns.push("allocated_cost", "allocated_list_cost");
  }
  return [...columns, ...TOKENS];
}

function cell(column, value, exact) {
  if (MONEY.includes(column)) {
    const text = value ?? "0";
    return el("td", { class: "num", dataset: { col: column, exact: text }, title: text }, fmtMoney(text, exact ? 12 : 2));
  }
  if (TOKENS.includes(column)) return el("td", { class: "num", dataset: { col: column, exact: String(value) } }, fmtInt(value));
  const missing = value === null || value === undefined;
  return el("td", { class: missing ? "none" : "", dataset: { col: column, exact: missing ? "" : String(value) } }, missing ? "(none)" : String(value));
}

function table(report, exact) {
  const columns = columnsOf(report);
  const head = el("tr", {}, columns.map((c) => el("th", { scope: "col", class: MONEY.includes(c) || TOKENS.includes(c) ? "num" : "" }, HEADINGS[c] || c)));
  const body = report.rows.map((row) => el("tr", {}, columns.map((c) => cell(c, c in row.group ? row.group[c] : row[c], exact))));
  const totalCells = columns.map((c, i) => {
    if (c === "cost" || c === "list_cost" || TOKENS.includes(c)) return cell(c, report.total[c], exact);
    if (c === "allocated_cost" || c === "allocated_list_cost") return el("td", {});
    return el("th", { scope: "row" }, i === 0 ? "Total" : "");
  });
  return el("div", { class: "table-wrap" },
    el("table", { id: "report-table", class: "report" },
      el("thead", {}, head),
      el("tbody", {}, body),
      el("tfoot", {}, el("tr", { id: "report-total" }, totalCells))));
}

function form(state, me, onSubmit) {
  const chosen = new Set(state.group_by.split(",").filter(Boolean));
  const field = (name, label, input) => el("label", { class: "field" }, el("span", {}, label), input);
  const groupBoxes = DIMENSIONS.map((d) =>
    el("label", { class: "check" }, el("input", { type: "checkbox", name: "group_by", value: d, checked: chosen.has(d) }), d));
  const filterInputs = FILTERS.map((name) => {
    const locked = name === "team" && me.team;
    return field(name, name, el("input", {
      type: "text", name, id: `filter-${name}`, value: locked ? me.team : state[name] || "", readonly: locked ? true : null,
      maxlength: "128", placeholder: "any", title: locked ? "this key reads its own team only" : null,
    }));
  });
  const select = (name, options, value) =>
    el("select", { name, id: name }, options.map((o) => el("option", { value: o, selected: o === value }, o)));
  const node = el("form", { class: "card controls", id: "report-form" },
    el("div", { class: "row" },
      field("from", "From (UTC day)", el("input", { type: "date", name: "from", id: "from", value: state.from, required: true })),
      field("to", "To (exclusive)", el("input", { type: "date", name: "to", id: "to", value: state.to, required: true })),
      field("unallocated", "Shared cost", select("unallocated", ["report", "proportional", "even"], state.unallocated)),
      field("allocate_by", "Distribute by", select("allocate_by", ["team", "project", "customer", "agent_type"], state.allocate_by)),
    ),
    el("fieldset", {}, el("legend", {}, "Group by"), el("div", { class: "checks" }, groupBoxes)),
    el("details", { open: FILTERS.some((f) => state[f]) || null }, el("summary", {}, "Filters"), el("div", { class: "row" }, filterInputs)),
    el("div", { class: "row actions" },
      el("button", { type: "submit", class: "primary", id: "show" }, "Show"),
      el("label", { class: "check" }, el("input", { type: "checkbox", id: "exact" }), "exact (12 places)"),
      el("span", { class: "spacer" }),
      el("button", { type: "button", id: "download-csv", "data-format": "csv" }, "CSV"),
      el("button", { type: "button", id: "download-parquet", "data-format": "parquet" }, "Parquet"),
      el("button", { type: "button", id: "download-focus", "data-format": "focus" }, "FOCUS"),
    ));
  node.addEventListener("submit", (event) => {
    event.preventDefault();
    const data = new FormData(node);
    const next = { from: data.get("from"), to: data.get("to"), unallocated: data.get("unallocated"), allocate_by: data.get("allocate_by") };
    const dims = data.getAll("group_by");
    // Distributing shared cost needs its dimension among the groups: add it rather than fail.
    if (next.unallocated !== "report" && !dims.includes(next.allocate_by)) dims.unshift(next.allocate_by);
    next.group_by = DIMENSIONS.filter((d) => dims.includes(d)).join(",");
    for (const name of FILTERS) next[name] = String(data.get(name) || "").trim();
    onSubmit(next);
  });
  for (const button of node.querySelectorAll("[data-format]")) {
    button.addEventListener("click", async () => {
      if (!shown) return;
      showError(null);
      button.disabled = true;
      try {
        await download("/v1/chargeback", { ...shown, format: button.dataset.format });
      } catch (error) {
        showError(error);
      } finally {
        button.disabled = false;
      }
    });
  }
  return node;
}

async function render(me) {
  const state = fromUrl();
  const result = el("section", { id: "result" });
  const run = async (next) => {
    showError(null);
    const params = apiParams(next);
    const url = new URLSearchParams();
    for (const [k, v] of Object.entries(next)) if (v) url.set(k, v);
    window.history.replaceState(null, "", `?${url}`);
    document.body.dataset.ready = "loading";
    try {
      const report = await api("/v1/chargeback", params);
      shown = params;
      const exact = document.getElementById("exact").checked;
      result.replaceChildren(
        el("p", { class: "meta" }, `${report.rows.length} rows · total ${fmtMoney(report.total.cost)} · source ${report.source}`),
        table(report, exact));
      result.dataset.total = report.total.cost;
      document.body.dataset.ready = "yes";
    } catch (error) {
      showError(error);
      document.body.dataset.ready = "error";
    }
  };
  const node = form(state, me, run);
  content().replaceChildren(node, result);
  node.querySelector("#exact").addEventListener("change", () => node.requestSubmit());
  await run(state);
}

start(render);
