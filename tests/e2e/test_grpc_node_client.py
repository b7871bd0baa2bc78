"""End to end from another language: a Node client (tests/e2e/grpc_clients,
@grpc/grpc-js written from protos/ alone) against a running stack whose chat
and embedding models are served by loopback OpenAI upstreams.

Each test runs one case of the Node client, which asserts what a caller sees;
this side checks what only the stack sees: the upstream calls, disconnects,
and the router's usage records (its DEBUG log of every record it accounts).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from switchboard_stack.harness import Stack, running_stack
from tests.support.openai_upstream import Behaviour, OpenAIUpstream, run_in_thread

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CLIENT = REPO / "tests" / "e2e" / "grpc_clients" / "router_client.mjs"
PROVIDER_KEY = "sk-node-e2e-provider-0123456789"
CLIENT_KEY = "sk-node-e2e-client-0123456789abcdef"
NODE_TIMEOUT_S = 60
# Far beyond any deadline a test sets: an upstream call that stops early was
# stopped by the caller's deadline or cancellation, not by the provider.
PROVIDER_TIMEOUT_S = 30


@pytest.fixture(scope="module")
def upstream() -> Iterator[OpenAIUpstream]:
    with run_in_thread(OpenAIUpstream(api_key=PROVIDER_KEY)) as server:
        yield server


@pytest.fixture(scope="module")
def slow() -> Iterator[OpenAIUpstream]:
    """A second upstream, scripted to hang or trickle."""
    with run_in_thread(OpenAIUpstream(api_key=PROVIDER_KEY)) as server:
        yield server


@pytest.fixture(scope="module")
def stack(
    upstream: OpenAIUpstream, slow: OpenAIUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    def provider(name: str, server: OpenAIUpstream) -> dict[str, Any]:
        return {
            "name": name,
            "kind": "openai",
            "base_url": server.base_url,
            "api_key_env": "NODE_E2E_PROVIDER_KEY",
            "timeout_s": PROVIDER_TIMEOUT_S,
        }

    config = {
        "providers": [provider("loopback", upstream), provider("trickle", slow)],
        "models": [
            {"name": "node-chat", "deployments": [{"provider": "loopback", "model": "gpt-loop"}]},
            {"name": "node-slow", "deployments": [{"provider": "trickle", "model": "gpt-slow"}]},
            {
                "name": "node-embed",
                "kind": "embedding",
                "deployments": [{"provider": "loopback", "model": "emb-loop"}],
            },
        ],
        "keys": [{"name": "node", "key_env": "NODE_E2E_CLIENT_KEY"}],
    }
    env = {
        "NODE_E2E_PROVIDER_KEY": PROVIDER_KEY,
        "NODE_E2E_CLIENT_KEY": CLIENT_KEY,
        # The router logs each usage record it accounts at DEBUG.
        "SWITCHBOARD_LOG_LEVEL": "DEBUG",
    }
    with running_stack(config, tmp_path_factory.mktemp("node-stack"), env) as running:
        yield running


@pytest.fixture(autouse=True)
def _fresh(upstream: OpenAIUpstream, slow: OpenAIUpstream) -> None:
    upstream.reset()
    slow.reset()


def _node(stack: Stack, case: str, request_id: str, **extra: str) -> dict[str, Any]:
    node = shutil.which("node")
    assert node is not None, "node is required (the Makefile's npm install needs it too)"
    env = {
        **os.environ,
        "ROUTER_ADDRESS": stack.router_address,
        "SWITCHBOARD_KEY": CLIENT_KEY,
        "CHAT_MODEL": "node-chat",
        "EMBED_MODEL": "node-embed",
        "SLOW_MODEL": "node-slow",
        "REQUEST_ID": request_id,
        **extra,
    }
    done = subprocess.run(
        [node, str(CLIENT), case],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, f"node {case} failed:\n{done.stdout}\n{done.stderr}"
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["ok"] is True
    return result


def _usage_records(stack: Stack, request_id: str) -> list[dict[str, Any]]:
    records = []
    for line in stack.log("router").splitlines():
        if request_id not in line:
            continue
        entry = json.loads(line)
        if entry.get("logger") == "switchboard.usage" and entry.get("request_id") == request_id:
            records.append(entry)
    return records


def _wait_for_usage(stack: Stack, request_id: str, within_s: float = 5.0) -> list[dict[str, Any]]:
    give_up = time.monotonic() + within_s
    while not (records := _usage_records(stack, request_id)) and time.monotonic() < give_up:
        time.sleep(0.05)
    return records


def test_unary_chat_typed_and_legacy_content(stack: Stack, upstream: OpenAIUpstream) -> None:
    rid = uuid.uuid4().hex
    assert _node(stack, "chat", rid)["answers"] == 3
    # What reached the upstream: typed content became OpenAI's JSON.
    sent = [r.json["messages"][0]["content"] for r in upstream.requests if r.json]
    assert sent == [
        "hello from node",
        [{"type": "text", "text": "hello from"}, {"type": "text", "text": "node"}],
        "hello from node",
    ]
    for i in range(3):
        assert [r["status"] for r in _wait_for_usage(stack, f"{rid}-{i}")] == ["USAGE_STATUS_OK"]


def test_streaming_chat(stack: Stack, upstream: OpenAIUpstream) -> None:
    result = _node(stack, "stream", uuid.uuid4().hex)
    assert result["completion_tokens"] == upstream.served[-1].completion_tokens


def test_embeddings(stack: Stack, upstream: OpenAIUpstream) -> None:
    assert _node(stack, "embeddings", uuid.uuid4().hex) == {
        "case": "embeddings",
        "ok": True,
        "inputs": 2,
        "dimensions": 8,
    }
    sent = upstream.requests[-1].json
    assert sent is not None
    assert sent["input"] == ["one", "two"]


def test_listing_models(stack: Stack) -> None:
    assert _node(stack, "models", uuid.uuid4().hex)["ids"] == [
        "node-chat",
        "node-embed",
        "node-slow",
    ]


def test_errors_carry_error_info(stack: Stack, upstream: OpenAIUpstream) -> None:
    """Including the issue's trap: a kind-less content Value is refused before
    any upstream call or usage record."""
    result = _node(stack, "errors", uuid.uuid4().hex)
    assert result["reasons"] == ["MODEL_NOT_FOUND", "INVALID_REQUEST"]
    assert upstream.requests == []
    # Accounting happens before a reply, so none can appear after the refusal.
    (kindless,) = result["refused_request_ids"]
    assert _usage_records(stack, kindless) == []


def test_deadline_propagates_to_the_upstream(stack: Stack, slow: OpenAIUpstream) -> None:
    slow.behaviour = Behaviour(mode="hang")
    rid = uuid.uuid4().hex
    deadline_ms = 600
    result = _node(stack, "deadline", rid, DEADLINE_MS=str(deadline_ms))
    # On time: the deadline, plus a little for the client's own timer.
    assert deadline_ms * 0.9 <= result["elapsed_ms"] < deadline_ms + 1000, result
    # The router passed the deadline on: the provider dropped the upstream call
    # long before its own timeout_s.
    assert slow.wait_until(lambda: len(slow.requests) == 1 and slow.disconnects == 1, 3.0)
    assert slow.wait_until(lambda: slow.in_flight == 0, 3.0)
    # The attempt is accounted once, as cut short (by the provider's deadline or
    # by the router's cancellation, whichever acted first).
    (record,) = _wait_for_usage(stack, f"{rid}-0")
    assert record["status"] in ("USAGE_STATUS_ERROR", "USAGE_STATUS_CANCELLED"), record


def test_cancelling_a_stream_stops_the_upstream_and_is_counted(
    stack: Stack, slow: OpenAIUpstream
) -> None:
    words = " ".join(f"w{i}" for i in range(20))
    slow.behaviour = Behaviour(mode="slow", chunk_delay_s=0.2, reply=words)
    result = _node(stack, "cancel", uuid.uuid4().hex)
    assert result["received"].startswith("w0 w1")
    assert slow.wait_until(lambda: slow.disconnects == 1, 3.0)
    assert slow.wait_until(lambda: slow.in_flight == 0, 3.0)
    served = slow.served[-1]
    assert not served.completed
    assert served.chunks_sent < 20
    # Counted once, for what the caller got: the prompt ("hi") and the words it
    # received before cancelling, estimated (about four characters a token).
    (record,) = _wait_for_usage(stack, result["request_id"])
    assert record["status"] == "USAGE_STATUS_CANCELLED"
    assert record["model"] == "node-slow"
    assert record["estimated"] is True
    assert record["prompt_tokens"] == 1
    received = len(result["received"])
    assert (received + 3) // 4 <= record["completion_tokens"] <= (received + 3) // 4 + 2
    assert record["latency_ms"] > 0


def test_the_edge_still_maps_openai_content_json(stack: Stack, upstream: OpenAIUpstream) -> None:
    """The Value stays the JSON-facing field: strings, arrays of parts, and the
    refusal of a wrong kind, through Envoy's transcoder."""
    url = f"{stack.edge_url}/v1/chat/completions"
    headers = {"authorization": f"Bearer {CLIENT_KEY}"}
    parts = [{"type": "text", "text": "hello from"}, {"type": "text", "text": "node"}]
    for content in ("hello from node", parts):
        body = {"model": "node-chat", "messages": [{"role": "user", "content": content}]}
        reply = httpx.post(url, json=body, headers=headers, timeout=10)
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["message"]["content"] == "echo: hello from node"
        assert upstream.requests[-1].json is not None
        assert upstream.requests[-1].json["messages"][0]["content"] == content
    before = len(upstream.requests)
    for wrong in (5, True, {"text": "x"}):
        body = {"model": "node-chat", "messages": [{"role": "user", "content": wrong}]}
        reply = httpx.post(url, json=body, headers=headers, timeout=10)
        assert reply.status_code == 400, reply.text
        assert reply.json()["error"]["param"] == "messages[0].content"
    assert len(upstream.requests) == before
