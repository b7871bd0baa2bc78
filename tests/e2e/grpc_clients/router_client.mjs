// A RouterService client in Node, written from protos/ alone (@grpc/grpc-js
// with @grpc/proto-loader; protobufjs only to decode grpc-status-details-bin),
// the way an internal service in another language would call Switchboard.
//
// Usage: node router_client.mjs CASE
// Environment: ROUTER_ADDRESS (host:port), SWITCHBOARD_KEY (a client key),
// CHAT_MODEL, EMBED_MODEL, SLOW_MODEL, REQUEST_ID (a prefix for x-request-id).
// Each case asserts what it can see from the client side, then prints one JSON
// line for the pytest driver (tests/e2e/test_grpc_node_client.py), which checks
// what only the stack can see: upstream calls, disconnects, usage records.

import assert from "node:assert/strict";
import path from "node:path";
import { fileURLToPath } from "node:url";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import protobuf from "protobufjs";

const PROTOS = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../../protos");

// keepCase: the protos' own field names (content_text, max_tokens). The
// well-known google.protobuf.Value keeps protobufjs's camelCase names
// (stringValue), which is the trap typed content avoids.
const definition = protoLoader.loadSync("switchboard/router/v1/router.proto", {
  includeDirs: [PROTOS],
  keepCase: true,
  longs: String,
  enums: String,
  defaults: false,
  oneofs: true,
});
const { RouterService } = grpc.loadPackageDefinition(definition).switchboard.router.v1;

const details = new protobuf.Root();
details.resolvePath = (_origin, target) => path.join(PROTOS, target);
details.loadSync(["google/rpc/status.proto", "google/rpc/error_details.proto"], { keepCase: true });
const Status = details.lookupType("google.rpc.Status");
const ErrorInfo = details.lookupType("google.rpc.ErrorInfo");

const env = (name) => {
  const value = process.env[name];
  assert.ok(value, `${name} is not set`);
  return value;
};
const client = new RouterService(env("ROUTER_ADDRESS"), grpc.credentials.createInsecure());
const CHAT_MODEL = env("CHAT_MODEL");

let sequence = 0;
function metadata({ key = env("SWITCHBOARD_KEY") } = {}) {
  const md = new grpc.Metadata();
  if (key) md.set("authorization", `Bearer ${key}`);
  md.set("x-request-id", `${env("REQUEST_ID")}-${sequence++}`);
  return md;
}

const deadline = (ms) => ({ deadline: new Date(Date.now() + ms) });

// A unary call as a promise of {response, metadata (initial), trailers}.
function unary(method, request, md = metadata(), options = deadline(10_000)) {
  return new Promise((resolve, reject) => {
    let initial = null;
    let answer = null;
    const call = client[method](request, md, options, (err, response) => {
      if (err) reject(err);
      else answer = response;
    });
    call.on("metadata", (m) => (initial = m));
    // grpc-js emits "status" (with the trailers) right after the callback.
    call.on("status", (status) => {
      if (status.code === grpc.status.OK) resolve({ response: answer, initial, trailers: status.metadata });
    });
  });
}

// google.rpc.Status and its ErrorInfo, from the trailer every Switchboard error carries.
function errorInfo(err) {
  const [bin] = err.metadata.get("grpc-status-details-bin");
  assert.ok(bin, `no grpc-status-details-bin on ${err.code} ${err.details}`);
  const status = Status.decode(bin);
  assert.equal(status.code, err.code);
  for (const any of status.details) {
    if (any.type_url === "type.googleapis.com/google.rpc.ErrorInfo") {
      return ErrorInfo.decode(any.value);
    }
  }
  assert.fail("no ErrorInfo in google.rpc.Status");
}

async function refused(promise) {
  try {
    await promise;
  } catch (err) {
    return err;
  }
  assert.fail("the call succeeded");
}

const PROMPT = "hello from node";
const REPLY = `echo: ${PROMPT}`;

const cases = {
  async chat() {
    // Typed content: fields, not JSON trees.
    const typed = await unary("CreateChatCompletion", {
      params: { model: CHAT_MODEL, messages: [{ role: "user", content_text: PROMPT }] },
    });
    assert.equal(typed.response.object, "chat.completion");
    assert.equal(typed.response.choices[0].message.content, REPLY);
    assert.equal(typed.response.choices[0].finish_reason, "stop");
    assert.ok(typed.response.usage.total_tokens > 0);
    assert.deepEqual(typed.initial.get("x-switchboard-model"), [CHAT_MODEL]);
    // Content parts, typed.
    const parts = await unary("CreateChatCompletion", {
      params: {
        model: CHAT_MODEL,
        messages: [
          {
            role: "user",
            content_parts: { parts: [{ text: "hello from" }, { text: "node" }] },
          },
        ],
      },
    });
    assert.equal(parts.response.choices[0].message.content, REPLY);
    // The deprecated Value form, spelled as protobufjs names the well-known type.
    const legacy = await unary("CreateChatCompletion", {
      params: { model: CHAT_MODEL, messages: [{ role: "user", content: { stringValue: PROMPT } }] },
    });
    assert.equal(legacy.response.choices[0].message.content, REPLY);
    return { answers: 3 };
  },

  async stream() {
    const md = metadata();
    const call = client.StreamChatCompletion(
      {
        params: {
          model: CHAT_MODEL,
          stream_options: { include_usage: true },
          messages: [{ role: "user", content_text: PROMPT }],
        },
      },
      md,
      deadline(10_000),
    );
    let text = "";
    let usage = null;
    let chunks = 0;
    const trailers = new Promise((resolve) => call.on("status", (s) => resolve(s)));
    for await (const response of call) {
      chunks += 1;
      for (const choice of response.chunk.choices ?? []) text += choice.delta?.content ?? "";
      if (response.chunk.usage) usage = response.chunk.usage;
    }
    const status = await trailers;
    assert.equal(status.code, grpc.status.OK);
    assert.equal(text, REPLY);
    assert.ok(chunks > 2, `only ${chunks} chunks`);
    assert.ok(usage && usage.completion_tokens === REPLY.split(" ").length, JSON.stringify(usage));
    // The model that served is also in the trailers (as in the initial metadata).
    assert.deepEqual(status.metadata.get("x-switchboard-model"), [CHAT_MODEL]);
    return { chunks, completion_tokens: usage.completion_tokens };
  },

  async embeddings() {
    const { response } = await unary("CreateEmbedding", {
      params: {
        model: env("EMBED_MODEL"),
        input: { listValue: { values: [{ stringValue: "one" }, { stringValue: "two" }] } },
      },
    });
    assert.equal(response.object, "list");
    assert.equal(response.data.length, 2);
    const vector = response.data[1].embedding.listValue.values.map((v) => v.numberValue);
    assert.equal(vector.length, 8);
    assert.ok(vector.every((x) => typeof x === "number" && x >= -1 && x < 1));
    return { inputs: response.data.length, dimensions: vector.length };
  },

  async models() {
    const { response } = await unary("ListModels", {});
    assert.equal(response.object, "list");
    const ids = response.data.map((m) => m.id).sort();
    assert.ok(ids.includes(CHAT_MODEL) && ids.includes(env("EMBED_MODEL")), ids.join(","));
    const one = await unary("GetModel", { model: CHAT_MODEL });
    assert.equal(one.response.id, CHAT_MODEL);
    return { ids };
  },

  async errors() {
    const unknown = await refused(
      unary("CreateChatCompletion", {
        params: { model: "no-such-model", messages: [{ role: "user", content_text: "hi" }] },
      }),
    );
    assert.equal(unknown.code, grpc.status.NOT_FOUND);
    const notFound = errorInfo(unknown);
    assert.equal(notFound.reason, "MODEL_NOT_FOUND");
    assert.equal(notFound.domain, "switchboard");

    // The trap: under keepCase, {string_value: ...} is not a field of
    // google.protobuf.Value, so protobufjs sends a Value with no kind set.
    const kindlessId = `${env("REQUEST_ID")}-${sequence}`;
    const kindless = await refused(
      unary("CreateChatCompletion", {
        params: { model: CHAT_MODEL, messages: [{ role: "user", content: { string_value: "hi" } }] },
      }),
    );
    assert.equal(kindless.code, grpc.status.INVALID_ARGUMENT);
    const invalid = errorInfo(kindless);
    assert.equal(invalid.reason, "INVALID_REQUEST");
    assert.equal(invalid.metadata.param, "messages[0].content");

    const anonymous = await refused(
      unary("ListModels", {}, metadata({ key: "" })),
    );
    assert.equal(anonymous.code, grpc.status.UNAUTHENTICATED);
    assert.equal(errorInfo(anonymous).reason, "MISSING_API_KEY");
    return { refused_request_ids: [kindlessId], reasons: [notFound.reason, invalid.reason] };
  },

  async deadline() {
    const budgetMs = Number(env("DEADLINE_MS"));
    const started = performance.now();
    const err = await refused(
      unary(
        "CreateChatCompletion",
        { params: { model: env("SLOW_MODEL"), messages: [{ role: "user", content_text: "hi" }] } },
        metadata(),
        deadline(budgetMs),
      ),
    );
    const elapsedMs = performance.now() - started;
    assert.equal(err.code, grpc.status.DEADLINE_EXCEEDED, `${err.code} ${err.details}`);
    return { elapsed_ms: elapsedMs };
  },

  async cancel() {
    const requestId = `${env("REQUEST_ID")}-${sequence}`;
    const call = client.StreamChatCompletion(
      { params: { model: env("SLOW_MODEL"), messages: [{ role: "user", content_text: "hi" }] } },
      metadata(),
      deadline(30_000),
    );
    const ended = new Promise((resolve) => call.on("status", resolve));
    call.on("error", () => {}); // the CANCELLED status, read below
    let received = "";
    for await (const response of call) {
      for (const choice of response.chunk.choices ?? []) received += choice.delta?.content ?? "";
      if (received.split(" ").filter(Boolean).length >= 2) {
        call.cancel();
        break;
      }
    }
    const status = await ended;
    assert.equal(status.code, grpc.status.CANCELLED);
    return { request_id: requestId, received };
  },
};

const name = process.argv[2];
assert.ok(name in cases, `unknown case ${name}; one of ${Object.keys(cases).join(", ")}`);
try {
  const result = await cases[name]();
  console.log(JSON.stringify({ case: name, ok: true, ...result }));
} finally {
  client.close();
}
