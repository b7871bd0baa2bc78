// Load generator for the benchmark, in Node so it stays cheap next to the
// systems under test on a 2-core machine.
//   closed loop: --concurrency N workers, each sending back to back;
//   open loop:   --rate R requests/s at constant arrival, latency measured from
//                each request's scheduled time, so a stalled server is charged
//                for the queue it causes (no coordinated omission).
// Streams (--stream): TTFT to the first event with content, gaps between
// socket reads that carried events, and events that arrived coalesced.
// --trace PATH also writes each answered request's due time (epoch ms) and
// latency, one "due latency" line each, for bench/tail_timeline.py.
// Prints one JSON object with the results.
import http from "node:http";
import { readFileSync, writeFileSync } from "node:fs";

function args() {
  const out = { mode: "closed", concurrency: 1, rate: 0, duration: 5, requests: 0, stream: false, maxInFlight: 4096 };
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, "").replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    const value = argv[i + 1];
    out[key] = ["url", "body", "mode", "header", "trace"].includes(key) ? value : key === "stream" ? value === "true" : Number(value);
  }
  return out;
}

const opts = args();
const url = new URL(opts.url);
const body = readFileSync(opts.body);
const headers = { "content-type": "application/json", "content-length": body.length };
if (opts.header) {
  const [k, ...v] = opts.header.split(":");
  headers[k.trim()] = v.join(":").trim();
}
const agent = new http.Agent({
  keepAlive: true,
  maxSockets: opts.mode === "closed" ? opts.concurrency : opts.maxInFlight,
});
// A content event: a chat chunk's, Anthropic's text_delta, a Responses text delta.
const CONTENT = /"content": ?"[^"]|"text_delta","text":"[^"]|"response\.output_text\.delta"/g;

const latencies = [];
// (due, latency) pairs for --trace; due on performance's clock.
const trace = [];
const ttfts = [];
const gaps = [];
let coalesced = 0;
let events = 0;
let errors = 0;
let inFlight = 0;
const errorKinds = {};

function once(startedAt) {
  return new Promise((resolve) => {
    inFlight += 1;
    const req = http.request({ hostname: url.hostname, port: url.port, path: url.pathname, method: "POST", headers, agent }, (res) => {
      let firstContent = 0;
      let lastRead = 0;
      let tail = "";
      res.on("data", (buf) => {
        if (!opts.stream) return;
        const now = performance.now();
        const text = tail + buf.toString("utf8");
        const parts = text.split("\n\n");
        tail = parts.pop();
        let withContent = 0;
        for (const p of parts) {
          if (p.startsWith("data: ")) events += 1;
          if (p.match(CONTENT)) withContent += 1;
        }
        if (withContent > 0) {
          if (!firstContent) {
            firstContent = now;
            ttfts.push(now - startedAt);
          } else {
            gaps.push(now - lastRead);
          }
          coalesced += withContent - 1;
          lastRead = now;
        }
      });
      res.on("end", () => {
        inFlight -= 1;
        if (res.statusCode !== 200) {
          errors += 1;
          errorKinds[res.statusCode] = (errorKinds[res.statusCode] ?? 0) + 1;
        } else {
          const latency = performance.now() - startedAt;
          latencies.push(latency);
          if (opts.trace) trace.push(startedAt, latency);
        }
        resolve();
      });
      res.on("error", () => {
        inFlight -= 1;
        errors += 1;
        resolve();
      });
    });
    req.on("error", (e) => {
      inFlight -= 1;
      errors += 1;
      errorKinds[e.code ?? "error"] = (errorKinds[e.code ?? "error"] ?? 0) + 1;
      resolve();
    });
    req.end(body);
  });
}

function pct(values, q) {
  if (!values.length) return null;
  const s = Float64Array.from(values).sort();
  return s[Math.min(s.length - 1, Math.floor(q * s.length))];
}

function summary(xs) {
  return xs.length ? { p50: pct(xs, 0.5), p90: pct(xs, 0.9), p99: pct(xs, 0.99), max: pct(xs, 1) } : null;
}

async function closed() {
  const deadline = performance.now() + opts.duration * 1000;
  let sent = 0;
  const worker = async () => {
    while (opts.requests ? sent < opts.requests : performance.now() < deadline) {
      sent += 1;
      await once(performance.now());
    }
  };
  await Promise.all(Array.from({ length: opts.concurrency }, worker));
}

async function open() {
  // Send whatever is due, then yield to the event loop so responses are read;
  // latency counts from each request's due time, so batching costs the server.
  const interval = 1000 / opts.rate;
  const total = Math.round(opts.rate * opts.duration);
  const start = performance.now() + 5;
  const pending = [];
  let i = 0;
  while (i < total) {
    const now = performance.now();
    while (i < total && start + i * interval <= now) {
      const due = start + i * interval;
      i += 1;
      if (inFlight >= opts.maxInFlight) {
        errors += 1;
        errorKinds.overload = (errorKinds.overload ?? 0) + 1;
        continue;
      }
      pending.push(once(due));
    }
    const wait = start + i * interval - performance.now();
    await new Promise((r) => (wait > 2 ? setTimeout(r, wait - 1) : setImmediate(r)));
  }
  await Promise.all(pending);
}

const t0 = performance.now();
await (opts.mode === "open" ? open() : closed());
const elapsed = (performance.now() - t0) / 1000;
agent.destroy();
if (opts.trace) {
  const lines = [];
  for (let i = 0; i < trace.length; i += 2) {
    lines.push(`${(performance.timeOrigin + trace[i]).toFixed(3)} ${trace[i + 1].toFixed(3)}`);
  }
  writeFileSync(opts.trace, lines.join("\n") + "\n");
}
console.log(
  JSON.stringify({
    mode: opts.mode,
    concurrency: opts.concurrency,
    target_rate: opts.rate,
    requests: latencies.length + errors,
    ok: latencies.length,
    errors,
    error_kinds: errorKinds,
    duration_s: elapsed,
    rps: latencies.length / elapsed,
    latency_ms: summary(latencies),
    ttft_ms: opts.stream ? summary(ttfts) : null,
    interchunk_ms: opts.stream ? summary(gaps) : null,
    events,
    coalesced_events: coalesced,
  }),
);
