// The GPUs tab: this node's GPUs and host (CPU, memory, disk: the gpu
// service's psutil readings), the alert rules it evaluates, alerts on every
// node, and the delivery of this node's alert notifications.

import { compact, gauge } from "./charts.js";
import { $, adminHint, api, clock, el, enumLabel, show, severityClass, when } from "./common.js";

let ticks = 0;

export async function loadGpu() {
  const message = $("#gpu-message");
  const wantAlerts = ticks++ % 5 === 0;
  const [status, alerts, notifications] = await Promise.allSettled([
    api("v1/admin/gpu/status"),
    wantAlerts ? api("v1/admin/gpu/alerts", { params: { limit: 50 } }) : Promise.resolve(null),
    api("v1/admin/gpu/notifications", { params: { limit: 50 } }),
  ]);
  if (status.status === "rejected") {
    show(message, adminHint(status.reason), "error");
    return;
  }
  show(message, null);
  renderNode(status.value);
  renderHost(status.value.status || {});
  renderRules(status.value.rules || []);
  if (alerts.status === "fulfilled" && alerts.value) renderAlerts(alerts.value.alerts || []);
  else if (alerts.status === "rejected") {
    $("#alerts-table tbody").replaceChildren(
      el("tr", {}, el("td", { colspan: 7, class: "empty-state", text: `Alert history unavailable: ${alerts.reason.describe?.() || alerts.reason}` })),
    );
  }
  if (notifications.status === "fulfilled") renderNotifications(notifications.value);
  else {
    $("#notify-channels").textContent = `Notifications unavailable: ${notifications.reason.describe?.() || notifications.reason}`;
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

// ---------------------------------------------------------------- host

function gib(mib) {
  return `${(mib / 1024).toFixed(1)} GiB`;
}

function renderHost(node) {
  const host = node.host;
  const slot = $("#host-gauges");
  if (!host) {
    slot.replaceChildren(el("p", { class: "muted", text: "This node's gpu service reports no host readings." }));
    return;
  }
  const num = (v) => (typeof v === "number" && Number.isFinite(v) ? v : null);
  const cores = host.cpu_count ? `CPU · ${host.cpu_count} cores` : "CPU";
  slot.replaceChildren(
    el(
      "div",
      { class: "gauges" },
      gauge({
        label: "Host CPU",
        value: num(host.cpu_percent),
        max: 100,
        text: `${Math.round(host.cpu_percent ?? 0)}%`,
        sub: cores,
        warn: 80,
        crit: 95,
      }),
      gauge({
        label: "Host memory",
        value: num(host.memory_percent),
        max: 100,
        text: `${Math.round(host.memory_percent ?? 0)}%`,
        sub: `memory · ${gib(Number(host.memory_used_mib || 0))} / ${gib(Number(host.memory_total_mib || 0))}`,
        warn: 85,
        crit: 95,
      }),
      gauge({
        label: "Host disk",
        value: num(host.disk_percent),
        max: 100,
        text: `${Math.round(host.disk_percent ?? 0)}%`,
        sub: `disk · ${gib(Number(host.disk_used_mib || 0))} / ${gib(Number(host.disk_total_mib || 0))}`,
        warn: 85,
        crit: 95,
      }),
    ),
    el("p", { class: "muted small", text: `Load average (1 min): ${compact(host.load_average_1m ?? 0)} · sampled with the GPUs at ${when(node.sample_time)}` }),
  );
}

// ---------------------------------------------------------------- rules and notifications

const SYMBOL = { COMPARATOR_GREATER_THAN: ">", COMPARATOR_LESS_THAN: "<" };

function seconds(duration) {
  // google.protobuf.Duration as JSON: "60s", "1.5s".
  return typeof duration === "string" && duration ? duration : "0s";
}

function renderRules(rules) {
  $("#rules-table tbody").replaceChildren(
    ...(rules.length
      ? rules.map((r) =>
          el(
            "tr",
            { "data-rule": r.name, class: r.enabled === false ? "offline" : "" },
            el("th", { scope: "row", text: r.display_name ? `${r.display_name} (${r.name})` : r.name }),
            el("td", {}, el("code", { text: `${r.metric} ${SYMBOL[r.comparator] || "?"} ${compact(r.threshold)}` })),
            el("td", { text: `for ${seconds(r.duration)}` }),
            el("td", {}, el("span", { class: `badge ${severityClass(r.severity)}`, text: enumLabel(r.severity, "SEVERITY_") })),
            el("td", { text: (r.notification_channels || []).join(", ") || "—" }),
            el("td", { text: r.enabled === false ? "disabled" : "enabled" }),
          ),
        )
      : [el("tr", {}, el("td", { colspan: 6, class: "empty-state", text: "No alert rules (POST /v1/admin/alert-rules or /api/config/alerts)." }))]),
  );
}

const DELIVERY = {
  DELIVERY_STATUS_PENDING: "warn",
  DELIVERY_STATUS_DELIVERED: "ok",
  DELIVERY_STATUS_FAILED: "bad",
};

function renderNotifications(answer) {
  const channels = answer.channels || [];
  $("#notify-channels").textContent = channels.length
    ? `Channels configured on ${answer.hostname || "this node"}: ${channels.join(", ")}.`
    : `No notification channel is configured on ${answer.hostname || "this node"} (SWITCHBOARD_ALERT_WEBHOOK_URL, SWITCHBOARD_ALERT_SMTP_HOST): rules that name one send nothing.`;
  const rows = answer.notifications || [];
  $("#notifications-table tbody").replaceChildren(
    ...(rows.length
      ? rows.map((n) => {
          const status = enumLabel(n.status, "DELIVERY_STATUS_");
          const at = n.done_time || n.next_attempt_time;
          return el(
            "tr",
            { "data-key": n.key, "data-status": status },
            el("td", { text: n.rule_name || n.alert_id }),
            el("td", { text: enumLabel(n.alert_state, "ALERT_STATE_") }),
            el("td", { text: n.channel }),
            el("td", {}, el("span", { class: `badge ${DELIVERY[n.status] || "muted"}`, text: status })),
            el("td", { class: "num", text: String(n.attempts ?? 0) }),
            el("td", { text: at ? `${n.done_time ? "" : "next try "}${when(at)}` : "—" }),
            el("td", { text: n.last_error || "" }),
          );
        })
      : [el("tr", {}, el("td", { colspan: 7, class: "empty-state", text: "No notifications sent from this node." }))]),
  );
}
