"""The edge's config for the seed APIs: a surface moved to another prefix, one
switched off, and CORS for the origins configured (none by default)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from switchboard_stack.harness import Stack, running_stack

pytestmark = pytest.mark.e2e

ORIGIN = "https://app.example.com"
CHAT = {"model": "mock-chat", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def moved(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    config = {
        "providers": [{"name": "mock", "kind": "mock"}],
        "models": [{"name": "mock-chat", "deployments": [{"provider": "mock", "model": "m"}]}],
    }
    env = {
        "SWITCHBOARD_QWEN_CHAT_PREFIX": "/qwen",
        "SWITCHBOARD_MULTI_LLM_PREFIX": "/api/llm",
        "SWITCHBOARD_VISION_CHAT_PREFIX": "off",
        "SWITCHBOARD_CORS_ORIGINS": f"{ORIGIN}, https://other.example.com",
    }
    path: Path = tmp_path_factory.mktemp("edge-config")
    with running_stack(config, path, env) as stack:
        yield stack


def test_a_surface_at_another_prefix(moved: Stack) -> None:
    reply = httpx.post(f"{moved.edge_url}/qwen/chat", json=CHAT)
    assert reply.status_code == 200, reply.text
    assert reply.json()["code"] == 200
    stream = httpx.post(f"{moved.edge_url}/qwen/chat", json={**CHAT, "stream": True})
    assert stream.text.rstrip().endswith("data: [DONE]")
    assert httpx.get(f"{moved.edge_url}/qwen/models").json()["code"] == 200
    # Its old place is not served; 002, still at /api/llm, is (and only at /api/llm).
    assert httpx.post(f"{moved.edge_url}/api/llm/chat", json=CHAT).status_code == 404
    generate = httpx.post(f"{moved.edge_url}/api/llm/generate", json=CHAT)
    assert generate.status_code == 200, generate.text
    assert httpx.post(f"{moved.edge_url}/api/v1/llm/generate", json=CHAT).status_code == 404
    # A path under the new prefix that 001 does not own.
    assert httpx.post(f"{moved.edge_url}/qwen/generate", json=CHAT).status_code == 404


def test_a_surface_switched_off(moved: Stack) -> None:
    # (Seed 004 still serves its own /api/v1/models routes.)
    for path in ("/api/v1/chat/completions", "/api/v1/vision/completions"):
        assert httpx.post(f"{moved.edge_url}{path}", json=CHAT).status_code == 404
    # /v1 is unaffected.
    assert httpx.post(f"{moved.edge_url}/v1/chat/completions", json=CHAT).status_code == 200


def test_cors_for_configured_origins_only(moved: Stack) -> None:
    preflight = {
        "Origin": ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type, authorization",
    }
    reply = httpx.options(f"{moved.edge_url}/api/llm/generate", headers=preflight)
    assert reply.status_code == 200
    assert reply.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in reply.headers["access-control-allow-methods"]
    call = httpx.post(f"{moved.edge_url}/api/llm/generate", json=CHAT, headers={"Origin": ORIGIN})
    assert call.headers["access-control-allow-origin"] == ORIGIN
    assert "x-request-id" in call.headers["access-control-expose-headers"]
    stranger = {**preflight, "Origin": "https://evil.example.com"}
    reply = httpx.options(f"{moved.edge_url}/api/llm/generate", headers=stranger)
    assert "access-control-allow-origin" not in reply.headers


def test_no_cors_by_default(stack: Stack) -> None:
    headers = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
    reply = httpx.options(f"{stack.edge_url}/api/llm/generate", headers=headers)
    assert "access-control-allow-origin" not in reply.headers


def test_docs_and_openapi(stack: Stack) -> None:
    """/docs is a page over /openapi.json, which lists every seed route."""
    docs = httpx.get(f"{stack.edge_url}/docs", follow_redirects=True)
    assert docs.status_code == 200
    assert docs.headers["content-type"].startswith("text/html")
    assert 'src="docs.js"' in docs.text
    assert httpx.get(f"{stack.edge_url}/console/docs.js").status_code == 200
    spec = httpx.get(f"{stack.edge_url}/openapi.json", follow_redirects=True)
    assert spec.status_code == 200
    paths = spec.json()["paths"]
    for path in ("/api/llm/chat", "/api/llm/generate", "/api/v1/llm/health", "/api/v1/models"):
        assert path in paths
