// The API reference page (/docs): renders openapi.json, grouped by service.

const $ = (selector) => document.querySelector(selector);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

function schemaText(schema) {
  if (!schema) return "(any bytes: see the description)";
  return JSON.stringify(schema, null, 1);
}

function operation(path, verb, op, schemas) {
  const body = op.requestBody?.content || {};
  const answer = op.responses?.["200"]?.content || {};
  const ref = (s) => (s && s.$ref ? schemas[s.$ref.split("/").pop()] : s);
  const request = Object.entries(body).map(([type, c]) =>
    el("div", {}, el("h4", { text: `Request body (${type})` }), el("pre", { text: schemaText(ref(c.schema)) })),
  );
  const response = Object.entries(answer).map(([type, c]) =>
    el("div", {}, el("h4", { text: `Response (${type})` }), el("pre", { text: schemaText(ref(c.schema)) })),
  );
  const params = (op.parameters || []).map((p) => `${p.name} (${p.in})`).join(", ");
  return el(
    "details",
    { class: "route", "data-search": `${verb} ${path} ${op.operationId} ${op.summary}`.toLowerCase() },
    el(
      "summary",
      {},
      el("span", { class: `chip verb ${verb}`, text: verb.toUpperCase() }),
      " ",
      el("code", { text: path }),
      " ",
      el("span", { class: "muted small", text: `${op.summary} · ${op["x-access"]}` }),
    ),
    op.description ? el("p", { class: "description", text: op.description }) : null,
    params ? el("p", { text: `Parameters: ${params}` }) : null,
    request,
    response,
  );
}

async function main() {
  const message = $("#docs-message");
  let spec;
  try {
    const reply = await fetch("openapi.json");
    if (!reply.ok) throw new Error(`HTTP ${reply.status}`);
    spec = await reply.json();
  } catch (err) {
    message.hidden = false;
    message.textContent = `Could not load openapi.json: ${err.message}`;
    return;
  }
  const schemas = spec.components?.schemas || {};
  const byTag = new Map();
  for (const [path, verbs] of Object.entries(spec.paths)) {
    for (const [verb, op] of Object.entries(verbs)) {
      const tag = op.tags?.[0] || "other";
      if (!byTag.has(tag)) byTag.set(tag, []);
      byTag.get(tag).push(operation(path, verb, op, schemas));
    }
  }
  const sections = [...byTag.entries()].map(([tag, ops]) =>
    el("section", { class: "docs-service" }, el("h2", { text: tag }), ops),
  );
  $("#docs-routes").replaceChildren(...sections);
  $("#docs-filter").addEventListener("input", (event) => {
    const needle = event.target.value.trim().toLowerCase();
    for (const route of document.querySelectorAll("details.route")) {
      route.hidden = needle !== "" && !route.dataset.search.includes(needle);
    }
  });
}

main();
