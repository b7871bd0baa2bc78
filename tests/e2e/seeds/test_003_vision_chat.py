"""A client of the vision chat service (seed document 003), written from that
document alone: POST /api/v1/chat/completions (model optional, stream or not),
POST /api/v1/vision/completions (multipart image, model optional),
GET /api/v1/models, and errors {"detail": "..."} with 503 (no model can serve)
and 500 (the model call failed). The only change a client makes: the base URL,
and the API key once the deployment has keys."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from switchboard_stack.harness import Stack
from tests.e2e.seeds.keys import ADMIN_KEY, CLIENT_KEY
from tests.support.openai_upstream import Behaviour, OpenAIUpstream

pytestmark = pytest.mark.e2e

PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082"
)


def _sent(upstream: OpenAIUpstream) -> dict[str, Any]:
    """The JSON body of the last request the upstream received."""
    body = upstream.requests[-1].json
    assert isinstance(body, dict)
    return body


@pytest.fixture
def api(stack: Stack) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {CLIENT_KEY}"}
    with httpx.Client(base_url=stack.edge_url, headers=headers, timeout=30) as client:
        yield client


def _messages(text: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": text},
    ]


def _events(reply: httpx.Response) -> list[str]:
    return [line[6:] for line in reply.text.split("\n") if line.startswith("data: ")]


def test_chat_without_model_goes_to_the_active_model(api: httpx.Client) -> None:
    reply = api.post(
        "/api/v1/chat/completions",
        json={"messages": _messages("用Python写一个快速排序"), "stream": False},
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "qwen-turbo"
    assert isinstance(body["id"], str)
    assert isinstance(body["created"], int)
    (choice,) = body["choices"]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == "echo: 用Python写一个快速排序"
    assert choice["finish_reason"] == "stop"


def test_chat_with_a_model(api: httpx.Client) -> None:
    reply = api.post(
        "/api/v1/chat/completions",
        json={"model": "qwen-plus", "messages": _messages("hello there")},
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["model"] == "qwen-plus"
    assert reply.json()["choices"][0]["message"]["content"] == "echo: hello there"


def test_chat_stream(api: httpx.Client) -> None:
    reply = api.post(
        "/api/v1/chat/completions",
        json={"messages": _messages("one two three"), "stream": True},
    )
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("text/event-stream")
    events = _events(reply)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "echo: one two three"
    assert {c["model"] for c in chunks} == {"qwen-turbo"}


def test_vision_without_model(api: httpx.Client, upstream: OpenAIUpstream) -> None:
    upstream.behaviour = Behaviour(
        reply='{"objects": [{"name": "猫", "description": "这是一只橘色的猫。"}]}'
    )
    reply = api.post("/api/v1/vision/completions", files={"image": ("cat.png", PNG, "image/png")})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert set(body) == {"recognition_id", "objects"}
    assert body["recognition_id"]
    assert body["objects"] == [{"name": "猫", "description": "这是一只橘色的猫。"}]
    sent = _sent(upstream)
    assert sent["model"] == "qwen-turbo-up"


def test_vision_with_model(api: httpx.Client, upstream: OpenAIUpstream) -> None:
    upstream.behaviour = Behaviour(reply='{"objects": [{"name": "dog", "description": "a dog"}]}')
    reply = api.post(
        "/api/v1/vision/completions",
        files={"image": ("dog.png", PNG, "image/png")},
        data={"model": "qwen-turbo"},
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["objects"] == [{"name": "dog", "description": "a dog"}]


def test_models(api: httpx.Client) -> None:
    reply = api.get("/api/v1/models")
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["object"] == "list"
    ids = {m["id"] for m in body["data"]}
    assert {"qwen-turbo", "qwen-plus", "mock-chat"} <= ids
    for model in body["data"]:
        assert model["object"] == "model"
        assert isinstance(model["created"], int)
        assert isinstance(model["owned_by"], str)


def test_503_when_no_model_can_serve(api: httpx.Client) -> None:
    reply = api.post(
        "/api/v1/chat/completions", json={"model": "no-such-model", "messages": _messages("x")}
    )
    assert reply.status_code == 503
    assert set(reply.json()) == {"detail"}
    assert isinstance(reply.json()["detail"], str)
    assert reply.json()["detail"]


def test_500_when_the_model_call_fails(api: httpx.Client, upstream: OpenAIUpstream) -> None:
    upstream.behaviour = Behaviour(mode="status", status=500)
    for stream in (False, True):
        reply = api.post(
            "/api/v1/chat/completions", json={"messages": _messages("x"), "stream": stream}
        )
        assert reply.status_code == 500, reply.text
        assert set(reply.json()) == {"detail"}
    reply = api.post("/api/v1/vision/completions", files={"image": ("a.png", PNG, "image/png")})
    assert reply.status_code == 500, reply.text
    assert set(reply.json()) == {"detail"}


def test_missing_key_is_refused_in_the_documents_shape(stack: Stack) -> None:
    reply = httpx.post(
        f"{stack.edge_url}/api/v1/chat/completions", json={"messages": _messages("x")}
    )
    assert reply.status_code == 401
    assert set(reply.json()) == {"detail"}
    reply = httpx.post(f"{stack.edge_url}/api/v1/chat/completions", content=b"{not json")
    assert reply.status_code == 400
    assert set(reply.json()) == {"detail"}
    reply = httpx.get(f"{stack.edge_url}/api/v1/no-such-route")
    assert reply.status_code == 404
    assert set(reply.json()) == {"detail"}


def test_the_active_model_is_switched_live(api: httpx.Client, stack: Stack) -> None:
    """`switchboard models activate` (the CLI) sets the registry's active model;
    routers follow within a second."""
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    cli = [sys.executable, "-m", "switchboard_cli", "--edge-url", stack.edge_url]
    try:
        done = subprocess.run(
            [*cli, "models", "activate", "mock-chat", "--admin-key", ADMIN_KEY],
            env=stack.env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert "mock-chat is now the active chat model" in done.stdout
        served = ""
        deadline = time.monotonic() + 5
        while served != "mock-chat" and time.monotonic() < deadline:
            reply = api.post("/api/v1/chat/completions", json={"messages": _messages("hi")})
            served = reply.json()["model"]
        assert served == "mock-chat"
        assert reply.json()["choices"][0]["message"]["content"].startswith("[mock]")
    finally:
        httpx.put(
            f"{stack.edge_url}/v1/admin/defaults/MODEL_USE_CHAT",
            json={"model": "qwen-turbo"},
            headers=admin,
        ).raise_for_status()


def test_admin_opens_the_console(stack: Stack) -> None:
    """The document's Gradio admin was at /admin; the console picks the active models."""
    reply = httpx.get(f"{stack.edge_url}/admin")
    assert reply.status_code in (301, 302)
    assert reply.headers["location"].endswith("/console/")
    page = httpx.get(f"{stack.edge_url}/console/")
    assert 'id="active-chat"' in page.text
    assert 'id="active-vision"' in page.text
