// Registry settings on the Models tab: the default ("active") model of each use,
// which serves calls that name no model, and the model group, whose calls are
// spread over its models by weight.

import { $, adminHint, api, el, enumLabel, show, state } from "./common.js";

// Which models a use may name: the kind-named uses take their own kind, the
// others (chat, vision and Bisheng's uses) a chat model.
const USE_KIND = {
  MODEL_USE_EMBEDDING: "MODEL_KIND_EMBEDDING",
  MODEL_USE_ASR: "MODEL_KIND_ASR",
  MODEL_USE_TTS: "MODEL_KIND_TTS",
  MODEL_USE_RERANK: "MODEL_KIND_RERANK",
  MODEL_USE_IMAGE: "MODEL_KIND_IMAGE",
};
const GROUP_STRATEGIES = ["ROUTING_STRATEGY_WEIGHTED_RANDOM", "ROUTING_STRATEGY_ROUND_ROBIN"];

function useLabel(use) {
  return enumLabel(use, "MODEL_USE_");
}

function kindFor(use) {
  return USE_KIND[use] || "MODEL_KIND_CHAT";
}

export async function loadRegistrySettings() {
  await Promise.allSettled([loadDefaults(), loadGroup()]);
}

// ---------------------------------------------------------------- defaults per use

async function loadDefaults() {
  let defaults;
  try {
    defaults = (await api("v1/admin/defaults")).defaults || [];
  } catch {
    return; // the models' own load already says what is wrong with the key
  }
  const active = new Map(defaults.map((d) => [d.use, d.model]));
  for (const select of document.querySelectorAll("#active-models select")) {
    // Not while someone is choosing.
    if (document.activeElement === select || select.disabled) continue;
    const kind = kindFor(select.dataset.use);
    const offered = state.models.filter((m) => (m.kind || "MODEL_KIND_CHAT") === kind && m.online !== false);
    const current = active.get(select.dataset.use) || "";
    const options = current ? [] : [el("option", { value: "", text: "(none)", disabled: true })];
    for (const model of offered) options.push(el("option", { value: model.name, text: model.name }));
    if (current && !offered.some((m) => m.name === current)) {
      options.push(el("option", { value: current, text: `${current} (offline)` }));
    }
    select.replaceChildren(...options);
    select.value = current;
    select.title = offered.length ? "" : `No online ${enumLabel(kind, "MODEL_KIND_")} model to choose.`;
  }
}

async function activate(select) {
  const message = $("#models-message");
  const use = select.dataset.use;
  const model = select.value;
  select.disabled = true;
  try {
    await api(`v1/admin/defaults/${use}`, { method: "PUT", body: { model } });
    show(message, `${model} is now the active ${useLabel(use)} model.`, "ok");
  } catch (err) {
    show(message, [`Could not activate ${model}: `, ...[].concat(adminHint(err))], "error");
  } finally {
    select.disabled = false;
    loadDefaults();
  }
}

// ---------------------------------------------------------------- the model group

const group = { etag: "", dirty: false, loaded: null };

async function loadGroup() {
  let answer;
  try {
    answer = await api("v1/admin/load-balancing");
  } catch (err) {
    show($("#group-message"), [`The model group is unavailable: `, ...[].concat(adminHint(err))], "error");
    return;
  }
  group.loaded = answer.load_balancing || null;
  // Someone typing keeps what they typed; the next load after a save shows the registry's.
  if (group.dirty || $("#model-group").contains(document.activeElement)) return;
  fillGroup(group.loaded);
}

function fillGroup(lb) {
  const form = $("#model-group");
  group.etag = lb?.etag || "";
  form.elements.group.value = lb?.group || "";
  form.elements.strategy.value = GROUP_STRATEGIES.includes(lb?.strategy) ? lb.strategy : GROUP_STRATEGIES[0];
  form.elements.failure_threshold.value = lb?.failure_threshold ? String(lb.failure_threshold) : "";
  form.elements.recovery_threshold.value = lb?.recovery_threshold ? String(lb.recovery_threshold) : "";
  form.elements.health_check_interval_s.value = lb?.health_check_interval_s ? String(lb.health_check_interval_s) : "";
  const weights = lb?.weights || {};
  const chat = state.models.filter((m) => (m.kind || "MODEL_KIND_CHAT") === "MODEL_KIND_CHAT");
  // Members first named even when the model list has not got them yet.
  const names = [...new Set([...Object.keys(weights), ...chat.map((m) => m.name)])].sort();
  $("#group-weights tbody").replaceChildren(
    ...(names.length
      ? names.map((name) =>
          el(
            "tr",
            { "data-model": name },
            el("th", { scope: "row", text: name }),
            el(
              "td",
              { class: "num" },
              el("input", {
                type: "number",
                min: "0",
                step: "any",
                name: `weight:${name}`,
                "aria-label": `Weight of ${name}`,
                placeholder: "—",
                value: typeof weights[name] === "number" ? String(weights[name]) : "",
              }),
            ),
          ),
        )
      : [el("tr", {}, el("td", { colspan: 2, class: "empty-state", text: "No chat models to group." }))]),
  );
  const members = Object.entries(weights);
  $("#group-summary").textContent = lb
    ? `Calls for “${lb.group}” go to ${members.map(([n, w]) => `${n} (${w})`).join(", ") || "no model"} · ${enumLabel(lb.strategy, "ROUTING_STRATEGY_")}`
    : "No group is set.";
}

async function saveGroup(event) {
  event.preventDefault();
  const form = $("#model-group");
  const message = $("#group-message");
  const weights = {};
  for (const input of form.querySelectorAll('input[name^="weight:"]')) {
    if (input.value.trim() !== "") weights[input.name.slice("weight:".length)] = Number(input.value);
  }
  const body = { group: form.elements.group.value.trim(), strategy: form.elements.strategy.value, weights };
  for (const f of ["failure_threshold", "recovery_threshold", "health_check_interval_s"]) {
    const raw = form.elements[f].value.trim();
    if (raw !== "") body[f] = Number(raw);
  }
  if (group.etag) body.etag = group.etag;
  const save = form.querySelector('button[type="submit"]');
  save.disabled = true;
  try {
    const answer = await api("v1/admin/load-balancing", { method: "PUT", body });
    group.dirty = false;
    group.loaded = answer.load_balancing;
    fillGroup(answer.load_balancing);
    show(message, `Saved the model group ${answer.load_balancing?.group}.`, "ok");
  } catch (err) {
    show(message, [`Could not save the model group: `, ...[].concat(adminHint(err))], "error");
  } finally {
    save.disabled = false;
  }
}

export function initRegistry() {
  for (const select of document.querySelectorAll("#active-models select")) {
    select.addEventListener("change", () => activate(select));
  }
  $("#active-models").addEventListener("submit", (event) => event.preventDefault());
  const form = $("#model-group");
  form.elements.strategy.replaceChildren(
    ...GROUP_STRATEGIES.map((s) => el("option", { value: s, text: enumLabel(s, "ROUTING_STRATEGY_") })),
  );
  form.addEventListener("input", () => {
    group.dirty = true;
  });
  form.addEventListener("submit", saveGroup);
  $("#group-reset").addEventListener("click", () => {
    group.dirty = false;
    show($("#group-message"), null);
    fillGroup(group.loaded);
  });
}
