// Drives the web console in headless Chromium (Debian's, through playwright-core)
// for tests/e2e/test_console.py. Every wait is bounded; nothing sleeps to
// synchronise. Prints one JSON object per line: {"step": ..., ...} as each step
// passes, then {"done": true}; on failure {"failed": step, "error": ...}, a
// screenshot named failure.png, and exit status 1.
//
// Environment: EDGE_URL, ADMIN_KEY, SHOTS (a directory), CHROMIUM, and SCENARIO:
// - "tour" (the default): STREAM_MODEL, PROMPT, REPLY (the exact reply STREAM_MODEL
//   streams), OFFLINE_MODEL;
// - "gpu-devices": GPU_STATUS, GPU_ALERTS and GPU_UNAVAILABLE, JSON answers the page
//   gets instead of the GPU service's (two GPUs; then none, NVML unavailable);
// - "operations": RERANK_MODEL (the only rerank model), GROUP, GROUP_A, GROUP_B (chat
//   models for the model group), ENGINE (an engine in state created), ALERT_RULE (a rule
//   that fires and notifies by webhook).

import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const { chromium } = require("playwright-core");

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const EDGE = env("EDGE_URL");
const ADMIN_KEY = env("ADMIN_KEY");
const SHOTS = env("SHOTS");
const SCENARIO = process.env.SCENARIO || "tour";
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const STEP_MS = 15000;
const USAGE_MS = 25000;
const ENGINE_MS = 60000;
const NOTIFY_MS = 30000;

function report(record) {
  process.stdout.write(`${JSON.stringify(record)}\n`);
}

fs.mkdirSync(SHOTS, { recursive: true });
const browser = await chromium.launch({
  executablePath: CHROMIUM,
  headless: true,
  timeout: 30000,
  // As root on a closed network: no sandbox, and none of Chromium's own calls home.
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
const page = await browser.newPage({ viewport: { width: 1360, height: 900 } });
page.setDefaultTimeout(STEP_MS);
const pageErrors = [];
page.on("pageerror", (err) => pageErrors.push(err.message));
let current = "start";

async function shot(name) {
  const file = path.join(SHOTS, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  return file;
}

async function step(name, body) {
  current = name;
  const result = (await body()) || {};
  if (pageErrors.length) throw new Error(`uncaught errors in the page: ${pageErrors.join(" | ")}`);
  report({ step: name, ...result });
}

// Runs a wait; if it fails, says what was being waited for (and what the page shows).
async function expect(what, wait, shows = null) {
  try {
    return await wait();
  } catch (err) {
    const seen = shows ? ` — the page shows: ${JSON.stringify(await shows().catch(() => "?"))}` : "";
    throw new Error(`${what}${seen}\n(${String(err?.message || err).split("\n")[0]})`);
  }
}

async function tab(name) {
  await page.getByRole("tab", { name }).click();
  const panel = page.getByRole("tabpanel", { name });
  await panel.waitFor({ state: "visible" });
  return panel;
}

async function tour() {
  const STREAM_MODEL = env("STREAM_MODEL");
  const PROMPT = env("PROMPT");
  const REPLY = env("REPLY");
  const OFFLINE_MODEL = env("OFFLINE_MODEL");

  await step("models", async () => {
    const toggle = page.getByRole("switch", { name: `${OFFLINE_MODEL} online` });
    await toggle.waitFor();
    const checked = await toggle.getAttribute("aria-checked");
    if (checked !== "true") throw new Error(`${OFFLINE_MODEL} should start online, aria-checked=${checked}`);
    const breaker = await page
      .locator(`li[data-deployment^="${STREAM_MODEL}."] [data-breaker]`)
      .first()
      .getAttribute("data-breaker");
    return { breaker, screenshot: await shot("01-models") };
  });

  // The active chat model (what calls naming no model get), picked as the Gradio admin did.
  await step("activate", async () => {
    const option = page.locator(`#active-chat option[value="${STREAM_MODEL}"]`);
    await expect(`${STREAM_MODEL} is not offered as the active chat model`, () =>
      option.waitFor({ state: "attached" }),
    );
    await page.locator("#active-chat").selectOption(STREAM_MODEL);
    await expect(
      "no confirmation of the active model",
      () => page.getByText(`${STREAM_MODEL} is now the active chat model.`).waitFor(),
      () => page.locator("#models-message").textContent(),
    );
    return { screenshot: await shot("01b-active-model") };
  });

  await step("stream_chat", async () => {
    const panel = await tab("Playground");
    await panel.getByLabel("Model").fill(STREAM_MODEL);
    await panel.getByLabel("Message").fill(PROMPT);
    await panel.getByRole("button", { name: "Send" }).click();
    const reply = page.locator("article.message.assistant").last();
    const shows = () => reply.locator(".content").textContent();
    // Tokens render as they arrive: part of the reply is visible while the stream is open.
    const partial = await expect(
      "the reply never showed part of its text while streaming",
      () =>
        page.waitForFunction(
          (expected) => {
            const node = [...document.querySelectorAll("article.message.assistant")].pop();
            if (!node || node.getAttribute("aria-busy") !== "true") return false;
            const text = node.querySelector(".content").textContent;
            return text.length > 0 && text !== expected && expected.startsWith(text) ? text : false;
          },
          REPLY,
          { polling: "raf", timeout: STEP_MS },
        ),
      shows,
    );
    const partialText = await partial.jsonValue();
    await expect(
      `the whole reply ${JSON.stringify(REPLY)} did not appear`,
      () =>
        page.waitForFunction(
          (expected) => {
            const node = [...document.querySelectorAll("article.message.assistant")].pop();
            return node && !node.hasAttribute("aria-busy") && node.querySelector(".content").textContent === expected;
          },
          REPLY,
          { timeout: STEP_MS },
        ),
      async () => [await shows(), await page.locator("#chat-error").textContent()],
    );
    const meta = await reply.locator(".bubble-meta").textContent();
    if (await page.locator("#chat-error").isVisible()) {
      throw new Error(`error shown: ${await page.locator("#chat-error").textContent()}`);
    }
    return { partial: partialText, reply: await reply.locator(".content").textContent(), meta, screenshot: await shot("02-playground-stream") };
  });

  await step("switch_offline", async () => {
    await tab("Models");
    const toggle = page.getByRole("switch", { name: `${OFFLINE_MODEL} online` });
    await toggle.click();
    await expect(
      `${OFFLINE_MODEL}'s switch did not turn off`,
      async () => {
        await page.waitForFunction(
          (name) => document.querySelector(`button[role="switch"][data-model="${name}"]`)?.getAttribute("aria-checked") === "false",
          OFFLINE_MODEL,
          { timeout: STEP_MS },
        );
        await page.getByText(`${OFFLINE_MODEL} is now offline.`).waitFor();
      },
      () => page.locator("#models-message").textContent(),
    );
    return { screenshot: await shot("03-models-offline") };
  });

  await step("offline_chat_fails", async () => {
    const panel = await tab("Playground");
    await panel.getByLabel("Model").fill(OFFLINE_MODEL);
    await panel.getByLabel("Message").fill("are you there?");
    await panel.getByRole("button", { name: "Send" }).click();
    const alert = panel.getByRole("alert").filter({ hasText: "The call failed" });
    await expect(
      "no error was shown for a chat with the offline model",
      () => alert.waitFor(),
      () => page.locator("article.message.assistant").last().textContent(),
    );
    const text = await alert.textContent();
    if (!/offline/.test(text) || !/model_not_found/.test(text)) throw new Error(`unexpected error text: ${text}`);
    return { error: text, screenshot: await shot("04-playground-offline-error") };
  });

  await step("usage_chart", async () => {
    await tab("Usage");
    const bars = page.locator(`svg[aria-label^="Requests by model"] rect.bar[data-model="${STREAM_MODEL}"]`);
    // The console polls every 5 s; usage lands in ClickHouse within seconds of the call.
    await expect(
      `no bar for ${STREAM_MODEL} in the requests chart within ${USAGE_MS / 1000}s`,
      () => bars.first().waitFor({ timeout: USAGE_MS }),
      async () => ({
        message: await page.locator("#usage-message").textContent(),
        points: await page.locator("#chart-requests svg").getAttribute("data-points"),
      }),
    );
    const values = await bars.evaluateAll((nodes) => nodes.map((n) => Number(n.dataset.value)));
    const tokens = await page
      .locator(`svg[aria-label^="Tokens by model"] rect.bar[data-model="${STREAM_MODEL}"]`)
      .evaluateAll((nodes) => nodes.map((n) => Number(n.dataset.value)));
    return {
      requests: values.reduce((a, b) => a + b, 0),
      tokens: tokens.reduce((a, b) => a + b, 0),
      screenshot: await shot("05-usage"),
    };
  });

  await step("performance", async () => {
    const panel = await tab("Performance");
    const bars = panel.locator('svg[aria-label^="Latency percentiles"] rect.hbar');
    await bars.first().waitFor();
    const p50 = Number(await bars.first().getAttribute("data-value"));
    return { latency_p50_ms: p50, screenshot: await shot("06-performance") };
  });

  await step("gpu", async () => {
    const panel = await tab("GPUs");
    const unavailable = panel.locator("#nvml-unavailable");
    const device = panel.locator("article.device");
    await unavailable.or(device.first()).waitFor();
    const result = { devices: await device.count() };
    if (await unavailable.isVisible()) result.unavailable = await unavailable.textContent();
    result.gauges = await panel.locator("#gpu-devices svg.gauge").count();
    result.screenshot = await shot("07-gpus");
    return result;
  });
}

async function gpuDevices() {
  const status = env("GPU_STATUS");
  const alerts = env("GPU_ALERTS");
  const json = (body) => (route) => route.fulfill({ status: 200, contentType: "application/json", body });
  await page.route("**/v1/admin/gpu/status", json(status));
  await page.route("**/v1/admin/gpu/alerts*", json(alerts));
  await step("gpu_devices", async () => {
    const panel = await tab("GPUs");
    const devices = panel.locator("article.device");
    await devices.first().waitFor();
    await panel.locator("#alerts-table tbody tr.firing").first().waitFor();
    return {
      devices: await devices.count(),
      gauges: await panel.locator("#gpu-devices svg.gauge").evaluateAll((nodes) => nodes.map((n) => n.getAttribute("aria-label"))),
      badges: await devices.locator(".device-head .badge").allTextContents(),
      active: await panel.locator("#gpu-active").textContent(),
      firing_rows: await panel.locator("#alerts-table tbody tr.firing").count(),
      screenshot: await shot("08-gpus-with-devices"),
    };
  });
  // A node whose NVML is unavailable: the reason, and no gauges at all.
  await page.unroute("**/v1/admin/gpu/status");
  await page.route("**/v1/admin/gpu/status", json(env("GPU_UNAVAILABLE")));
  await step("gpu_unavailable", async () => {
    const panel = page.getByRole("tabpanel", { name: "GPUs" });
    const notice = panel.locator("#nvml-unavailable");
    await notice.waitFor();
    await panel.locator("#gpu-devices article.device").first().waitFor({ state: "detached" });
    return {
      unavailable: await notice.textContent(),
      gauges: await panel.locator("#gpu-devices svg.gauge").count(),
      host: await panel.locator("#host svg.gauge").count(),
    };
  });
}


async function operations() {
  const RERANK_MODEL = env("RERANK_MODEL");
  const GROUP = env("GROUP");
  const GROUP_A = env("GROUP_A");
  const GROUP_B = env("GROUP_B");
  const ENGINE = env("ENGINE");
  const ALERT_RULE = env("ALERT_RULE");
  const button = (name) => page.getByRole("button", { name, exact: true });

  // The kind filter: only rerank models are listed.
  await step("model_kinds", async () => {
    await page.locator("#models-kind").selectOption("rerank");
    const rows = page.locator("#models-body tr[data-model]");
    await expect(
      "the kind filter did not narrow the table to rerank models",
      () =>
        page.waitForFunction(() => {
          const rows = [...document.querySelectorAll("#models-body tr[data-model]")];
          return rows.length > 0 && rows.every((r) => r.dataset.kind === "rerank");
        }),
      () => page.locator("#models-body").textContent(),
    );
    const shown = await rows.evaluateAll((nodes) => nodes.map((n) => n.dataset.model));
    const chips = await page.locator("#models-body .chip.kind").allTextContents();
    const screenshot = await shot("09-models-rerank");
    await page.locator("#models-kind").selectOption("");
    await page.locator(`#models-body tr[data-model="${GROUP_A}"]`).waitFor();
    return { shown, chips, screenshot };
  });

  // The default model of a use of the new kinds.
  await step("default_rerank", async () => {
    const option = page.locator(`#active-rerank option[value="${RERANK_MODEL}"]`);
    await expect(`${RERANK_MODEL} is not offered for rerank`, () => option.waitFor({ state: "attached" }));
    const offered = await page.locator("#active-rerank option").evaluateAll((nodes) => nodes.map((n) => n.value).filter(Boolean));
    const chatOffers = await page.locator("#active-chat option").evaluateAll((nodes) => nodes.map((n) => n.value).filter(Boolean));
    await page.locator("#active-rerank").selectOption(RERANK_MODEL);
    await expect(
      "no confirmation of the rerank default",
      () => page.getByText(`${RERANK_MODEL} is now the active rerank model.`).waitFor(),
      () => page.locator("#models-message").textContent(),
    );
    return { offered, chat_offers: chatOffers };
  });

  // Default parameters and catalogue fields, edited in the page.
  await step("default_parameters", async () => {
    await button(`Edit ${GROUP_A}`).click();
    const form = page.locator("#model-edit");
    await form.waitFor();
    await form.getByLabel("Default temperature").fill("0.3");
    await form.getByLabel("Default max tokens").fill("64");
    await form.getByLabel("Keyword").fill("console-keyword");
    await form.getByLabel("Release date").fill("2026-11-30");
    await form.getByRole("button", { name: "Save model" }).click();
    await expect(
      "no confirmation of the saved defaults",
      () => page.getByText(`Saved ${GROUP_A}: defaults temperature 0.3 · max_tokens 64.`).waitFor(),
      () => page.locator("#model-edit-message").textContent(),
    );
    const defaults = page.locator(`#models-body tr[data-model="${GROUP_A}"] .model-defaults`);
    await defaults.waitFor();
    return { row: await defaults.textContent(), screenshot: await shot("10-model-defaults") };
  });

  // The model group: two chat models, weighted 3 to 1.
  await step("model_group", async () => {
    const form = page.locator("#model-group");
    const weightA = form.getByLabel(`Weight of ${GROUP_A}`);
    await weightA.waitFor();
    await form.getByLabel("Group name").fill(GROUP);
    await weightA.fill("3");
    await form.getByLabel(`Weight of ${GROUP_B}`).fill("1");
    await form.getByRole("button", { name: "Save group" }).click();
    await expect(
      "no confirmation of the saved group",
      () => page.getByText(`Saved the model group ${GROUP}.`).waitFor(),
      () => page.locator("#group-message").textContent(),
    );
    return { summary: await page.locator("#group-summary").textContent(), screenshot: await shot("11-model-group") };
  });

  // An engine: started from the page until it runs, its log read, stopped.
  await step("engine_start", async () => {
    const panel = await tab("Engines");
    const row = panel.locator(`tr[data-engine="${ENGINE}"]`);
    await row.waitFor();
    const before = await row.getAttribute("data-state");
    await button(`Start ${ENGINE}`).click();
    await expect(
      `${ENGINE} never showed as running`,
      () => panel.locator(`tr[data-engine="${ENGINE}"][data-state="running"]`).waitFor({ timeout: ENGINE_MS }),
      async () => [await row.textContent(), await page.locator("#engines-message").textContent()],
    );
    await expect(
      "no word that the start succeeded",
      () => page.getByText(`${ENGINE}: start succeeded, the engine is running.`).waitFor({ timeout: ENGINE_MS }),
      () => page.locator("#engines-message").textContent(),
    );
    return {
      before,
      facts: await row.locator("th .muted").textContent(),
      task: await row.locator(".engine-task").textContent(),
      gauges: await row.locator("svg.gauge").count(),
    };
  });

  await step("engine_logs", async () => {
    await button(`Logs of ${ENGINE}`).click();
    const lines = page.locator("#engine-log-lines li.log-line");
    await expect("no log lines were shown", () => lines.first().waitFor(), () => page.locator("#engine-log-lines").textContent());
    const messages = await page.locator("#engine-log-lines .log-message").allTextContents();
    return { heading: await page.locator("#engine-logs-heading").textContent(), messages, screenshot: await shot("12-engine-running") };
  });

  await step("engine_stop", async () => {
    const panel = page.getByRole("tabpanel", { name: "Engines" });
    await button(`Stop ${ENGINE}`).click();
    await expect(
      `${ENGINE} never showed as stopped`,
      () => panel.locator(`tr[data-engine="${ENGINE}"][data-state="stopped"]`).waitFor({ timeout: ENGINE_MS }),
      () => panel.locator(`tr[data-engine="${ENGINE}"]`).textContent(),
    );
    await expect(
      "no word that the stop succeeded",
      () => page.getByText(`${ENGINE}: stop succeeded, the engine is stopped.`).waitFor({ timeout: ENGINE_MS }),
      () => page.locator("#engines-message").textContent(),
    );
    return { task: await panel.locator(`tr[data-engine="${ENGINE}"] .engine-task`).textContent(), screenshot: await shot("13-engine-stopped") };
  });

  // The host beside the GPUs, the rules, and the notification that went out.
  await step("host", async () => {
    const panel = await tab("GPUs");
    const gauges = panel.locator("#host svg.gauge");
    await expect("no host gauges", () => gauges.nth(2).waitFor(), () => panel.locator("#host").textContent());
    return {
      gauges: await gauges.evaluateAll((nodes) => nodes.map((n) => n.getAttribute("aria-label"))),
      values: await gauges.evaluateAll((nodes) => nodes.map((n) => Number(n.dataset.value))),
    };
  });

  await step("notifications", async () => {
    const panel = page.getByRole("tabpanel", { name: "GPUs" });
    await panel.locator(`#rules-table tr[data-rule="${ALERT_RULE}"]`).waitFor();
    const delivered = panel.locator('#notifications-table tbody tr[data-status="delivered"]');
    await expect(
      `no delivered notification within ${NOTIFY_MS / 1000}s`,
      () => delivered.first().waitFor({ timeout: NOTIFY_MS }),
      () => panel.locator("#notifications-table").textContent(),
    );
    return {
      rule: await panel.locator(`#rules-table tr[data-rule="${ALERT_RULE}"]`).textContent(),
      channels: await panel.locator("#notify-channels").textContent(),
      keys: await delivered.evaluateAll((nodes) => nodes.map((n) => n.dataset.key)),
      cells: await delivered.first().locator("td").allTextContents(),
      screenshot: await shot("14-host-and-notifications"),
    };
  });
}

try {
  await step("load", async () => {
    const response = await page.goto(`${EDGE}/console`, { waitUntil: "load" });
    if (!response || response.status() !== 200) throw new Error(`GET /console: ${response?.status()}`);
    await page.getByRole("heading", { name: "Models and deployments" }).waitFor();
    await page.getByRole("status").filter({ hasText: "Edge: ok" }).waitFor();
    return { url: page.url(), title: await page.title() };
  });

  await step("admin_key", async () => {
    await page.getByLabel("Admin key").fill(ADMIN_KEY);
    await page.getByRole("button", { name: "Save keys" }).click();
    await page.locator("#models-body button[role=switch]").first().waitFor();
    const stored = await page.evaluate(() => sessionStorage.getItem("switchboard.console.adminKey"));
    if (stored !== ADMIN_KEY) throw new Error("the admin key is not in sessionStorage");
    return {};
  });

  if (SCENARIO === "tour") await tour();
  else if (SCENARIO === "gpu-devices") await gpuDevices();
  else if (SCENARIO === "operations") await operations();
  else throw new Error(`unknown SCENARIO ${SCENARIO}`);
  report({ done: true });
  await browser.close();
} catch (err) {
  let screenshot = null;
  try {
    screenshot = await shot("failure");
  } catch {
    // the page may be gone
  }
  report({ failed: current, error: String(err?.stack || err), screenshot, pageErrors });
  await browser.close().catch(() => {});
  process.exit(1);
}
