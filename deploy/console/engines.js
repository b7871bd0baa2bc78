// The Engines tab: the self-hosted engines (llama.cpp, vLLM) the engine service
// of this node runs, with their state, resource use and the latest task; start,
// stop and restart them; and read an engine's log, refreshed while it is open.

import { gauge } from "./charts.js";
import { $, adminHint, api, clock, el, enumLabel, show, when } from "./common.js";

const STATE_BADGE = { running: "ok", starting: "warn", stopping: "warn", error: "bad", stopped: "muted", created: "muted" };
const TASK_WAIT_MS = 250;
const LOG_LINES = 200;
const engines = { list: [], logsOf: "", tasks: new Map() };

function stateOf(engine) {
  return enumLabel(engine.state || "ENGINE_STATE_CREATED", "ENGINE_STATE_");
}

function mib(bytes) {
  return `${Math.round(Number(bytes || 0) / 1048576)} MiB`;
}

export async function loadEngines() {
  const message = $("#engines-message");
  let answer;
  try {
    answer = await api("v1/admin/engines");
  } catch (err) {
    show(message, adminHint(err), "error");
    return;
  }
  if (!message.classList.contains("ok")) show(message, null);
  engines.list = answer.engines || [];
  renderEngines(answer);
  if (engines.logsOf) await loadLogs();
}

function renderEngines(answer) {
  const active = answer.active_models ?? 0;
  const max = answer.max_concurrent_models ?? 0;
  $("#engines-meta").textContent = `${active} of ${max || "?"} engine slots in use on this node · updated ${clock()}`;
  const body = $("#engines-body");
  if (!engines.list.length) {
    body.replaceChildren(
      el("tr", {}, el("td", { colspan: 5, class: "empty-state", text: "No engines. Create one with `switchboard engines create` or POST /v1/admin/engines." })),
    );
    return;
  }
  body.replaceChildren(...engines.list.map(engineRow));
}

function engineRow(engine) {
  const state = stateOf(engine);
  const config = engine.config || {};
  const busy = state === "starting" || state === "stopping";
  const button = (verb, label, disabled) => {
    const b = el("button", { type: "button", class: "button", "aria-label": `${label} ${engine.name}`, text: label, disabled });
    b.addEventListener("click", () => operate(engine.name, verb, b));
    return b;
  };
  const logs = el("button", { type: "button", class: "button", "aria-label": `Logs of ${engine.name}`, text: "Logs", "aria-pressed": engines.logsOf === engine.name ? "true" : "false" });
  logs.addEventListener("click", () => openLogs(engine.name));
  const usage = engine.usage || {};
  const running = state === "running" || state === "starting";
  const facts = [
    enumLabel(config.framework, "ENGINE_FRAMEWORK_"),
    config.model_path ? `model ${config.model_path}` : null,
    engine.node ? `node ${engine.node}` : null,
    engine.port ? `port ${engine.port}` : null,
    engine.pid ? `pid ${engine.pid}` : null,
    engine.restart_count ? `${engine.restart_count} crash restart${engine.restart_count === 1 ? "" : "s"}` : null,
    engine.last_crash ? `last crash: ${engine.last_crash}` : null,
  ].filter(Boolean);
  const task = engines.tasks.get(engine.name);
  const gpus = (usage.gpu_memory || []).map((g) => `${g.gpu_uuid}: ${g.used_mib} MiB`);
  return el(
    "tr",
    { "data-engine": engine.name, "data-state": state },
    el(
      "th",
      { scope: "row" },
      el("div", { class: "model-name", text: engine.name }),
      el("div", { class: "muted small", text: facts.join(" · ") }),
      engine.deployment_id ? el("div", { class: "small" }, "serves as ", el("code", { text: engine.deployment_id })) : null,
    ),
    el(
      "td",
      {},
      el("span", { class: `badge ${STATE_BADGE[state] || "muted"}`, "data-state": state, text: state }),
      el("div", { class: "muted small", text: `since ${when(engine.state_time)}` }),
      engine.state_reason
        ? el("div", { class: `small engine-reason${state === "error" ? " failed" : " muted"}`, text: engine.state_reason })
        : null,
    ),
    el(
      "td",
      {},
      running
        ? el(
            "div",
            { class: "gauges small-gauges" },
            gauge({
              label: `${engine.name} CPU`,
              value: typeof usage.cpu_percent === "number" ? usage.cpu_percent : null,
              max: 100,
              text: `${Math.round(usage.cpu_percent ?? 0)}%`,
              sub: "of one core",
              warn: 80,
              crit: 95,
            }),
          )
        : null,
      el("div", { class: "muted small", text: running ? [`RSS ${mib(usage.rss_bytes)}`, ...gpus].join(" · ") : "not running" }),
    ),
    el(
      "td",
      { class: "engine-actions" },
      button("start", "Start", busy || state === "running"),
      button("stop", "Stop", state === "stopped" || state === "created" || state === "stopping"),
      button("restart", "Restart", busy),
      logs,
    ),
    el("td", { class: "small engine-task", text: task ? task.text : "" }),
  );
}

async function operate(name, verb, button) {
  const message = $("#engines-message");
  button.disabled = true;
  let task;
  try {
    task = (await api(`v1/admin/engines/${encodeURIComponent(name)}:${verb}`, { method: "POST", body: {} })).task;
  } catch (err) {
    show(message, [`Could not ${verb} ${name}: `, ...[].concat(adminHint(err))], "error");
    button.disabled = false;
    return;
  }
  show(message, `${verb} of ${name} asked (task ${task.id}).`, "info");
  engines.tasks.set(name, { id: task.id, text: `${verb}: ${enumLabel(task.state, "TASK_STATE_")}` });
  await loadEngines();
  // Follow the task to its end (bounded): the table shows each state as it comes.
  const deadline = Date.now() + 10 * 60 * 1000;
  while (Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, TASK_WAIT_MS));
    try {
      task = (await api(`v1/admin/engine-tasks/${encodeURIComponent(task.id)}`)).task;
    } catch (err) {
      show(message, [`Lost track of the ${verb} of ${name}: `, ...[].concat(adminHint(err))], "error");
      return;
    }
    const taskState = enumLabel(task.state, "TASK_STATE_");
    engines.tasks.set(name, { id: task.id, text: `${verb}: ${taskState}${task.error ? ` — ${task.error}` : ""}` });
    await loadEngines();
    if (taskState === "succeeded") {
      show(message, `${name}: ${verb} succeeded, the engine is ${enumLabel(task.engine_state, "ENGINE_STATE_")}.`, "ok");
      return;
    }
    if (taskState === "failed") {
      show(message, `${name}: ${verb} failed: ${task.error || "no reason given"}`, "error");
      return;
    }
  }
}

// ---------------------------------------------------------------- logs

function openLogs(name) {
  engines.logsOf = name;
  $("#engine-logs-heading").textContent = `Log of ${name}`;
  $("#engine-logs").hidden = false;
  loadLogs();
  for (const b of document.querySelectorAll('#engines-body button[aria-pressed]')) {
    b.setAttribute("aria-pressed", b.getAttribute("aria-label") === `Logs of ${name}` ? "true" : "false");
  }
}

async function loadLogs() {
  const name = engines.logsOf;
  const pane = $("#engine-log-lines");
  let lines;
  try {
    // A server stream: the edge answers with a JSON array of its messages.
    const answer = await api(`v1/admin/engines/${encodeURIComponent(name)}/logs`, { params: { lines: LOG_LINES } });
    lines = (Array.isArray(answer) ? answer : [answer]).map((m) => m.line).filter(Boolean);
  } catch (err) {
    pane.replaceChildren(el("li", { class: "empty-state", text: `The log is unavailable: ${err.describe?.() || err}` }));
    return;
  }
  if (name !== engines.logsOf) return;
  // Keep reading where the reader is, unless they were at the end.
  const atEnd = pane.scrollTop + pane.clientHeight >= pane.scrollHeight - 4;
  pane.replaceChildren(
    ...(lines.length
      ? lines.map((line) => {
          const level = enumLabel(line.level || "LOG_LEVEL_INFO", "LOG_LEVEL_");
          return el(
            "li",
            { class: `log-line log-${level}`, "data-level": level },
            el("time", { datetime: line.time || "", text: when(line.time) }),
            el("span", { class: "log-level", text: level }),
            el("span", { class: "log-message", text: line.message || "" }),
          );
        })
      : [el("li", { class: "empty-state", text: "No log lines yet." })]),
  );
  if (atEnd) pane.scrollTop = pane.scrollHeight;
  $("#engine-logs-meta").textContent = `Last ${lines.length} line${lines.length === 1 ? "" : "s"} · updated ${clock()}`;
}

export function initEngines() {
  $("#engines-refresh").addEventListener("click", () => loadEngines());
  $("#engine-logs-close").addEventListener("click", () => {
    engines.logsOf = "";
    $("#engine-logs").hidden = true;
  });
}
