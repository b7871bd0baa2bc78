// What every screen of the console shares: DOM helpers, formatting, the edge's
// JSON API (with the keys the user typed, kept in sessionStorage), polling, and
// the models seen so far.

import { colorFor, compact } from "./charts.js";

// /console/ -> the edge's root, so the console also works under a path prefix.
export const API_ROOT = new URL("../", document.baseURI);
export const STORAGE = { admin: "switchboard.console.adminKey", api: "switchboard.console.apiKey" };

export const $ = (selector) => document.querySelector(selector);

// ---------------------------------------------------------------- helpers

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function show(node, message, kind = "info") {
  if (!message) {
    node.hidden = true;
    node.textContent = "";
    return;
  }
  node.hidden = false;
  node.className = `notice ${kind}`;
  node.replaceChildren(...(Array.isArray(message) ? message : [message]));
}

export function pad(n) {
  return String(n).padStart(2, "0");
}

export function clock(date = new Date()) {
  return `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
}

export function when(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return iso;
  const today = new Date();
  const sameDay = date.toDateString() === today.toDateString();
  return sameDay ? clock(date) : `${date.toISOString().slice(0, 10)} ${clock(date)}`;
}

export function ms(value) {
  if (typeof value !== "number" || !Number.isFinite(value)) return "—";
  if (value >= 10000) return `${(value / 1000).toFixed(1)} s`;
  if (value >= 100) return `${Math.round(value)} ms`;
  if (value >= 1) return `${value.toFixed(1)} ms`;
  return `${value.toFixed(2)} ms`;
}

export function percent(value) {
  if (typeof value !== "number" || !Number.isFinite(value)) return "—";
  return `${(value * 100).toFixed(value === 1 || value === 0 ? 0 : 1)}%`;
}

export function count(value) {
  if (typeof value !== "number") return "—";
  return Number.isInteger(value) ? value.toLocaleString("en-US") : compact(value);
}

export function money(value, currency = "USD") {
  if (typeof value !== "number" || !Number.isFinite(value)) return "—";
  const symbol = currency === "USD" ? "$" : `${currency} `;
  if (Math.abs(value) >= 1) {
    return symbol + value.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
  }
  // Small amounts (a call often costs fractions of a cent): three significant digits.
  return symbol + Number(value.toPrecision(3)).toLocaleString("en-US", { maximumFractionDigits: 12 });
}

export function durationSeconds(text) {
  const match = /^(\d+)([smhd])$/.exec(text);
  if (!match) return 3600;
  return Number(match[1]) * { s: 1, m: 60, h: 3600, d: 86400 }[match[2]];
}

export function enumLabel(value, prefix) {
  if (!value) return "—";
  return String(value).replace(prefix, "").toLowerCase().replaceAll("_", " ");
}

// ---------------------------------------------------------------- API

export class ApiError extends Error {
  constructor(status, message, type = null, code = null, param = null) {
    super(message);
    this.status = status;
    this.type = type;
    this.code = code;
    this.param = param;
  }

  // "404 model_not_found: The model 'x' is offline: ..."
  describe() {
    const head = [this.status ? `HTTP ${this.status}` : null, this.code || this.type]
      .filter(Boolean)
      .join(" · ");
    return head ? `${head} — ${this.message}` : this.message;
  }
}

export function keyFor(kind) {
  return sessionStorage.getItem(STORAGE[kind]) || "";
}

export function apiUrl(path, params = {}) {
  const url = new URL(path, API_ROOT);
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(key, value);
  }
  return url;
}

export function headersFor(auth, json) {
  const headers = { accept: "application/json" };
  const key = keyFor(auth);
  if (key) headers.authorization = `Bearer ${key}`;
  if (json) headers["content-type"] = "application/json";
  return headers;
}

export function errorFrom(status, text) {
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  const error = data && typeof data === "object" ? data.error : null;
  if (error && typeof error === "object") {
    return new ApiError(status, error.message || `HTTP ${status}`, error.type, error.code, error.param);
  }
  return new ApiError(status, text ? text.slice(0, 300) : `The edge answered HTTP ${status}.`);
}

export async function api(path, { method = "GET", body, auth = "admin", params, signal } = {}) {
  let response;
  try {
    response = await fetch(apiUrl(path, params), {
      method,
      headers: headersFor(auth, body !== undefined),
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      cache: "no-store",
    });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, `The edge did not answer (${err.message}).`, "network_error");
  }
  const text = await response.text();
  if (!response.ok) throw errorFrom(response.status, text);
  try {
    return text ? JSON.parse(text) : {};
  } catch {
    throw new ApiError(response.status, "The edge answered with something that is not JSON.");
  }
}

export function adminHint(err) {
  if (err instanceof ApiError && (err.status === 401 || err.status === 403)) {
    const button = el("button", { type: "button", class: "link", text: "Enter the admin key" });
    button.addEventListener("click", () => $("#admin-key").focus());
    return [`${err.describe()} `, button, " (SWITCHBOARD_ADMIN_KEY) at the top of the page."];
  }
  return err instanceof ApiError ? err.describe() : String(err);
}

// ---------------------------------------------------------------- polling

export class Poller {
  constructor(load, everyMs) {
    this.load = load;
    this.everyMs = everyMs;
    this.active = false;
    this.busy = false;
    this.again = false;
    this.timer = null;
  }

  start() {
    this.active = true;
    this.run();
  }

  stop() {
    this.active = false;
    clearTimeout(this.timer);
  }

  async run() {
    clearTimeout(this.timer);
    if (this.busy) {
      this.again = true;
      return;
    }
    this.busy = true;
    try {
      await this.load();
    } catch (err) {
      console.error(err);
    } finally {
      this.busy = false;
    }
    if (this.again) {
      this.again = false;
      this.run();
      return;
    }
    if (this.active && this.everyMs && !document.hidden) {
      this.timer = setTimeout(() => this.run(), this.everyMs);
    }
  }
}

// ---------------------------------------------------------------- shared state

export const state = {
  models: [], // from the admin API
  modelNames: new Set(), // every model name seen anywhere, for filters
  history: [], // the playground conversation
  modelsGeneration: 0,
};

export function rememberModels(names) {
  let changed = false;
  for (const name of names) {
    if (name && !state.modelNames.has(name)) {
      state.modelNames.add(name);
      changed = true;
    }
  }
  if (changed) {
    for (const id of ["#usage-model", "#perf-model"]) fillModelSelect($(id));
    const list = $("#chat-models");
    list.replaceChildren(...[...state.modelNames].sort().map((name) => el("option", { value: name })));
  }
}

export function fillModelSelect(select) {
  const current = select.value;
  const options = [el("option", { value: "", text: "All models" })];
  for (const name of [...state.modelNames].sort()) options.push(el("option", { value: name, text: name }));
  select.replaceChildren(...options);
  select.value = state.modelNames.has(current) ? current : "";
}

export function modelColor(name) {
  const names = [...state.modelNames].sort();
  const index = names.indexOf(name);
  return colorFor(index < 0 ? names.length : index);
}

export function tile(label, value, kind = "") {
  return el("div", { class: `tile ${kind}` }, el("div", { class: "tile-label", text: label }), el("div", { class: "tile-value", text: value }));
}

export function severityClass(severity) {
  return { SEVERITY_CRITICAL: "bad", SEVERITY_WARNING: "warn", SEVERITY_INFO: "info" }[severity] || "muted";
}
