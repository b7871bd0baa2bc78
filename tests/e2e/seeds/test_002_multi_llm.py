"""A client of the multi-model LLM API (seed document 002), written from that
document alone, at both /api/llm and the versioned /api/v1/llm: generation
(with cost) unary and streamed, models and their status, health, usage and
performance statistics, the admin config routes, and the error body
{"error": {code, message, details, request_id}} with the document's codes and
statuses. The only change a client makes: the base URL and the key."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from switchboard_stack.harness import Stack
from tests.e2e.seeds.conftest import SPEECH_MODELS
from tests.e2e.seeds.keys import ADMIN_KEY, CLIENT_KEY
from tests.support.openai_upstream import Behaviour, OpenAIUpstream

pytestmark = pytest.mark.e2e

PREFIXES = ("/api/llm", "/api/v1/llm")


def _sent(upstream: OpenAIUpstream) -> dict[str, Any]:
    """The JSON body of the last request the upstream received."""
    body = upstream.requests[-1].json
    assert isinstance(body, dict)
    return body


@pytest.fixture(params=PREFIXES)
def api(stack: Stack, request: pytest.FixtureRequest) -> Iterator[httpx.Client]:
    headers = {"X-API-Key": CLIENT_KEY, "Content-Type": "application/json"}
    base = f"{stack.edge_url}{request.param}"
    with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
        yield client


@pytest.fixture
def admin(stack: Stack) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(base_url=f"{stack.edge_url}/api/llm", headers=headers, timeout=30) as c:
        yield c


def _generate(model: str = "qwen-turbo", text: str = "Hello", **parameters: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": text}],
        "parameters": parameters,
    }


def _error(reply: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert set(error) == {"code", "message", "details", "request_id"}
    assert error["code"] == code
    assert isinstance(error["message"], str)
    assert error["message"]
    assert isinstance(error["details"], dict)
    assert error["request_id"] == reply.headers["x-request-id"]
    return error


def _until(check: Callable[[], bool], within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.1)


def test_generate(api: httpx.Client, upstream: OpenAIUpstream) -> None:
    reply = api.post("/generate", json=_generate(temperature=0.7, max_tokens=100, top_p=0.9))
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert set(body) == {"id", "model", "choices", "usage", "cost"}
    assert body["model"] == "qwen-turbo"
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "echo: Hello"},
            "finish_reason": "stop",
        }
    ]
    served = upstream.served[-1]
    assert body["usage"] == {
        "prompt_tokens": served.prompt_tokens,
        "completion_tokens": served.completion_tokens,
        "total_tokens": served.prompt_tokens + served.completion_tokens,
    }
    # qwen-turbo's pricing: 0.5 per 1K input tokens, 1.5 per 1K output tokens.
    cost = body["cost"]
    assert cost["input_cost"] == pytest.approx(served.prompt_tokens * 0.5 / 1000)
    assert cost["output_cost"] == pytest.approx(served.completion_tokens * 1.5 / 1000)
    assert cost["total_cost"] == pytest.approx(cost["input_cost"] + cost["output_cost"])
    sent = _sent(upstream)
    assert (sent["temperature"], sent["max_tokens"], sent["top_p"]) == (0.7, 100, 0.9)


def test_generate_stream(api: httpx.Client) -> None:
    reply = api.post("/generate/stream", json=_generate(text="a poem of spring", stream=True))
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("text/event-stream")
    data = [line[6:] for line in reply.text.split("\n") if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert len({c["id"] for c in chunks}) == 1
    text = "".join(c["choices"][0]["delta"]["content"] for c in chunks)
    assert text == "echo: a poem of spring"


def test_models(api: httpx.Client) -> None:
    reply = api.get("/models")
    assert reply.status_code == 200, reply.text
    models = {m["id"]: m for m in reply.json()["models"]}
    assert {"qwen-turbo", "qwen-plus", "mock-chat", "embed"} <= set(models)
    turbo = models["qwen-turbo"]
    assert turbo == {
        "id": "qwen-turbo",
        "name": "通义千问-Turbo",
        "provider": "loopback",
        "type": "text",
        "status": "available",
        "capabilities": ["text-generation", "conversation", "vision"],
        "limits": {"max_tokens": 8192, "context_window": 32768},
        "pricing": {"input_per_1k_tokens": 0.5, "output_per_1k_tokens": 1.5},
    }


def test_model_status(api: httpx.Client) -> None:
    assert api.post("/generate", json=_generate()).status_code == 200
    reply = api.get("/models/qwen-turbo/status")
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert set(body) == {
        "model_id", "status", "health", "response_time_ms", "last_check", "error_rate",
    }  # fmt: skip
    assert body["model_id"] == "qwen-turbo"
    assert body["status"] == "available"
    assert body["health"] == "healthy"
    assert isinstance(body["response_time_ms"], int)
    checked = dt.datetime.strptime(body["last_check"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    assert abs((dt.datetime.now(dt.UTC) - checked).total_seconds()) < 60
    assert 0 <= body["error_rate"] <= 1
    _error(api.get("/models/no-such-model/status"), 404, "MODEL_NOT_FOUND")


def test_health(api: httpx.Client) -> None:
    reply = api.get("/health")
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["status"] in {"healthy", "degraded", "unhealthy"}
    dt.datetime.strptime(body["timestamp"], "%Y-%m-%dT%H:%M:%SZ")
    assert set(body["services"]) == {"llm_service", "model_manager", "cost_tracker"}
    assert body["services"]["model_manager"] == "healthy"
    models = body["models"]
    assert set(models) == {"available", "healthy", "degraded", "unavailable"}
    # The stack's four chat and embedding models, and Bisheng's workbench speech models.
    total = 4 + len(SPEECH_MODELS)
    assert models["healthy"] + models["degraded"] + models["unavailable"] == total
    assert models["available"] >= 3


def test_usage_stats_count_every_call(api: httpx.Client) -> None:
    today = dt.datetime.now(dt.UTC).date().isoformat()
    query = {"start_date": today, "end_date": today, "model": "qwen-plus"}

    def requests() -> int:
        reply = api.get("/stats/usage", params=query)
        assert reply.status_code == 200, reply.text
        count: int = reply.json()["total_requests"]
        return count

    before = requests()
    for i in range(3):
        assert api.post("/generate", json=_generate("qwen-plus", f"call {i}")).status_code == 200
    _until(lambda: requests() == before + 3)
    body = api.get("/stats/usage", params=query).json()
    assert body["period"] == {"start": today, "end": today}
    assert set(body) == {"period", "total_requests", "total_tokens", "total_cost", "by_model"}
    assert set(body["by_model"]) == {"qwen-plus"}
    plus = body["by_model"]["qwen-plus"]
    assert set(plus) == {"requests", "tokens", "cost"}
    assert plus["requests"] == body["total_requests"]
    assert plus["tokens"] == body["total_tokens"] > 0
    assert plus["cost"] == pytest.approx(body["total_cost"])


def test_performance_stats(api: httpx.Client) -> None:
    assert api.post("/generate", json=_generate()).status_code == 200
    reply = api.get("/stats/performance")
    assert reply.status_code == 200, reply.text
    body = reply.json()
    times = body["response_times"]
    assert set(times) == {"average_ms", "p50_ms", "p95_ms", "p99_ms"}
    assert times["p50_ms"] <= times["p95_ms"] <= times["p99_ms"]
    assert 0 <= body["success_rate"] <= 1
    assert body["success_rate"] + body["error_rate"] == pytest.approx(1)
    assert set(body["throughput"]) == {"requests_per_minute", "tokens_per_minute"}


def test_config_model_parameters_apply_on_every_surface(
    admin: httpx.Client, stack: Stack, upstream: OpenAIUpstream
) -> None:
    body = {"parameters": {"default_temperature": 0.3, "max_tokens": 3}}
    reply = admin.put("/config/models/qwen-plus", json=body)
    assert reply.status_code == 200, reply.text
    headers = {"Authorization": f"Bearer {CLIENT_KEY}"}
    calls = {
        "/api/llm/generate": _generate("qwen-plus", "one two three four five"),
        "/v1/chat/completions": {
            "model": "qwen-plus",
            "messages": [{"role": "user", "content": "one two three four five"}],
        },
        "/api/llm/chat": {
            "model": "qwen-plus",
            "messages": [{"role": "user", "content": "one two three four five"}],
        },
    }
    try:
        for path, call in calls.items():

            def applied(path: str = path, call: dict[str, Any] = call) -> bool:
                reply = httpx.post(f"{stack.edge_url}{path}", json=call, headers=headers)
                assert reply.status_code == 200, reply.text
                sent = _sent(upstream)
                return bool(sent.get("temperature") == 0.3 and sent.get("max_tokens") == 3)

            _until(applied)
        # A call that sets them keeps its own.
        reply = httpx.post(
            f"{stack.edge_url}/api/llm/generate",
            json=_generate("qwen-plus", "x", temperature=1.0, max_tokens=50),
            headers=headers,
        )
        assert reply.status_code == 200
        assert _sent(upstream)["temperature"] == 1.0
        assert _sent(upstream)["max_tokens"] == 50
    finally:
        # Clearing needs the registry's admin API (the document has no "unset").
        registry = httpx.patch(
            f"{stack.edge_url}/v1/admin/models/qwen-plus?update_mask=default_parameters",
            json={"default_parameters": {}},
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        )
        assert registry.status_code == 200, registry.text


def test_config_enabled_and_rate_limit(admin: httpx.Client, stack: Stack) -> None:
    client = httpx.Client(base_url=f"{stack.edge_url}/api/llm", headers={"X-API-Key": CLIENT_KEY})
    with client:
        try:
            reply = admin.put("/config/models/mock-chat", json={"enabled": False})
            assert reply.status_code == 200, reply.text
            assert reply.json()["enabled"] is False
            _until(lambda: client.post("/generate", json=_generate("mock-chat")).status_code == 404)
            _error(client.post("/generate", json=_generate("mock-chat")), 404, "MODEL_NOT_FOUND")
            reply = admin.put(
                "/config/models/mock-chat",
                json={"enabled": True, "priority": 1, "rate_limit": {"requests_per_minute": 1}},
            )
            assert reply.status_code == 200, reply.text
            _until(lambda: client.post("/generate", json=_generate("mock-chat")).status_code == 429)
            error = _error(
                client.post("/generate", json=_generate("mock-chat")), 429, "RATE_LIMIT_EXCEEDED"
            )
            assert error["details"]["model"] == "mock-chat"
            assert error["details"]["retry_after"] >= 1
        finally:
            admin.put(
                "/config/models/mock-chat",
                json={"enabled": True, "rate_limit": {"requests_per_minute": 0}},
            ).raise_for_status()


def test_config_needs_the_admin_key(api: httpx.Client) -> None:
    reply = api.put("/config/models/qwen-turbo", json={"enabled": False})
    _error(reply, 401, "UNAUTHORIZED")


def test_unauthorized(stack: Stack) -> None:
    for prefix in PREFIXES:
        url = f"{stack.edge_url}{prefix}"
        _error(httpx.post(f"{url}/generate", json=_generate()), 401, "UNAUTHORIZED")
        reply = httpx.post(
            f"{url}/generate/stream", json=_generate(), headers={"X-API-Key": "wrong"}
        )
        _error(reply, 401, "UNAUTHORIZED")
        _error(httpx.get(f"{url}/stats/usage"), 401, "UNAUTHORIZED")


def test_invalid_request(api: httpx.Client) -> None:
    _error(
        api.post("/generate", json={"model": "qwen-turbo", "messages": []}), 400, "INVALID_REQUEST"
    )
    _error(api.post("/generate", content=b'{"model": '), 400, "INVALID_REQUEST")
    reply = api.post("/generate", json=_generate(temperature="hot"))
    _error(reply, 400, "INVALID_REQUEST")


def test_model_not_found(api: httpx.Client) -> None:
    for path in ("/generate", "/generate/stream"):
        error = _error(api.post(path, json=_generate("gpt-9")), 404, "MODEL_NOT_FOUND")
        assert error["details"]["model"] == "gpt-9"


def test_model_unavailable(api: httpx.Client, upstream: OpenAIUpstream) -> None:
    upstream.behaviour = Behaviour(mode="status", status=500)
    for path in ("/generate", "/generate/stream"):
        error = _error(api.post(path, json=_generate()), 503, "MODEL_UNAVAILABLE")
        assert error["details"]["model"] == "qwen-turbo"


def test_config_load_balancing(admin: httpx.Client, stack: Stack, upstream: OpenAIUpstream) -> None:
    """Weights across models: calls for the group ("auto" unless the body names
    another) are spread over its models; round_robin alternates evenly."""
    # (Active probes, which health_check_interval turns on, would add upstream calls
    # under the other tests here: test_002_health_checks.py has its own stack.)
    body = {
        "strategy": "round_robin",
        "health_check_interval": 0,
        "weights": {"qwen-turbo": 0.5, "qwen-plus": 0.5},
    }
    reply = admin.put("/config/load-balancing", json=body)
    assert reply.status_code == 200, reply.text
    assert reply.json() == {
        "group": "auto",
        "strategy": "round_robin",
        "health_check_interval": 0,
        "failure_threshold": 0,
        "recovery_threshold": 0,
        "weights": {"qwen-plus": 0.5, "qwen-turbo": 0.5},
    }
    client = httpx.Client(base_url=f"{stack.edge_url}/api/llm", headers={"X-API-Key": CLIENT_KEY})
    with client:
        _until(lambda: client.post("/generate", json=_generate("auto")).status_code == 200)
        served = []
        for _ in range(4):
            reply = client.post("/generate", json=_generate("auto"))
            assert reply.status_code == 200, reply.text
            assert reply.json()["model"] == "auto"
            served.append(_sent(upstream)["model"])
        assert sorted(served) == ["qwen-plus-up"] * 2 + ["qwen-turbo-up"] * 2
        assert served[0] != served[1]
        assert served[2] != served[3]
        # All the weight on one model; the strategy stays as set.
        reply = admin.put("/config/load-balancing", json={"weights": {"qwen-plus": 1}})
        assert reply.json()["strategy"] == "round_robin"

        def only_plus() -> bool:
            client.post("/generate", json=_generate("auto")).raise_for_status()
            return bool(_sent(upstream)["model"] == "qwen-plus-up")

            # Until the change is live: under the old round robin no two calls in a

        # row go to the same model, so one lucky call does not count.
        _until(lambda: only_plus() and only_plus())

        for _ in range(3):
            assert only_plus()


def test_config_load_balancing_refusals(admin: httpx.Client, api: httpx.Client) -> None:
    reply = admin.put("/config/load-balancing", json={"weights": {"no-such-model": 1}})
    _error(reply, 400, "INVALID_REQUEST")
    reply = admin.put("/config/load-balancing", json={"weights": {"embed": 1}})
    _error(reply, 400, "INVALID_REQUEST")
    reply = admin.put("/config/load-balancing", json={"group": "qwen-plus"})
    _error(reply, 400, "INVALID_REQUEST")
    reply = admin.put("/config/load-balancing", json={"strategy": "fastest"})
    _error(reply, 400, "INVALID_REQUEST")
    _error(
        api.put("/config/load-balancing", json={"weights": {"qwen-plus": 1}}), 401, "UNAUTHORIZED"
    )
