// A mock OpenAI upstream cheap enough not to be the bottleneck: Node's HTTP
// server answering /v1/chat/completions in OpenAI's wire format.
//   non-stream: one chat.completion, no delay;
//   stream:     CHUNKS chat.completion.chunk events, CHUNK_MS apart, then usage
//               (with stream_options.include_usage) and [DONE];
//   any prompt size: the body is parsed, prompt tokens estimated at 4 chars each.
//   /v1/responses (the Responses API, for the native pass-through): the same
//   answer as one response object, or CHUNKS output_text.delta events between
//   the typed events around them, CHUNK_MS apart, usage in response.completed.
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

function responseObject(id, model, status, text, usage) {
  const output = text === null ? [] : [{
    type: "message", id: `msg_${id}`, status: "completed", role: "assistant",
    content: [{ type: "output_text", text, annotations: [], logprobs: [] }],
  }];
  return {
    id, object: "response", created_at: Math.floor(Date.now() / 1000), status, error: null,
    incomplete_details: null, model, output, usage,
  };
}

function responsesUsage(promptTokens, outputTokens) {
  return {
    input_tokens: promptTokens, input_tokens_details: { cached_tokens: 0 },
    output_tokens: outputTokens, output_tokens_details: { reasoning_tokens: 0 },
    total_tokens: promptTokens + outputTokens,
  };
}

function responses(res, body, promptTokens) {
  const id = `resp_bench${served}`;
  if (!body.stream) {
    const payload = JSON.stringify(responseObject(id, body.model, "completed", "pong", responsesUsage(promptTokens, 1)));
    res.writeHead(200, { "content-type": "application/json", "x-request-id": id });
    res.end(payload);
    return;
  }
  res.writeHead(200, { "content-type": "text/event-stream", "x-request-id": id });
  let sequence = 0;
  const event = (type, fields) => {
    res.write(`event: ${type}\ndata: ${JSON.stringify({ type, sequence_number: sequence++, ...fields })}\n\n`);
  };
  const where = { item_id: `msg_${id}`, output_index: 0, content_index: 0 };
  const part = (text) => ({ type: "output_text", text, annotations: [], logprobs: [] });
  event("response.created", { response: responseObject(id, body.model, "in_progress", null, null) });
  event("response.in_progress", { response: responseObject(id, body.model, "in_progress", null, null) });
  event("response.output_item.added", { output_index: 0, item: { type: "message", id: `msg_${id}`, status: "in_progress", role: "assistant", content: [] } });
  event("response.content_part.added", { ...where, part: part("") });
  let sent = 0;
  const next = () => {
    if (res.destroyed) return;
    if (sent < CHUNKS) {
      event("response.output_text.delta", { ...where, delta: "tok ", logprobs: [] });
      sent += 1;
      setTimeout(next, CHUNK_MS);
      return;
    }
    const text = "tok ".repeat(CHUNKS);
    const final = responseObject(id, body.model, "completed", text, responsesUsage(promptTokens, CHUNKS));
    event("response.output_text.done", { ...where, text, logprobs: [] });
    event("response.content_part.done", { ...where, part: part(text) });
    event("response.output_item.done", { output_index: 0, item: final.output[0] });
    event("response.completed", { response: final });
    res.end();
  };
  setTimeout(next, CHUNK_MS);
}

function inputText(input) {
  if (typeof input === "string") return input;
  return (input ?? []).map((item) => {
    if (typeof item.content === "string") return item.content;
    return (item.content ?? []).map((p) => p.text ?? "").join(" ");
  }).join(" ");
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
    if (req.url.endsWith("/responses")) {
      responses(res, body, Math.max(1, Math.ceil(inputText(body.input).length / 4)));
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
