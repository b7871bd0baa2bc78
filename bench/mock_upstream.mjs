// A mock OpenAI upstream cheap enough not to be the bottleneck: Node's HTTP
// server answering /v1/chat/completions in OpenAI's wire format.
//   non-stream: one chat.completion, no delay;
//   stream:     CHUNKS chat.completion.chunk events, CHUNK_MS apart, then usage
//               (with stream_options.include_usage) and [DONE];
//   any prompt size: the body is parsed, prompt tokens estimated at 4 chars each.
// Usage: node mock_upstream.mjs [port]   → prints "LISTENING <port>"
import http from "node:http";

const CHUNKS = Number(process.env.MOCK_CHUNKS ?? 64);
const CHUNK_MS = Number(process.env.MOCK_CHUNK_MS ?? 2);
let served = 0;

function completion(model, promptTokens) {
  return JSON.stringify({
    id: `chatcmpl-bench${served}`,
    object: "chat.completion",
    created: Math.floor(Date.now() / 1000),
    model,
    choices: [
      {
        index: 0,
        message: { role: "assistant", content: "pong", refusal: null },
        logprobs: null,
        finish_reason: "stop",
      },
    ],
    usage: { prompt_tokens: promptTokens, completion_tokens: 1, total_tokens: promptTokens + 1 },
    system_fingerprint: "fp_bench",
  });
}

function chunk(id, created, model, delta, finish) {
  return `data: ${JSON.stringify({
    id,
    object: "chat.completion.chunk",
    created,
    model,
    system_fingerprint: "fp_bench",
    choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }],
  })}\n\n`;
}

function stream(res, model, promptTokens, includeUsage) {
  const id = `chatcmpl-bench${served}`;
  const created = Math.floor(Date.now() / 1000);
  res.writeHead(200, { "content-type": "text/event-stream", "x-request-id": id });
  res.write(chunk(id, created, model, { role: "assistant", content: "" }, null));
  let sent = 0;
  const next = () => {
    if (res.destroyed) return;
    if (sent < CHUNKS) {
      res.write(chunk(id, created, model, { content: "tok " }, null));
      sent += 1;
      setTimeout(next, CHUNK_MS);
      return;
    }
    res.write(chunk(id, created, model, {}, "stop"));
    if (includeUsage) {
      const usage = { prompt_tokens: promptTokens, completion_tokens: CHUNKS, total_tokens: promptTokens + CHUNKS };
      res.write(`data: ${JSON.stringify({ id, object: "chat.completion.chunk", created, model, choices: [], usage })}\n\n`);
    }
    res.end("data: [DONE]\n\n");
  };
  setTimeout(next, CHUNK_MS);
}

const server = http.createServer((req, res) => {
  if (req.method === "GET") {
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({ object: "list", data: [{ id: "bench", object: "model", created: 0, owned_by: "bench" }] }));
    return;
  }
  const parts = [];
  req.on("data", (c) => parts.push(c));
  req.on("end", () => {
    served += 1;
    let body;
    try {
      body = JSON.parse(Buffer.concat(parts).toString("utf8"));
    } catch {
      res.writeHead(400, { "content-type": "application/json" });
      res.end('{"error":{"message":"bad json","type":"invalid_request_error","param":null,"code":null}}');
      return;
    }
    const text = (body.messages ?? []).map((m) => (typeof m.content === "string" ? m.content : "")).join(" ");
    const promptTokens = Math.max(1, Math.ceil(text.length / 4));
    if (body.stream) {
      stream(res, body.model, promptTokens, body.stream_options?.include_usage === true);
      return;
    }
    const payload = completion(body.model, promptTokens);
    res.writeHead(200, {
      "content-type": "application/json",
      "content-length": Buffer.byteLength(payload),
      "x-request-id": `req_${served}`,
    });
    res.end(payload);
  });
});
server.keepAliveTimeout = 120_000;
server.headersTimeout = 121_000;
server.listen(Number(process.argv[2] ?? 0), "127.0.0.1", () => {
  console.log(`LISTENING ${server.address().port}`);
});
for (const sig of ["SIGTERM", "SIGINT"]) process.on(sig, () => server.close(() => process.exit(0)));
