// The Switchboard web console. Static, no build step: it talks only to the
// public JSON API of the edge that serves it (/v1/...), with the keys the user
// types in (kept in sessionStorage, sent as Authorization: Bearer). This module
// holds the keys, the playground, usage, performance and the tabs; each other
// screen has its own module (models.js, registry.js, engines.js, gpu.js).

import { compact, horizontalBars, stackedBars } from "./charts.js";
import {
  $,
  ApiError,
  Poller,
  STORAGE,
  apiUrl,
  api,
  clock,
  count,
  durationSeconds,
  el,
  errorFrom,
  headersFor,
  keyFor,
  modelColor,
  money,
  ms,
  pad,
  percent,
  rememberModels,
  show,
  state,
  tile,
  when,
} from "./common.js";
import { initEngines, loadEngines } from "./engines.js";
import { loadGpu } from "./gpu.js";
import { initModels, loadModels } from "./models.js";
import { initRegistry } from "./registry.js";

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

// ---------------------------------------------------------------- tabs

const pollers = {
  models: new Poller(loadModels, 5000),
  playground: new Poller(loadChatModels, 0),
  usage: new Poller(loadUsage, 5000),
  performance: new Poller(loadPerformance, 10000),
  engines: new Poller(loadEngines, 2000),
  gpu: new Poller(loadGpu, 2000),
};
state.reloadModels = () => pollers.models.run();
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
  initModels();
  initRegistry();
  initEngines();
  loadEdgeStatus();
  setInterval(() => {
    if (!document.hidden) loadEdgeStatus();
  }, 15000);
  loadChatModels();
  selectTab(location.hash.slice(1) || "models");
}

main();
