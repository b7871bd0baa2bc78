// The Switchboard web console. Static, no build step: it talks only to the
// public JSON API of the edge that serves it (/v1/...), with the keys the user
// types in (kept in sessionStorage, sent as Authorization: Bearer).

import { colorFor, compact, gauge, horizontalBars, stackedBars } from "./charts.js";

// /console/ -> the edge's root, so the console also works under a path prefix.
const API_ROOT = new URL("../", document.baseURI);
const STORAGE = { admin: "switchboard.console.adminKey", api: "switchboard.console.apiKey" };

const $ = (selector) => document.querySelector(selector);

// ---------------------------------------------------------------- helpers

function el(tag, attrs = {}, ...children) {
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

function show(node, message, kind = "info") {
  if (!message) {
    node.hidden = true;
    node.textContent = "";
    return;
  }
  node.hidden = false;
  node.className = `notice ${kind}`;
  node.replaceChildren(...(Array.isArray(message) ? message : [message]));
}

function pad(n) {
  return String(n).padStart(2, "0");
}

function clock(date = new Date()) {
  return `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
}

function when(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return iso;
  const today = new Date();
  const sameDay = date.toDateString() === today.toDateString();
  return sameDay ? clock(date) : `${date.toISOString().slice(0, 10)} ${clock(date)}`;
}

function ms(value) {
  if (typeof value !== "number" || !Number.isFinite(value)) return "—";
  if (value >= 10000) return `${(value / 1000).toFixed(1)} s`;
  if (value >= 100) return `${Math.round(value)} ms`;
  if (value >= 1) return `${value.toFixed(1)} ms`;
  return `${value.toFixed(2)} ms`;
}

function percent(value) {
  if (typeof value !== "number" || !Number.isFinite(value)) return "—";
  return `${(value * 100).toFixed(value === 1 || value === 0 ? 0 : 1)}%`;
}

function count(value) {
  if (typeof value !== "number") return "—";
  return Number.isInteger(value) ? value.toLocaleString("en-US") : compact(value);
}

function money(value, currency = "USD") {
  if (typeof value !== "number" || !Number.isFinite(value)) return "—";
  const symbol = currency === "USD" ? "$" : `${currency} `;
  if (Math.abs(value) >= 1) {
    return symbol + value.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
  }
  // Small amounts (a call often costs fractions of a cent): three significant digits.
  return symbol + Number(value.toPrecision(3)).toLocaleString("en-US", { maximumFractionDigits: 12 });
}

function durationSeconds(text) {
  const match = /^(\d+)([smhd])$/.exec(text);
  if (!match) return 3600;
  return Number(match[1]) * { s: 1, m: 60, h: 3600, d: 86400 }[match[2]];
}

function enumLabel(value, prefix) {
  if (!value) return "—";
  return String(value).replace(prefix, "").toLowerCase().replaceAll("_", " ");
}

// ---------------------------------------------------------------- API

class ApiError extends Error {
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

function keyFor(kind) {
  return sessionStorage.getItem(STORAGE[kind]) || "";
}

function apiUrl(path, params = {}) {
  const url = new URL(path, API_ROOT);
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(key, value);
  }
  return url;
}

function headersFor(auth, json) {
  const headers = { accept: "application/json" };
  const key = keyFor(auth);
  if (key) headers.authorization = `Bearer ${key}`;
  if (json) headers["content-type"] = "application/json";
  return headers;
}

function errorFrom(status, text) {
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

async function api(path, { method = "GET", body, auth = "admin", params, signal } = {}) {
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

function adminHint(err) {
  if (err instanceof ApiError && (err.status === 401 || err.status === 403)) {
    const button = el("button", { type: "button", class: "link", text: "Enter the admin key" });
    button.addEventListener("click", () => $("#admin-key").focus());
    return [`${err.describe()} `, button, " (SWITCHBOARD_ADMIN_KEY) at the top of the page."];
  }
  return err instanceof ApiError ? err.describe() : String(err);
}

// ---------------------------------------------------------------- polling

class Poller {
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

const state = {
  models: [], // from the admin API
  modelNames: new Set(), // every model name seen anywhere, for filters
  history: [], // the playground conversation
  gpuTicks: 0,
  modelsGeneration: 0,
};

function rememberModels(names) {
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

function fillModelSelect(select) {
  const current = select.value;
  const options = [el("option", { value: "", text: "All models" })];
  for (const name of [...state.modelNames].sort()) options.push(el("option", { value: name, text: name }));
  select.replaceChildren(...options);
  select.value = state.modelNames.has(current) ? current : "";
}

function modelColor(name) {
  const names = [...state.modelNames].sort();
  const index = names.indexOf(name);
  return colorFor(index < 0 ? names.length : index);
}

// ---------------------------------------------------------------- keys and edge status

function initKeys() {
  const admin = $("#admin-key");
  const client = $("#api-key");
  admin.value = keyFor("admin");
  client.value = keyFor("api");
  const save = () => {
    for (const [kind, input] of [["admin", admin], ["api", client]]) {
      const value = input.value.trim();
      if (value) sessionStorage.setItem(STORAGE[kind], value);
      else sessionStorage.removeItem(STORAGE[kind]);
    }
    refreshCurrent();
  };
  $("#keys-form").addEventListener("submit", (event) => {
    event.preventDefault();
    save();
  });
  $("#forget-keys").addEventListener("click", () => {
    admin.value = "";
    client.value = "";
    save();
  });
}

async function loadEdgeStatus() {
  const pill = $("#edge-status");
  try {
    const health = await api("healthz", { auth: "api" });
    const bad = Object.entries(health.components || {}).filter(([, v]) => v !== "ok");
    if (health.status === "ok") {
      pill.className = "pill pill-ok";
      pill.textContent = `Edge: ok${health.version ? ` · ${health.version}` : ""}`;
      pill.title = "";
    } else {
      pill.className = "pill pill-warn";
      pill.textContent = `Edge: ${health.status || "degraded"}`;
      pill.title = bad.map(([k, v]) => `${k}: ${v}`).join("\n");
    }
  } catch (err) {
    pill.className = "pill pill-bad";
    pill.textContent = "Edge: unreachable";
    pill.title = err instanceof ApiError ? err.describe() : String(err);
  }
}

// ---------------------------------------------------------------- models

async function listAllModels() {
  const models = [];
  let token = "";
  for (let page = 0; page < 50; page++) {
    const answer = await api("v1/admin/models", { params: { page_size: 200, page_token: token } });
    models.push(...(answer.models || []));
    token = answer.next_page_token || "";
    if (!token) break;
  }
  return models;
}

async function loadModels() {
  const message = $("#models-message");
  // A switch flipped while this load was in flight makes its answer stale.
  const generation = state.modelsGeneration;
  const [models, health] = await Promise.allSettled([
    listAllModels(),
    api("v1/admin/routing/health"),
  ]);
  if (generation !== state.modelsGeneration) return;
  if (models.status === "rejected") {
    show(message, adminHint(models.reason), "error");
    $("#models-meta").textContent = "";
    if (!state.models.length) $("#models-body").replaceChildren();
    return;
  }
  state.models = models.value;
  rememberModels(state.models.map((m) => m.name));
  const byDeployment = new Map();
  let healthNote = "";
  if (health.status === "fulfilled") {
    for (const d of health.value.deployments || []) byDeployment.set(d.deployment_id, d);
    healthNote = ` · health from router ${health.value.instance || "?"} (config v${health.value.config_version ?? "?"})`;
    // Keep a confirmation ("x is now offline") until the next action.
    if (!message.classList.contains("ok")) show(message, null);
  } else {
    show(message, `Deployment health is unavailable: ${health.reason.message}`, "warn");
  }
  state.health = byDeployment;
  renderModels(byDeployment);
  loadActiveModels();
  $("#models-meta").textContent =
    `${state.models.length} model${state.models.length === 1 ? "" : "s"} · updated ${clock()}${healthNote}`;
}

function breakerBadge(h) {
  if (!h) return el("span", { class: "badge muted", text: "no health data" });
  const stateName = enumLabel(h.breaker, "BREAKER_STATE_");
  const kind = { closed: "ok", "half open": "warn", open: "bad" }[stateName] || "muted";
  const text = { closed: "healthy", "half open": "probing (half-open)", open: "breaker open" }[stateName] || stateName;
  return el("span", { class: `badge ${kind}`, "data-breaker": stateName, text });
}

function renderModels(byDeployment) {
  const body = $("#models-body");
  const focused = document.activeElement?.dataset?.model;
  if (!state.models.length) {
    body.replaceChildren(
      el("tr", {}, el("td", { colspan: 3, class: "empty-state", text: "No models yet. Add one with the CLI (switchboard models add) or the admin API." })),
    );
    return;
  }
  const rows = state.models.map((model) => {
    const online = model.online !== false;
    const chips = [
      el("span", { class: "chip", text: enumLabel(model.kind, "MODEL_KIND_") }),
      model.strategy ? el("span", { class: "chip", text: enumLabel(model.strategy, "ROUTING_STRATEGY_") }) : null,
      ...(model.tags || []).map((t) => el("span", { class: "chip tag", text: t })),
      ...(model.aliases || []).map((a) => el("span", { class: "chip alias", text: `alias ${a}` })),
    ];
    const nameCell = el(
      "th",
      { scope: "row", class: "model-cell" },
      el("div", { class: "model-name", text: model.name }),
      model.display_name || model.description
        ? el("div", { class: "muted small", text: model.display_name || model.description })
        : null,
      el("div", { class: "chips" }, chips),
    );
    const toggle = el(
      "button",
      {
        type: "button",
        role: "switch",
        class: "switch",
        "aria-checked": online ? "true" : "false",
        "aria-label": `${model.name} online`,
        "data-model": model.name,
      },
      el("span", { class: "switch-track", "aria-hidden": "true" }, el("span", { class: "switch-thumb" })),
      el("span", { class: "switch-text", "aria-hidden": "true", text: online ? "Online" : "Offline" }),
    );
    toggle.addEventListener("click", () => setOnline(model.name, !online, toggle));
    const deployments = (model.deployments || []).map((d) => {
      const h = byDeployment.get(d.id);
      const facts = [
        `${d.provider} → ${d.upstream_model || "(same name)"}`,
        `weight ${d.weight ?? 1}`,
        h ? `${h.outstanding ?? 0} in flight` : null,
        h && typeof h.latency_ms === "number" ? `latency ${ms(h.latency_ms)}` : null,
        h && typeof h.ttft_ms === "number" ? `TTFT ${ms(h.ttft_ms)}` : null,
      ].filter(Boolean);
      return el(
        "li",
        { class: "deployment", "data-deployment": d.id },
        el("code", { text: d.id }),
        d.enabled === false ? el("span", { class: "badge muted", text: "disabled" }) : null,
        breakerBadge(h),
        el("span", { class: "muted small", text: facts.join(" · ") }),
      );
    });
    return el(
      "tr",
      { "data-model": model.name, class: online ? "" : "offline" },
      nameCell,
      el("td", {}, toggle),
      el(
        "td",
        {},
        deployments.length
          ? el("ul", { class: "deployments", "aria-label": `${model.name} deployments` }, deployments)
          : el("span", { class: "muted", text: "No deployments: calls to this model fail with 503." }),
      ),
    );
  });
  body.replaceChildren(...rows);
  if (focused) body.querySelector(`button[data-model="${CSS.escape(focused)}"]`)?.focus();
}

// The active model per use (the registry's defaults): what calls naming no model get.
const ACTIVE_USES = { MODEL_USE_CHAT: "chat", MODEL_USE_VISION: "vision" };

async function loadActiveModels() {
  let defaults;
  try {
    defaults = (await api("v1/admin/defaults")).defaults || [];
  } catch (err) {
    return; // the models' own load already says what is wrong with the key
  }
  const active = new Map(defaults.map((d) => [d.use, d.model]));
  const chat = state.models.filter((m) => m.kind === "MODEL_KIND_CHAT" && m.online !== false);
  for (const select of document.querySelectorAll("#active-models select")) {
    // Not while someone is choosing.
    if (document.activeElement === select || select.disabled) continue;
    const current = active.get(select.dataset.use) || "";
    const options = current ? [] : [el("option", { value: "", text: "(none)", disabled: true })];
    for (const model of chat) options.push(el("option", { value: model.name, text: model.name }));
    if (current && !chat.some((m) => m.name === current)) {
      options.push(el("option", { value: current, text: `${current} (offline)` }));
    }
    select.replaceChildren(...options);
    select.value = current;
  }
}

async function activate(select) {
  const message = $("#models-message");
  const use = select.dataset.use;
  const model = select.value;
  select.disabled = true;
  try {
    await api(`v1/admin/defaults/${use}`, { method: "PUT", body: { model } });
    show(message, `${model} is now the active ${ACTIVE_USES[use]} model.`, "ok");
  } catch (err) {
    show(message, [`Could not activate ${model}: `, ...[].concat(adminHint(err))], "error");
  } finally {
    select.disabled = false;
    loadActiveModels();
  }
}

function initActiveModels() {
  for (const select of document.querySelectorAll("#active-models select")) {
    select.addEventListener("change", () => activate(select));
  }
  $("#active-models").addEventListener("submit", (event) => event.preventDefault());
}

async function setOnline(name, online, button) {
  const message = $("#models-message");
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  try {
    const answer = await api(`v1/admin/models/${encodeURIComponent(name)}`, {
      method: "PATCH",
      body: { online },
    });
    const updated = answer.model || {};
    state.modelsGeneration += 1;
    state.models = state.models.map((m) =>
      m.name === name ? { ...m, ...updated, deployments: updated.deployments || m.deployments } : m,
    );
    renderModels(state.health || new Map());
    show(message, `${name} is now ${updated.online === false ? "offline" : "online"}.`, "ok");
    models.run();
  } catch (err) {
    show(message, [`Could not switch ${name} ${online ? "online" : "offline"}: `, ...[].concat(adminHint(err))], "error");
    button.disabled = false;
    button.removeAttribute("aria-busy");
  }
}

// ---------------------------------------------------------------- playground

async function loadChatModels() {
  try {
    const answer = await api("v1/models", { auth: "api" });
    const ids = (answer.data || []).map((m) => m.id);
    rememberModels(ids);
    const input = $("#chat-model");
    if (!input.value && ids.length) input.value = ids[0];
  } catch (err) {
    // The playground still works with a typed model name.
    console.warn("model list", err);
  }
}

function bubble(role, text = "") {
  $("#transcript-empty")?.remove();
  const content = el("div", { class: "content", text });
  const meta = el("div", { class: "bubble-meta muted small" });
  const node = el(
    "article",
    { class: `message ${role}`, "aria-label": role === "user" ? "You" : "Assistant" },
    el("div", { class: "who", text: role === "user" ? "You" : "Assistant" }),
    content,
    meta,
  );
  $("#transcript").append(node);
  node.scrollIntoView({ block: "end" });
  return { node, content, meta };
}

let chatAbort = null;

async function sendChat(event) {
  event.preventDefault();
  if (chatAbort) return;
  const model = $("#chat-model").value.trim();
  const text = $("#chat-message").value;
  if (!model || !text.trim()) return;
  const error = $("#chat-error");
  show(error, null);
  const messages = [];
  const system = $("#chat-system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  messages.push(...state.history, { role: "user", content: text });
  const body = { model, messages, stream: true, stream_options: { include_usage: true } };
  const temperature = $("#chat-temperature").value;
  const maxTokens = $("#chat-max-tokens").value;
  if (temperature !== "") body.temperature = Number(temperature);
  if (maxTokens !== "") body.max_tokens = Number(maxTokens);

  bubble("user", text);
  $("#chat-message").value = "";
  const reply = bubble("assistant");
  reply.node.setAttribute("aria-busy", "true");
  reply.node.classList.add("streaming");
  chatAbort = new AbortController();
  $("#chat-send").disabled = true;
  $("#chat-stop").disabled = false;
  const started = performance.now();
  let firstToken = null;
  let answer = "";
  let usage = null;
  let served = null;
  try {
    const response = await fetch(apiUrl("v1/chat/completions"), {
      method: "POST",
      headers: { ...headersFor("api", true), accept: "text/event-stream" },
      body: JSON.stringify(body),
      signal: chatAbort.signal,
      cache: "no-store",
    });
    served = {
      model: response.headers.get("x-switchboard-model"),
      deployment: response.headers.get("x-switchboard-deployment"),
      fallbackFrom: response.headers.get("x-switchboard-fallback-from"),
    };
    if (!response.ok) throw errorFrom(response.status, await response.text());
    await readEvents(response, (event) => {
      if (event.error) {
        const e = event.error;
        throw new ApiError(response.status, e.message || "The stream ended with an error.", e.type, e.code, e.param);
      }
      if (event.model && !served.model) served.model = event.model;
      if (event.usage) usage = event.usage;
      for (const choice of event.choices || []) {
        const delta = choice.delta?.content;
        if (typeof delta === "string" && delta) {
          if (firstToken === null) firstToken = performance.now() - started;
          answer += delta;
          reply.content.textContent = answer;
        }
      }
    });
    state.history.push({ role: "user", content: text }, { role: "assistant", content: answer });
    reply.node.classList.add("done");
  } catch (err) {
    reply.node.classList.add("failed");
    if (err.name === "AbortError") {
      reply.meta.textContent = "Stopped.";
      if (answer) state.history.push({ role: "user", content: text }, { role: "assistant", content: answer });
    } else {
      const apiError = err instanceof ApiError ? err : new ApiError(0, String(err.message || err));
      reply.content.textContent = answer;
      reply.meta.before(el("p", { class: "bubble-error", text: apiError.describe() }));
      show(error, [
        el("strong", { text: "The call failed. " }),
        apiError.describe(),
        apiError.type ? el("span", { class: "muted", text: ` (type ${apiError.type})` }) : null,
      ], "error");
      error.dataset.code = apiError.code || "";
    }
  } finally {
    reply.node.removeAttribute("aria-busy");
    reply.node.classList.remove("streaming");
    const total = performance.now() - started;
    const facts = [
      served?.model ? `model ${served.model}` : null,
      served?.fallbackFrom ? `fallback from ${served.fallbackFrom}` : null,
      served?.deployment ? `deployment ${served.deployment}` : null,
      firstToken !== null ? `first token ${ms(firstToken)}` : null,
      `total ${ms(total)}`,
      usage ? `${usage.prompt_tokens} → ${usage.completion_tokens} tokens` : null,
    ].filter(Boolean);
    if (!reply.meta.textContent) reply.meta.textContent = facts.join(" · ");
    chatAbort = null;
    $("#chat-send").disabled = false;
    $("#chat-stop").disabled = true;
    reply.node.scrollIntoView({ block: "end" });
  }
}

// OpenAI server-sent events: "data: {...}\n\n" ... "data: [DONE]\n\n".
async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    buffer += decoder.decode(value || new Uint8Array(), { stream: !done });
    buffer = buffer.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const raw = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = raw
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).replace(/^ /, ""))
        .join("\n");
      if (!data) continue;
      if (data === "[DONE]") {
        await reader.cancel().catch(() => {});
        return;
      }
      let event;
      try {
        event = JSON.parse(data);
      } catch {
        throw new ApiError(response.status, `Unreadable event in the stream: ${data.slice(0, 120)}`);
      }
      onEvent(event);
    }
    if (done) break;
  }
  throw new ApiError(response.status, "The stream ended before [DONE]: the reply may be incomplete.");
}

function initPlayground() {
  $("#chat-form").addEventListener("submit", sendChat);
  $("#chat-message").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      $("#chat-form").requestSubmit();
    }
  });
  $("#chat-stop").addEventListener("click", () => chatAbort?.abort());
  $("#chat-clear").addEventListener("click", () => {
    state.history = [];
    show($("#chat-error"), null);
    $("#transcript").replaceChildren(
      el("p", { class: "empty-state", id: "transcript-empty", text: "Send a message to start. Replies stream in as they are generated." }),
    );
  });
}

// ---------------------------------------------------------------- usage

function bucketLabeler(step) {
  return (date, long = false) => {
    if (step >= 86400) return date.toISOString().slice(0, 10);
    const hm = `${pad(date.getHours())}:${pad(date.getMinutes())}`;
    return long ? `${date.toLocaleDateString()} ${hm}` : hm;
  };
}

async function loadUsage() {
  const [span, interval] = $("#usage-window").value.split("|");
  const model = $("#usage-model").value;
  const message = $("#usage-message");
  const today = new Date().toISOString().slice(0, 10);
  const [series, summary] = await Promise.allSettled([
    api("v1/usage/timeseries", { params: { window: span, interval, model } }),
    api("v1/usage/summary", { params: { start: today, end: today, model } }),
  ]);
  if (series.status === "rejected") {
    show(message, `Usage over time is unavailable: ${series.reason.describe?.() || series.reason}`, "error");
  } else {
    show(message, null);
    renderUsage(series.value, span, interval);
  }
  if (summary.status === "fulfilled") renderUsageTiles(summary.value);
  $("#usage-meta").textContent = `Updated ${clock()} · calls are counted within seconds`;
}

function renderUsageTiles(summary) {
  rememberModels(Object.keys(summary.by_model || {}));
  const currency = summary.currency || "USD";
  state.currency = currency;
  $("#usage-tiles").replaceChildren(
    tile("Requests today (UTC)", count(summary.total_requests)),
    tile("Tokens today (UTC)", count(summary.total_tokens)),
    tile("Cost today (UTC)", money(summary.total_cost, currency)),
  );
}

function tile(label, value, kind = "") {
  return el("div", { class: `tile ${kind}` }, el("div", { class: "tile-label", text: label }), el("div", { class: "tile-value", text: value }));
}

function renderUsage(answer, span, interval) {
  state.lastUsage = [answer, span, interval];
  const points = answer.points || [];
  rememberModels(points.map((p) => p.model));
  const step = durationSeconds(interval) * 1000;
  const now = Date.now();
  const first = Math.floor((now - durationSeconds(span) * 1000) / step) * step;
  const last = Math.floor(now / step) * step;
  const times = new Set();
  for (let t = first; t <= last; t += step) times.add(t);
  for (const p of points) times.add(Date.parse(p.time));
  const buckets = [...times].filter(Number.isFinite).sort((a, b) => a - b);
  const index = new Map(buckets.map((t, i) => [t, i]));
  const models = [...new Set(points.map((p) => p.model))].sort();
  const make = (field) =>
    models.map((name) => {
      const values = new Array(buckets.length).fill(0);
      for (const p of points) if (p.model === name) values[index.get(Date.parse(p.time))] += p[field] || 0;
      return { name, color: modelColor(name), values };
    });
  const dates = buckets.map((t) => new Date(t));
  const label = bucketLabeler(step / 1000);
  const windowText = $("#usage-window").selectedOptions[0].textContent.toLowerCase();
  const currency = state.currency || "USD";
  const charts = [
    ["#chart-requests", "requests", "Requests", count, compact],
    ["#chart-tokens", "tokens", "Tokens", count, compact],
    ["#chart-cost", "cost", "Cost", (v) => money(v, currency), (v) => money(v, currency)],
  ];
  for (const [slot, field, name, format, tickFormat] of charts) {
    $(slot).replaceChildren(
      stackedBars({
        label: `${name} by model, ${windowText}`,
        buckets: dates,
        bucketLabel: label,
        series: make(field),
        format,
        tickFormat,
        integer: field !== "cost",
        width: $(slot).clientWidth,
        empty: "No calls in this window yet",
      }),
    );
  }
  $("#usage-legend").replaceChildren(
    ...models.map((name) => {
      const swatch = el("span", { class: "swatch", "aria-hidden": "true" });
      swatch.style.setProperty("--swatch", modelColor(name));
      return el("span", { class: "legend-item", role: "listitem" }, swatch, name);
    }),
  );
  $("#usage-table tbody").replaceChildren(
    ...(points.length
      ? [...points].reverse().map((p) =>
          el(
            "tr",
            {},
            el("td", { text: when(p.time) }),
            el("td", { text: p.model }),
            el("td", { class: "num", text: count(p.requests) }),
            el("td", { class: "num", text: count(p.tokens) }),
            el("td", { class: "num", text: money(p.cost, currency) }),
          ),
        )
      : [el("tr", {}, el("td", { colspan: 5, class: "empty-state", text: "No calls in this window yet." }))]),
  );
}

// ---------------------------------------------------------------- performance

async function loadPerformance() {
  const message = $("#perf-message");
  let answer;
  try {
    answer = await api("v1/usage/performance", {
      params: { window: $("#perf-window").value, model: $("#perf-model").value },
    });
  } catch (err) {
    show(message, `Performance is unavailable: ${err.describe?.() || err}`, "error");
    return;
  }
  const total = answer.total_requests || 0;
  show(message, total ? null : "No calls in this window: percentiles appear after the first call.", "info");
  rememberModels(Object.keys(answer.by_model || {}));
  $("#perf-tiles").replaceChildren(
    tile("Requests", count(total)),
    tile("Success rate", total ? percent(answer.success_rate) : "—", total && answer.success_rate < 0.99 ? "warn" : ""),
    tile("Error rate", total ? percent(answer.error_rate) : "—", total && answer.error_rate > 0.01 ? "bad" : ""),
    tile("Requests / s", total ? compact(answer.requests_per_second) : "—"),
    tile("Output tokens / s", total ? compact(answer.output_tokens_per_second) : "—"),
  );
  const rows = (p, group) =>
    ["p50", "p95", "p99"].map((q) => ({ name: q, value: p && typeof p[q] === "number" ? p[q] : null, group: `${group} ${q}` }));
  $("#chart-latency").replaceChildren(
    horizontalBars({ label: `Latency percentiles, ${answer.window}`, rows: rows(answer.latency_ms, "latency"), format: ms }),
  );
  $("#chart-ttft").replaceChildren(
    horizontalBars({ label: `Time to first token percentiles, ${answer.window}`, rows: rows(answer.ttft_ms, "ttft"), format: ms }),
  );
  const models = Object.entries(answer.by_model || {}).sort(([a], [b]) => a.localeCompare(b));
  $("#perf-table tbody").replaceChildren(
    ...(models.length
      ? models.map(([name, m]) =>
          el(
            "tr",
            {},
            el("th", { scope: "row", text: name }),
            el("td", { class: "num", text: count(m.total_requests) }),
            el("td", { class: "num", text: percent(m.success_rate) }),
            ...["p50", "p95", "p99"].map((q) => el("td", { class: "num", text: ms(m.latency_ms?.[q]) })),
            ...["p50", "p95", "p99"].map((q) => el("td", { class: "num", text: ms(m.ttft_ms?.[q]) })),
          ),
        )
      : [el("tr", {}, el("td", { colspan: 9, class: "empty-state", text: "No calls in this window." }))]),
  );
  $("#perf-meta").textContent = `Window ${answer.window} · updated ${clock()}`;
}

// ---------------------------------------------------------------- GPUs

async function loadGpu() {
  const message = $("#gpu-message");
  const wantAlerts = state.gpuTicks++ % 5 === 0;
  const [status, alerts] = await Promise.allSettled([
    api("v1/admin/gpu/status"),
    wantAlerts ? api("v1/admin/gpu/alerts", { params: { limit: 50 } }) : Promise.resolve(null),
  ]);
  if (status.status === "rejected") {
    show(message, adminHint(status.reason), "error");
    return;
  }
  show(message, null);
  renderNode(status.value);
  if (alerts.status === "fulfilled" && alerts.value) renderAlerts(alerts.value.alerts || []);
  else if (alerts.status === "rejected") {
    $("#alerts-table tbody").replaceChildren(
      el("tr", {}, el("td", { colspan: 7, class: "empty-state", text: `Alert history unavailable: ${alerts.reason.describe?.() || alerts.reason}` })),
    );
  }
  $("#gpu-meta").textContent = `Live · refreshed every 2 s · last ${clock()}`;
}

function renderNode(answer) {
  const node = answer.status || {};
  const nvml = enumLabel(node.nvml_state, "NVML_STATE_");
  const facts = el(
    "dl",
    { class: "facts" },
    el("dt", { text: "Node" }), el("dd", { text: node.hostname || "—" }),
    el("dt", { text: "NVML" }), el("dd", {}, el("span", { class: `badge ${node.nvml_state === "NVML_STATE_AVAILABLE" ? "ok" : "warn"}`, text: nvml })),
    el("dt", { text: "Driver" }), el("dd", { text: node.driver_version || "—" }),
    el("dt", { text: "CUDA" }), el("dd", { text: node.cuda_version || "—" }),
    el("dt", { text: "Sampled" }), el("dd", { text: when(node.sample_time) }),
    el("dt", { text: "Alert rules" }), el("dd", { text: `${(answer.rules || []).length} (registry v${answer.registry_version ?? "?"})` }),
  );
  const parts = [el("h2", { text: "Node" }), facts];
  if (node.nvml_state === "NVML_STATE_UNAVAILABLE") {
    parts.push(
      el(
        "div",
        { class: "notice warn", role: "status", id: "nvml-unavailable" },
        el("strong", { text: "NVML is unavailable on this node. " }),
        `Reason: ${node.reason || "not given"}. No GPU readings are shown: this node has no GPU, or its driver is not reachable.`,
      ),
    );
  } else if (node.nvml_state === "NVML_STATE_NO_DEVICES") {
    parts.push(el("div", { class: "notice info", role: "status", text: "NVML works, but reports no GPUs on this node." }));
  }
  $("#gpu-node").replaceChildren(...parts);
  const devices = node.devices || [];
  $("#gpu-devices").replaceChildren(...devices.map(renderDevice));
  const active = answer.active_alerts || [];
  $("#gpu-active").replaceChildren(
    active.length
      ? el("ul", { class: "active-alerts" }, active.map((a) => el("li", { class: `alert ${severityClass(a.severity)}` }, el("strong", { text: a.rule_name }), ` — ${a.message || a.metric}`)))
      : el("p", { class: "muted", text: "No alerts firing on this node." }),
  );
}

function renderDevice(d) {
  const health = enumLabel(d.health, "GPU_HEALTH_");
  const healthKind = { ok: "ok", saturated: "warn", alerting: "warn", unhealthy: "bad" }[health] || "muted";
  const num = (v) => (typeof v === "number" ? v : null);
  const memPct = num(d.memory_used_mib) !== null && num(d.memory_total_mib) ? (d.memory_used_mib / d.memory_total_mib) * 100 : null;
  const gauges = el(
    "div",
    { class: "gauges" },
    gauge({ label: `GPU ${d.index} utilisation`, value: num(d.utilization_gpu_percent), max: 100, text: `${Math.round(d.utilization_gpu_percent ?? 0)}%`, sub: "utilisation", warn: 80, crit: 95 }),
    gauge({
      label: `GPU ${d.index} memory`,
      value: memPct,
      max: 100,
      text: memPct === null ? "" : `${Math.round(memPct)}%`,
      sub: memPct === null ? "" : `${(d.memory_used_mib / 1024).toFixed(1)} / ${(d.memory_total_mib / 1024).toFixed(1)} GiB`,
      warn: 85,
      crit: 95,
    }),
    gauge({ label: `GPU ${d.index} temperature`, value: num(d.temperature_c), max: 100, text: `${Math.round(d.temperature_c ?? 0)} °C`, sub: "temperature", warn: 80, crit: 90 }),
    gauge({
      label: `GPU ${d.index} power`,
      value: num(d.power_w),
      max: num(d.power_limit_w) || 700,
      text: `${Math.round(d.power_w ?? 0)} W`,
      sub: num(d.power_limit_w) ? `of ${Math.round(d.power_limit_w)} W` : "power",
      warn: (num(d.power_limit_w) || 700) * 0.9,
      crit: (num(d.power_limit_w) || 700) * 0.98,
    }),
  );
  const extra = [
    num(d.sm_clock_mhz) !== null ? `SM ${d.sm_clock_mhz} MHz` : null,
    num(d.memory_clock_mhz) !== null ? `memory ${d.memory_clock_mhz} MHz` : null,
    num(d.ecc_uncorrected_errors) !== null ? `ECC uncorrected ${d.ecc_uncorrected_errors}` : null,
    num(d.last_xid) ? `last XID ${d.last_xid}` : null,
  ].filter(Boolean);
  const processes = d.processes || [];
  return el(
    "article",
    { class: "card device", "aria-label": `GPU ${d.index} ${d.name || ""}`, "data-uuid": d.uuid },
    el("div", { class: "device-head" },
      el("h3", { text: `GPU ${d.index} · ${d.name || "unknown"}` }),
      el("span", { class: `badge ${healthKind}`, text: health })),
    d.health_reason ? el("p", { class: "muted small", text: d.health_reason }) : null,
    gauges,
    extra.length ? el("p", { class: "muted small", text: extra.join(" · ") }) : null,
    (d.nvml_errors || []).length ? el("ul", { class: "errors" }, d.nvml_errors.map((e) => el("li", { text: e }))) : null,
    el("details", {},
      el("summary", { text: `${processes.length} process${processes.length === 1 ? "" : "es"} · ${d.uuid || ""}` }),
      processes.length
        ? el("ul", { class: "processes" }, processes.map((p) => el("li", { text: `${p.pid} ${p.name || ""}${typeof p.used_memory_mib === "number" ? ` · ${p.used_memory_mib} MiB` : ""}` })))
        : el("p", { class: "muted small", text: "No compute processes." })),
  );
}

function severityClass(severity) {
  return { SEVERITY_CRITICAL: "bad", SEVERITY_WARNING: "warn", SEVERITY_INFO: "info" }[severity] || "muted";
}

function renderAlerts(alerts) {
  const comparator = { COMPARATOR_GREATER_THAN: ">", COMPARATOR_LESS_THAN: "<" };
  $("#alerts-table tbody").replaceChildren(
    ...(alerts.length
      ? alerts.map((a) =>
          el(
            "tr",
            { class: a.state === "ALERT_STATE_FIRING" ? "firing" : "" },
            el("td", {}, el("span", { class: `badge ${a.state === "ALERT_STATE_FIRING" ? "bad" : "muted"}`, text: enumLabel(a.state, "ALERT_STATE_") })),
            el("td", {}, el("span", { class: `badge ${severityClass(a.severity)}`, text: enumLabel(a.severity, "SEVERITY_") })),
            el("td", { text: `${a.rule_name} (${a.metric})` }),
            el("td", { text: `${a.hostname} / GPU ${a.gpu_index}` }),
            el("td", { class: "num", text: `${compact(a.value)} ${comparator[a.comparator] || "vs"} ${compact(a.threshold)}` }),
            el("td", { text: when(a.start_time || a.time) }),
            el("td", { text: a.message || "" }),
          ),
        )
      : [el("tr", {}, el("td", { colspan: 7, class: "empty-state", text: "No alerts recorded." }))]),
  );
}

// ---------------------------------------------------------------- tabs

const models = new Poller(loadModels, 5000);
const pollers = {
  models,
  playground: new Poller(loadChatModels, 0),
  usage: new Poller(loadUsage, 5000),
  performance: new Poller(loadPerformance, 10000),
  gpu: new Poller(loadGpu, 2000),
};
let current = null;

function selectTab(name, { focus = false } = {}) {
  if (!pollers[name]) name = "models";
  for (const tab of document.querySelectorAll('[role="tab"]')) {
    const selected = tab.id === `tab-${name}`;
    tab.setAttribute("aria-selected", selected ? "true" : "false");
    tab.tabIndex = selected ? 0 : -1;
    if (selected && focus) tab.focus();
  }
  for (const panel of document.querySelectorAll('[role="tabpanel"]')) {
    panel.hidden = panel.id !== `panel-${name}`;
  }
  if (current && current !== name) pollers[current].stop();
  current = name;
  if (location.hash !== `#${name}`) history.replaceState(null, "", `#${name}`);
  pollers[name].start();
}

function refreshCurrent() {
  loadEdgeStatus();
  if (current) pollers[current].run();
}

function initTabs() {
  const tabs = [...document.querySelectorAll('[role="tab"]')];
  for (const tab of tabs) {
    tab.addEventListener("click", () => selectTab(tab.id.replace("tab-", "")));
    tab.addEventListener("keydown", (event) => {
      const i = tabs.indexOf(tab);
      const next = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: tabs.length - 1 }[event.key];
      if (next === undefined) return;
      event.preventDefault();
      const target = tabs[(next + tabs.length) % tabs.length];
      selectTab(target.id.replace("tab-", ""), { focus: true });
    });
  }
  window.addEventListener("hashchange", () => selectTab(location.hash.slice(1)));
  // Charts are drawn at their slot's width (legible text at any size): redraw on resize.
  let width = 0;
  new ResizeObserver(([entry]) => {
    const now = Math.round(entry.contentRect.width);
    if (now && now !== width && state.lastUsage) renderUsage(...state.lastUsage);
    width = now;
  }).observe($("#chart-requests"));
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && current) pollers[current].run();
  });
  $("#models-refresh").addEventListener("click", () => pollers.models.run());
  $("#usage-refresh").addEventListener("click", () => pollers.usage.run());
  $("#perf-refresh").addEventListener("click", () => pollers.performance.run());
  for (const id of ["#usage-window", "#usage-model"]) $(id).addEventListener("change", () => pollers.usage.run());
  for (const id of ["#perf-window", "#perf-model"]) $(id).addEventListener("change", () => pollers.performance.run());
  for (const form of ["#usage-filters", "#perf-filters"]) $(form).addEventListener("submit", (e) => e.preventDefault());
}

function main() {
  initKeys();
  initTabs();
  initPlayground();
  initActiveModels();
  loadEdgeStatus();
  setInterval(() => {
    if (!document.hidden) loadEdgeStatus();
  }, 15000);
  loadChatModels();
  selectTab(location.hash.slice(1) || "models");
}

main();
