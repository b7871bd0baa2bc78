// The Models tab: every model of the registry with its deployments, their
// health, its catalogue details and default parameters (editable), a filter by
// kind, and the online switch. Defaults per use and the model group are in
// registry.js.

import {
  $,
  adminHint,
  api,
  clock,
  el,
  enumLabel,
  ms,
  rememberModels,
  show,
  state,
} from "./common.js";
import { loadRegistrySettings } from "./registry.js";

export const KINDS = ["chat", "embedding", "asr", "tts", "rerank", "image"];
const PARAMETERS = ["temperature", "max_tokens", "top_p"];
// The fields the edit form changes (the update mask: a field left empty is cleared).
const EDITED = ["default_parameters", "keyword", "icon_url", "release_date", "streaming"];

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

export async function loadModels() {
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
  loadRegistrySettings();
}

function breakerBadge(h) {
  if (!h) return el("span", { class: "badge muted", text: "no health data" });
  const stateName = enumLabel(h.breaker, "BREAKER_STATE_");
  const kind = { closed: "ok", "half open": "warn", open: "bad" }[stateName] || "muted";
  const text = { closed: "healthy", "half open": "probing (half-open)", open: "breaker open" }[stateName] || stateName;
  return el("span", { class: `badge ${kind}`, "data-breaker": stateName, text });
}

export function kindOf(model) {
  return enumLabel(model.kind || "MODEL_KIND_CHAT", "MODEL_KIND_");
}

// "temperature 0.2 · max_tokens 256", or "" when none is set.
function defaultsText(model) {
  const d = model.default_parameters || {};
  return PARAMETERS.filter((p) => typeof d[p] === "number")
    .map((p) => `${p} ${d[p]}`)
    .join(" · ");
}

function modelCell(model) {
  const chips = [
    model.number ? el("span", { class: "chip", title: "stable numeric id", text: `#${model.number}` }) : null,
    el("span", { class: "chip kind", "data-kind": kindOf(model), text: kindOf(model) }),
    model.strategy && model.strategy !== "ROUTING_STRATEGY_UNSPECIFIED"
      ? el("span", { class: "chip", text: enumLabel(model.strategy, "ROUTING_STRATEGY_") })
      : null,
    model.streaming === false ? el("span", { class: "chip", title: "stream requests get the whole answer as one event", text: "pseudo-streaming" }) : null,
    model.engine ? el("span", { class: "chip", text: `engine ${enumLabel(model.engine.framework, "ENGINE_FRAMEWORK_")}` }) : null,
    ...(model.capabilities || []).map((c) => el("span", { class: "chip", text: c })),
    ...(model.tags || []).map((t) => el("span", { class: "chip tag", text: t })),
    ...(model.aliases || []).map((a) => el("span", { class: "chip alias", text: `alias ${a}` })),
  ];
  const catalogue = [
    model.keyword ? `keyword ${model.keyword}` : null,
    model.release_date ? `released ${model.release_date}` : null,
    model.icon_url ? `icon ${model.icon_url}` : null,
  ].filter(Boolean);
  const defaults = defaultsText(model);
  const edit = el("button", { type: "button", class: "link", "aria-label": `Edit ${model.name}`, text: "Edit" });
  edit.addEventListener("click", () => openEditor(model.name));
  return el(
    "th",
    { scope: "row", class: "model-cell" },
    el("div", { class: "model-name" }, model.name, " ", edit),
    model.display_name || model.description
      ? el("div", { class: "muted small", text: model.display_name || model.description })
      : null,
    el("div", { class: "chips" }, chips),
    catalogue.length ? el("div", { class: "muted small catalogue", text: catalogue.join(" · ") }) : null,
    defaults ? el("div", { class: "small model-defaults", text: `Defaults: ${defaults}` }) : null,
  );
}

export function renderModels(byDeployment) {
  const body = $("#models-body");
  const focused = document.activeElement?.dataset?.model;
  const kind = $("#models-kind").value;
  const shown = state.models.filter((m) => !kind || kindOf(m) === kind);
  $("#models-meta").textContent =
    `${state.models.length} model${state.models.length === 1 ? "" : "s"}` +
    (kind ? ` (${shown.length} ${kind})` : "") +
    ` · updated ${clock()}`;
  if (!shown.length) {
    const text = state.models.length
      ? `No ${kind} models.`
      : "No models yet. Add one with the CLI (switchboard models add) or the admin API.";
    body.replaceChildren(el("tr", {}, el("td", { colspan: 3, class: "empty-state", text })));
    return;
  }
  const rows = shown.map((model) => {
    const online = model.online !== false;
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
        d.streaming === false ? "pseudo-streaming" : null,
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
      { "data-model": model.name, "data-kind": kindOf(model), class: online ? "" : "offline" },
      modelCell(model),
      el("td", {}, toggle),
      el(
        "td",
        {},
        deployments.length
          ? el("ul", { class: "deployments", "aria-label": `${model.name} deployments` }, deployments)
          : el("span", {
              class: "muted",
              text: model.engine
                ? "No deployment: its engine is not running (Engines tab)."
                : "No deployments: calls to this model fail with 503.",
            }),
      ),
    );
  });
  body.replaceChildren(...rows);
  if (focused) body.querySelector(`button[data-model="${CSS.escape(focused)}"]`)?.focus();
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
    state.reloadModels?.();
  } catch (err) {
    show(message, [`Could not switch ${name} ${online ? "online" : "offline"}: `, ...[].concat(adminHint(err))], "error");
    button.disabled = false;
    button.removeAttribute("aria-busy");
  }
}

// ---------------------------------------------------------------- the edit form

function openEditor(name) {
  const model = state.models.find((m) => m.name === name);
  if (!model) return;
  const form = $("#model-edit");
  form.dataset.model = name;
  form.dataset.etag = model.etag || "";
  $("#model-edit-heading").textContent = `Edit ${name}`;
  const d = model.default_parameters || {};
  for (const p of PARAMETERS) form.elements[p].value = typeof d[p] === "number" ? String(d[p]) : "";
  for (const f of ["keyword", "icon_url", "release_date"]) form.elements[f].value = model[f] || "";
  form.elements.streaming.checked = model.streaming !== false;
  show($("#model-edit-message"), null);
  form.hidden = false;
  form.scrollIntoView({ block: "nearest" });
  form.elements.temperature.focus();
}

async function saveEditor(event) {
  event.preventDefault();
  const form = $("#model-edit");
  const name = form.dataset.model;
  const message = $("#model-edit-message");
  const parameters = {};
  for (const p of PARAMETERS) {
    const raw = form.elements[p].value.trim();
    if (raw !== "") parameters[p] = Number(raw);
  }
  const body = { default_parameters: parameters, etag: form.dataset.etag || undefined };
  for (const f of ["keyword", "icon_url", "release_date"]) body[f] = form.elements[f].value.trim();
  // Unset means "streams": only "no" is stored.
  if (!form.elements.streaming.checked) body.streaming = false;
  const save = form.querySelector('button[type="submit"]');
  save.disabled = true;
  try {
    const answer = await api(`v1/admin/models/${encodeURIComponent(name)}`, {
      method: "PATCH",
      body,
      params: { update_mask: EDITED.join(",") },
    });
    const updated = answer.model || {};
    state.modelsGeneration += 1;
    state.models = state.models.map((m) => (m.name === name ? { ...m, ...updated, deployments: m.deployments } : m));
    renderModels(state.health || new Map());
    form.dataset.etag = updated.etag || "";
    const shown = defaultsText(updated);
    show(message, `Saved ${name}: ${shown ? `defaults ${shown}` : "no default parameters"}.`, "ok");
    state.reloadModels?.();
  } catch (err) {
    show(message, [`Could not save ${name}: `, ...[].concat(adminHint(err))], "error");
  } finally {
    save.disabled = false;
  }
}

export function initModels() {
  const kinds = $("#models-kind");
  kinds.replaceChildren(
    el("option", { value: "", text: "All kinds" }),
    ...KINDS.map((k) => el("option", { value: k, text: k })),
  );
  kinds.addEventListener("change", () => renderModels(state.health || new Map()));
  const form = $("#model-edit");
  form.addEventListener("submit", saveEditor);
  $("#model-edit-cancel").addEventListener("click", () => {
    form.hidden = true;
  });
}
