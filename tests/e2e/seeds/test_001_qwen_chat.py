"""A client of the Qwen chat API (seed document 001), written from that document
alone: POST /api/llm/chat (non-stream: the {code, message, data} envelope;
stream: data: {"content", "finish_reason"} events, usage on the last, then
[DONE]), GET /api/llm/models, and every error the document lists, with HTTP
status equal to code. The only change a client makes: the base URL and the key."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from switchboard_stack.harness import Stack
from tests.e2e.seeds.keys import CLIENT_KEY, LIMITED_KEY
from tests.support.openai_upstream import Behaviour, OpenAIUpstream

pytestmark = pytest.mark.e2e


def _sent(upstream: OpenAIUpstream) -> dict[str, Any]:
    """The JSON body of the last request the upstream received."""
    body = upstream.requests[-1].json
    assert isinstance(body, dict)
    return body


@pytest.fixture
def api(stack: Stack) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {CLIENT_KEY}", "Content-Type": "application/json"}
    with httpx.Client(base_url=f"{stack.edge_url}/api/llm", headers=headers, timeout=30) as c:
        yield c


def _body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "qwen-turbo",
        "messages": [{"role": "user", "content": "你好"}],
        "stream": False,
    }
    body.update(overrides)
    return body


def _events(reply: httpx.Response) -> list[str]:
    return [line[6:] for line in reply.text.split("\n") if line.startswith("data: ")]


def _refused(reply: httpx.Response, code: int, message: str | None = None) -> str:
    assert reply.status_code == code, reply.text
    body = reply.json()
    assert set(body) == {"code", "message", "data"}
    assert body["code"] == code
    assert body["data"] is None
    if message is not None:
        assert body["message"] == message
    text: str = body["message"]
    return text


def test_chat(api: httpx.Client, upstream: OpenAIUpstream) -> None:
    reply = api.post("/chat", json=_body(temperature=0.7))
    assert reply.status_code == 200, reply.text
    served = upstream.served[-1]
    assert reply.json() == {
        "code": 200,
        "message": "success",
        "data": {
            "content": "echo: 你好",
            "finish_reason": "stop",
            "usage": {
                "input_tokens": served.prompt_tokens,
                "output_tokens": served.completion_tokens,
                "total_tokens": served.prompt_tokens + served.completion_tokens,
            },
        },
    }
    assert _sent(upstream)["temperature"] == 0.7


def test_chat_stream(api: httpx.Client, upstream: OpenAIUpstream) -> None:
    reply = api.post(
        "/chat",
        json=_body(messages=[{"role": "user", "content": "one two three four"}], stream=True),
    )
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("text/event-stream")
    events = _events(reply)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len(chunks) >= 2
    for chunk in chunks[:-1]:
        assert set(chunk) == {"content", "finish_reason"}
        assert chunk["finish_reason"] is None
    last = chunks[-1]
    assert set(last) == {"content", "finish_reason", "usage"}
    assert last["finish_reason"] == "stop"
    served = upstream.served[-1]
    assert last["usage"] == {
        "input_tokens": served.prompt_tokens,
        "output_tokens": served.completion_tokens,
        "total_tokens": served.prompt_tokens + served.completion_tokens,
    }
    assert "".join(c["content"] for c in chunks) == "echo: one two three four"


def test_models(api: httpx.Client) -> None:
    reply = api.get("/models")
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["code"] == 200
    assert body["message"] == "success"
    by_title = {m["title"]: m for m in body["data"]}
    # Language models (type 0) only: the embedding model is not listed.
    assert set(by_title) == {"qwen-turbo", "qwen-plus", "mock-chat"}
    turbo = by_title["qwen-turbo"]
    assert set(turbo) == {
        "id", "title", "img", "name", "description", "keyword", "time", "tag1", "tag2",
        "type", "is_featured", "created_at", "updated_at",
    }  # fmt: skip
    assert turbo["img"] == "https://example.com/qwen-turbo.png"
    assert turbo["name"] == "通义千问-Turbo"
    assert turbo["description"] == "通义千问超大规模语言模型,加速响应版本"
    assert turbo["keyword"] == "文本生成"
    assert turbo["time"] == "2025-01-01"
    assert (turbo["tag1"], turbo["tag2"]) == ("fast", "Qwen")
    assert turbo["type"] == 0
    assert turbo["is_featured"] is True
    assert len(turbo["created_at"]) == len("2025-01-01T00:00:00")
    ids = [m["id"] for m in body["data"]]
    assert all(isinstance(i, int) and i > 0 for i in ids)
    assert len(set(ids)) == len(ids)
    # The id is stable: asked again, the same.
    again = {m["title"]: m["id"] for m in api.get("/models").json()["data"]}
    assert again == {m["title"]: m["id"] for m in body["data"]}


def test_invalid_model(api: httpx.Client) -> None:
    for model in ("no-such-model", "embed", ""):
        for stream in (False, True):
            reply = api.post("/chat", json=_body(model=model, stream=stream))
            _refused(reply, 400, "无效的模型名称或模型类型不匹配")


def test_empty_messages(api: httpx.Client) -> None:
    for stream in (False, True):
        _refused(api.post("/chat", json=_body(messages=[], stream=stream)), 400, "消息列表不能为空")


def test_bad_messages(api: httpx.Client) -> None:
    reply = api.post("/chat", json=_body(messages=[{"role": "robot", "content": "x"}]))
    assert _refused(reply, 400).startswith("消息格式错误")


@pytest.mark.parametrize(
    ("field", "value"), [("temperature", 2.0), ("temperature", -0.1), ("top_p", 0), ("top_p", 1.1)]
)
def test_parameters_out_of_range(api: httpx.Client, field: str, value: float) -> None:
    reply = api.post("/chat", json=_body(**{field: value}))
    assert _refused(reply, 400).startswith("参数值超出有效范围")


def test_parameters_at_the_edges_of_their_ranges(api: httpx.Client) -> None:
    for extra in ({"temperature": 0}, {"temperature": 1.99}, {"top_p": 1.0}, {"max_tokens": 5}):
        reply = api.post("/chat", json=_body(**extra))
        assert reply.status_code == 200, (extra, reply.text)


def test_unauthorized(stack: Stack) -> None:
    url = f"{stack.edge_url}/api/llm/chat"
    for headers in ({}, {"Authorization": "Bearer wrong-key"}):
        for stream in (False, True):
            reply = httpx.post(url, json=_body(stream=stream), headers=headers)
            _refused(reply, 401, "未授权:API Key缺失或无效")
    # GET /api/llm/models is also seed 002's route: its error carries 002's
    # "error" object beside 001's envelope, which is all a 001 client reads.
    reply = httpx.get(f"{stack.edge_url}/api/llm/models")
    assert reply.status_code == 401
    body = reply.json()
    assert (body["code"], body["message"], body["data"]) == (401, "未授权:API Key缺失或无效", None)


def test_rate_limited(stack: Stack) -> None:
    headers = {"Authorization": f"Bearer {LIMITED_KEY}"}
    url = f"{stack.edge_url}/api/llm/chat"
    first = httpx.post(url, json=_body(), headers=headers)
    assert first.status_code == 200, first.text
    _refused(httpx.post(url, json=_body(), headers=headers), 429, "请求频率超限")


def test_upstream_error(api: httpx.Client, upstream: OpenAIUpstream) -> None:
    upstream.behaviour = Behaviour(mode="status", status=500)
    for stream in (False, True):
        message = _refused(api.post("/chat", json=_body(stream=stream)), 502)
        assert message.startswith("百炼平台返回错误:")


def test_timeout(api: httpx.Client, upstream: OpenAIUpstream) -> None:
    upstream.behaviour = Behaviour(mode="hang")
    _refused(api.post("/chat", json=_body()), 504, "请求超时")


def test_malformed_body(api: httpx.Client) -> None:
    reply = api.post("/chat", content=b'{"model": "qwen-turbo", "messages": [')
    assert _refused(reply, 400).startswith("参数错误")
    reply = api.post("/chat", json=_body(stream="yes"))
    assert _refused(reply, 400).startswith("参数错误")
