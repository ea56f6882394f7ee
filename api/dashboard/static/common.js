// Shared by every page: the key, calls to the JSON API, exact money text, small DOM builders.
// Data from the API is always put in the page as text (textContent), never as HTML.

const KEY = "agentledger.key";

export function storedKey() {
  return sessionStorage.getItem(KEY);
}

export function storeKey(key) {
  sessionStorage.setItem(KEY, key);
}

export function logOut() {
  sessionStorage.removeItem(KEY);
  window.location.assign("/dashboard/login");
}

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function query(params) {
  const q = new URLSearchParams();
  for (const [name, value] of Object.entries(params || {})) {
    if (value !== null && value !== undefined && value !== "") q.set(name, value);
  }
  const text = q.toString();
  return text ? `?${text}` : "";
}

async function request(method, path, { params, body, key } = {}) {
  const headers = { Authorization: `Bearer ${key || storedKey() || ""}`, Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path + query(params), {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
  });
  if (response.status === 401 && !key) {
    logOut();
    throw new ApiError(401, "the key was refused; log in again");
  }
  return response;
}

async function failure(response) {
  let message = `${response.status} ${response.statusText}`;
  try {
    const data = await response.json();
    if (data && data.error && data.error.message) message = data.error.message;
  } catch (_) {
    // not JSON: keep the status line
  }
  return new ApiError(response.status, message);
}

export async function api(path, params, options = {}) {
  const response = await request(options.method || "GET", path, { params, body: options.body, key: options.key });
  if (!response.ok) throw await failure(response);
  return response.status === 204 ? null : response.json();
}

// Every request's result, once all have answered; the first failure, if any, is thrown then. Unlike
// Promise.all, no request is still under way when the page shows the failure (and says it is ready).
export async function allAnswered(requests) {
  const settled = await Promise.allSettled(requests);
  const failed = settled.find((r) => r.status === "rejected");
  if (failed) throw failed.reason;
  return settled.map((r) => r.value);
}

// A file from the API (CSV, Parquet, FOCUS) saved under its server-given name: the key travels
// in the header, so a plain link cannot carry it.
export async function download(path, params) {
  const response = await request("GET", path, { params });
  if (!response.ok) throw await failure(response);
  const disposition = response.headers.get("Content-Disposition") || "";
  const match = /filename="([^"]+)"/.exec(disposition);
  const blob = await response.blob();
  const url = URL.createObjectURL(blob);
  const link = el("a", { href: url, download: match ? match[1] : "report" });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// -- money as decimal text: rounded half up on the digits, never through a float ------------------

export function roundMoney(text, places = 2) {
  let value = String(text ?? "0");
  const negative = value.startsWith("-");
  if (negative) value = value.slice(1);
  let [whole, fraction = ""] = value.split(".");
  fraction = fraction.padEnd(places + 1, "0");
  const roundUp = fraction[places] >= "5";
  let digits = (whole + fraction.slice(0, places)).split("").map(Number);
  if (roundUp) {
    let i = digits.length - 1;
    while (i >= 0) {
      if (digits[i] === 9) {
        digits[i] = 0;
        i -= 1;
      } else {
        digits[i] += 1;
        break;
      }
    }
    if (i < 0) digits = [1, ...digits];
  }
  const all = digits.join("");
  const cut = all.length - places;
  whole = all.slice(0, cut).replace(/^0+(?=\d)/, "") || "0";
  const out = places ? `${whole}.${all.slice(cut)}` : whole;
  const zero = /^[0.]*$/.test(out);
  return (negative && !zero ? "-" : "") + out;
}

export function groupThousands(text) {
  const [whole, fraction] = String(text).split(".");
  const sign = whole.startsWith("-") ? "-" : "";
  const grouped = whole.replace("-", "").replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  return sign + grouped + (fraction !== undefined ? `.${fraction}` : "");
}

export function fmtMoney(text, places = 2) {
  return `$${groupThousands(roundMoney(text, places))}`;
}

export function fmtInt(n) {
  return groupThousands(String(n ?? 0));
}

export function percent(fraction) {
  return `${(Number(fraction) * 100).toFixed(1)}%`;
}

// -- DOM ------------------------------------------------------------------------------------------

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "style") node.setAttribute("style", value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function content() {
  return document.getElementById("content");
}

export function showError(error) {
  const box = document.getElementById("error");
  box.textContent = error ? String(error.message || error) : "";
  box.hidden = !error;
}

// -- time ----------------------------------------------------------------------------------------

export function monthStart(year, month) {
  return new Date(Date.UTC(year, month, 1));
}

export function isoDay(date) {
  return date.toISOString().slice(0, 10);
}

export function isoInstant(date) {
  return `${date.toISOString().slice(0, 19)}Z`;
}

export function fmtTime(text) {
  if (!text) return "";
  return String(text).replace("T", " ").replace(/(\.\d+)?(Z|\+00:00)$/, " UTC");
}

// -- charts --------------------------------------------------------------------------------------

export const CHART_CONFIG = { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["select2d", "lasso2d"] };

export function chartLayout(extra = {}) {
  return {
    margin: { l: 56, r: 16, t: 8, b: 40 },
    paper_bgcolor: "rgba(0,0,0,0)",
    plot_bgcolor: "rgba(0,0,0,0)",
    font: { family: "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", size: 12 },
    legend: { orientation: "h", y: -0.2 },
    ...extra,
  };
}

export function plot(node, traces, layout) {
  return window.Plotly.newPlot(node, traces, chartLayout(layout), CHART_CONFIG);
}

// -- the page frame: who is logged in, what the key may do ----------------------------------------

export async function start(render) {
  const page = document.body.dataset.page;
  for (const link of document.querySelectorAll("[data-nav]")) {
    if (link.dataset.nav === page) link.setAttribute("aria-current", "page");
  }
  if (!storedKey()) {
    // With AGENTLEDGER_AUTH=disabled (loopback only, `agentledger up`) the API needs no key.
    const probe = await fetch("/v1/keys/me", { cache: "no-store" });
    if (!probe.ok) {
      window.location.assign("/dashboard/login");
      return;
    }
    storeKey("auth-disabled");
  }
  let me;
  try {
    me = await api("/v1/keys/me");
  } catch (error) {
    showError(error);
    return;
  }
  const who = document.getElementById("who");
  who.replaceChildren(
    el("span", { class: "key-name", title: `key ${me.key_id}` }, me.name || me.key_id),
    me.team ? el("span", { class: "badge", id: "team-badge" }, `team ${me.team}`) : el("span", { class: "badge" }, "all teams"),
    el("button", { type: "button", class: "link", onclick: logOut }, "Log out"),
  );
  document.body.dataset.ready = "loading";
  try {
    await render(me);
    if (document.body.dataset.ready === "loading") document.body.dataset.ready = "yes";
  } catch (error) {
    showError(error);
    document.body.dataset.ready = "error";
  }
}

export function canWriteBudgets(me) {
  return me.scopes.includes("budgets:write") || me.scopes.includes("admin");
}
