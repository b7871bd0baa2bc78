"""Seed 004 (the inference-manager API), a client written from its document
alone with plain httpx, through the real stack (Envoy, every service) and the
REAL llama.cpp engine (`make engines`): create -> start -> generate (unary
and streamed, top_k and stop included) -> chat -> logs -> model detail with
performance -> delete refused while running -> stop -> delete; and the
document's error cases with their status and body."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from switchboard_engine.commands import llama_server_path
from switchboard_engine.install import bundled_model_path

from switchboard_common.accounts import hash_password
from switchboard_stack.harness import Stack, running_stack
from tests.conftest import eventually
from tests.e2e.seeds.keys import ADMIN_KEY, CLIENT_KEY

pytestmark = [pytest.mark.e2e, pytest.mark.serial]

WAIT_S = 90.0
ADMIN_PASSWORD = "correct horse battery staple"
CLIENT_PASSWORD = "alice-password-0123"
GPU_SCRIPT = {
    "driver_version": "535.86.10",
    "cuda_version": "12.2",
    "devices": [
        {
            "index": 0,
            "uuid": "GPU-seed004-0",
            "name": "NVIDIA RTX 4090",
            "utilization_gpu_percent": 78.5,
            "memory_used_mib": 12288,
            "memory_total_mib": 24576,
            "temperature_c": 65,
            "power_w": 350,
            "power_limit_w": 450,
            "processes": [{"pid": 1234, "name": "llama-cpp-server", "used_memory_mib": 8192}],
        }
    ],
}
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


@pytest.fixture(scope="module")
def stack004(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("seed004")
    accounts_file = home / "accounts.txt"
    accounts_file.write_text(
        f"admin:admin:{hash_password(ADMIN_PASSWORD)}\n"
        f"alice:seed004:{hash_password(CLIENT_PASSWORD)}\n"
    )
    gpu_script = home / "gpu.json"
    gpu_script.write_text(json.dumps(GPU_SCRIPT))
    config = {
        "providers": [{"name": "mock", "kind": "mock"}],
        "models": [{"name": "mock-chat", "deployments": [{"provider": "mock", "model": "m"}]}],
        "keys": [{"name": "seed004", "key_env": "SEED004_CLIENT_KEY"}],
    }
    env = {
        "SWITCHBOARD_ADMIN_KEY": ADMIN_KEY,
        "SEED004_CLIENT_KEY": CLIENT_KEY,
        "SWITCHBOARD_ENGINE_HEALTH_INTERVAL_S": "0.25",
        "SWITCHBOARD_NODE_NAME": "seed004-node",
        "SWITCHBOARD_ACCOUNTS_FILE": str(accounts_file),
        # No GPU on these machines: NVML's readings come from a script.
        "SWITCHBOARD_GPU_SCRIPT": str(gpu_script),
        "SWITCHBOARD_GPU_INTERVAL_S": "0.2",
    }
    with running_stack(config, home, env) as running:
        yield running


def _login(stack: Stack, username: str, password: str) -> str:
    reply = httpx.post(
        f"{stack.edge_url}/api/auth/token",
        json={"username": username, "password": password},
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 3600
    token: str = body["access_token"]
    return token


@pytest.fixture(scope="module")
def api(stack004: Stack) -> Iterator[httpx.Client]:
    """The document's client: it logs in, then sends its token as Bearer."""
    headers = {"authorization": f"Bearer {_login(stack004, 'admin', ADMIN_PASSWORD)}"}
    with httpx.Client(base_url=f"{stack004.edge_url}/api", headers=headers, timeout=60) as client:
        yield client


def _model_path() -> str:
    server, model = llama_server_path(), bundled_model_path()
    if server is None or not server.exists() or model is None:
        pytest.fail("llama-server or the test model is missing: run `make engines`")
    return str(model)


def _error(reply: httpx.Response, status: int, code: str, path: str) -> dict[str, Any]:
    assert reply.status_code == status, reply.text
    body: dict[str, Any] = reply.json()
    assert set(body) == {"error", "timestamp", "path"}, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    assert TIMESTAMP.match(body["timestamp"]), body
    assert body["path"] == path, body
    return body


# The checks below are polled by eventually(), which counts an AssertionError as "not yet".


def _status(api: httpx.Client, model_id: str, wanted: str) -> dict[str, Any]:
    reply = api.get(f"/models/{model_id}")
    assert reply.status_code == 200, reply.text
    found: dict[str, Any] = reply.json()
    assert found["status"] == wanted, found["status"]
    return found


def _generated(api: httpx.Client, model_id: str, body: dict[str, Any]) -> httpx.Response:
    reply = api.post(f"/models/{model_id}/generate", json=body)
    # Until the router has seen the engine's deployment: 503 MODEL_NOT_RUNNING.
    assert reply.status_code != 503, reply.text
    return reply


@pytest.mark.timeout(400)
def test_a_model_through_its_life_on_the_real_engine(api: httpx.Client) -> None:
    model_path = _model_path()
    created = api.post(
        "/models",
        json={
            "name": "smol-004",
            "display_name": "我的模型",
            "description": "模型描述",
            "framework": "llama.cpp",
            "priority": 5,
            "config": {"model_path": model_path, "n_ctx": 2048, "n_threads": 2},
            "resource_requirements": {"memory": 1024},
            "tags": ["production", "chat"],
        },
    )
    assert created.status_code == 201, created.text
    assert created.json() == {
        "id": "smol-004",
        "name": "smol-004",
        "status": "created",
        "message": "模型创建成功",
    }
    _error(
        api.post(
            "/models",
            json={"name": "smol-004", "framework": "llama.cpp", "config": {"model_path": "x"}},
        ),
        409,
        "MODEL_ALREADY_EXISTS",
        "/api/models",
    )

    listed = api.get("/models", params={"page": 1, "size": 20, "framework": "llama.cpp"})
    assert listed.status_code == 200, listed.text
    page = listed.json()
    assert page["total"] == 1
    assert page["page"] == 1
    assert page["size"] == 20
    assert page["pages"] == 1
    [item] = page["items"]
    assert item["id"] == "smol-004"
    assert item["display_name"] == "我的模型"
    assert item["framework"] == "llama.cpp"
    assert item["status"] == "created"
    assert item["config"] == {"model_path": model_path, "n_ctx": 2048, "n_threads": 2}
    assert api.get("/models", params={"status": "running"}).json()["items"] == []

    # Not running yet: generation is refused with the document's code.
    _error(
        api.post("/models/smol-004/generate", json={"prompt": "Hi", "max_tokens": 4}),
        503,
        "MODEL_NOT_RUNNING",
        "/api/models/smol-004/generate",
    )

    started = api.post("/models/smol-004/start", json={"force": False, "timeout": 300})
    assert started.status_code == 200, started.text
    assert started.json()["message"] == "模型启动中"
    assert started.json()["task_id"]
    running = eventually(lambda: _status(api, "smol-004", "running"), timeout=WAIT_S)
    assert running["health"] == "healthy"
    assert running["resource_usage"]["memory"] > 0

    # Generation, with the document's sampling fields (top_k and stop go to llama.cpp).
    request = {
        "prompt": "Hello, how are you?",
        "max_tokens": 8,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 40,
        "stop": ["\n", "Human:"],
        "stream": False,
    }
    reply = eventually(lambda: _generated(api, "smol-004", request), timeout=WAIT_S)
    assert reply.status_code == 200, reply.text
    generated = reply.json()
    assert set(generated) == {"id", "model", "choices", "usage", "created"}
    assert generated["model"] == "smol-004"
    [choice] = generated["choices"]
    assert choice["index"] == 0
    assert choice["finish_reason"] in ("stop", "length")
    assert "\n" not in choice["text"]
    assert generated["usage"]["completion_tokens"] > 0
    assert generated["usage"]["total_tokens"] == (
        generated["usage"]["prompt_tokens"] + generated["usage"]["completion_tokens"]
    )

    with api.stream(
        "POST",
        "/v1/models/smol-004/generate",
        json={"prompt": "Tell me a story", "max_tokens": 10, "stream": True},
    ) as streamed:
        assert streamed.status_code == 200
        assert streamed.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in streamed.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    pieces = [json.loads(e) for e in events[:-1]]
    assert pieces
    assert all(p["choices"][0]["index"] == 0 for p in pieces)
    assert "".join(p["choices"][0]["text"] for p in pieces)

    chat = api.post(
        "/models/smol-004/chat/completions",
        json={
            "messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "Hello!"},
            ],
            "max_tokens": 8,
            "temperature": 0.7,
            "stream": False,
        },
    )
    assert chat.status_code == 200, chat.text
    answer = chat.json()
    assert answer["model"] == "smol-004"
    assert answer["choices"][0]["message"]["role"] == "assistant"
    assert answer["choices"][0]["message"]["content"]
    assert answer["usage"]["completion_tokens"] > 0

    logs = api.get("/models/smol-004/logs", params={"lines": 20})
    assert logs.status_code == 200, logs.text
    lines = logs.json()["logs"]
    assert 0 < len(lines) <= 20
    assert all(TIMESTAMP.match(line["timestamp"]) and line["message"] for line in lines)
    assert {line["level"] for line in lines} <= {"DEBUG", "INFO", "WARNING", "ERROR"}

    # follow=true: the tail, then each new line, as server-sent events.
    with api.stream("GET", "/models/smol-004/logs", params={"lines": 2, "follow": True}) as live:
        assert live.status_code == 200
        assert live.headers["content-type"].startswith("text/event-stream")
        first = next(line for line in live.iter_lines() if line.startswith("data: "))
    assert set(json.loads(first[6:])) == {"timestamp", "level", "message"}

    def measured() -> dict[str, Any]:
        detail: dict[str, Any] = api.get("/models/smol-004").json()
        assert detail["performance_stats"]["avg_response_time"] > 0
        return detail

    detail = eventually(measured, timeout=WAIT_S)
    assert detail["description"] == "模型描述"
    assert detail["tags"] == ["production", "chat"]
    assert detail["resource_requirements"]["memory"] == 1024
    assert detail["resource_requirements"]["cpu_cores"] == 2
    assert 0 <= detail["performance_stats"]["error_rate"] <= 1
    assert detail["performance_stats"]["requests_per_second"] > 0

    # Monitoring: the calls above, from the ledger (ClickHouse).
    def performance() -> dict[str, Any]:
        reply = api.get(
            "/monitoring/performance", params={"model_id": "smol-004", "time_range": "1h"}
        )
        assert reply.status_code == 200, reply.text
        body: dict[str, Any] = reply.json()
        counted = [m for m in body["models"] if m["model_id"] == "smol-004"]
        assert counted, body
        assert counted[0]["total_requests"] >= 3, counted
        return body

    perf = eventually(performance, timeout=WAIT_S)
    assert perf["time_range"] == "1h"
    [model_perf] = perf["models"]
    assert model_perf["model_name"] == "smol-004"
    assert (
        model_perf["successful_requests"] + model_perf["failed_requests"]
        == (model_perf["total_requests"])
    )
    assert 0 < model_perf["min_response_time"] <= model_perf["avg_response_time"]
    assert model_perf["avg_response_time"] <= model_perf["max_response_time"]
    assert model_perf["requests_per_second"] > 0
    assert set(perf["system"]) == {"avg_cpu_percent", "avg_memory_percent", "avg_gpu_utilization"}

    def series(kind: str) -> dict[str, Any]:
        reply = api.get("/monitoring/metrics", params={"metric_type": kind, "interval": "1m"})
        assert reply.status_code == 200, reply.text
        body: dict[str, Any] = reply.json()
        assert body["metrics"], body
        return body

    gpu_series = eventually(lambda: series("gpu"), timeout=WAIT_S)
    assert all(TIMESTAMP.match(m["timestamp"]) for m in gpu_series["metrics"])
    assert gpu_series["metrics"][-1]["gpu_utilization"] == 78.5
    assert gpu_series["metrics"][-1]["gpu_memory_used"] == 12288
    assert gpu_series["summary"]["max_gpu_utilization"] == 78.5
    model_series = eventually(lambda: series("model"), timeout=WAIT_S)
    assert {m["model_id"] for m in model_series["metrics"]} >= {"smol-004"}
    assert model_series["summary"]["total_requests"] >= 3
    _error(
        api.get("/monitoring/metrics", params={"metric_type": "disk"}),
        422,
        "INVALID_REQUEST",
        "/api/monitoring/metrics",
    )

    updated = api.put(
        "/models/smol-004",
        json={
            "display_name": "更新的模型名称",
            "config": {"temperature": 0.8, "top_p": 0.9},
            "tags": ["production", "chat", "updated"],
        },
    )
    assert updated.status_code == 200, updated.text
    assert updated.json()["display_name"] == "更新的模型名称"
    assert updated.json()["config"]["temperature"] == 0.8
    assert updated.json()["tags"] == ["production", "chat", "updated"]

    restarted = api.post("/models/smol-004/restart")
    assert restarted.status_code == 200, restarted.text
    assert restarted.json()["task_id"] != started.json()["task_id"]
    eventually(lambda: _status(api, "smol-004", "running"), timeout=WAIT_S)

    # A running model is not deleted behind its callers' backs: stop it first.
    _error(api.delete("/models/smol-004"), 409, "CONFLICT", "/api/models/smol-004")

    stopped = api.post("/models/smol-004/stop", json={"force": False, "timeout": 60})
    assert stopped.status_code == 200, stopped.text
    assert stopped.json()["task_id"]
    eventually(lambda: _status(api, "smol-004", "stopped"), timeout=WAIT_S)

    deleted = api.delete("/models/smol-004")
    assert deleted.status_code == 200, deleted.text
    assert deleted.json() == {"message": "模型删除成功"}
    _error(api.get("/models/smol-004"), 404, "MODEL_NOT_FOUND", "/api/models/smol-004")


def test_the_documents_error_cases(stack004: Stack, api: httpx.Client) -> None:
    missing = _error(
        api.get("/models/invalid-model-123"),
        404,
        "MODEL_NOT_FOUND",
        "/api/models/invalid-model-123",
    )
    assert missing["error"]["details"] == {"model_id": "invalid-model-123"}
    _error(
        api.get("/v1/models/invalid-model-123"),
        404,
        "MODEL_NOT_FOUND",
        "/api/v1/models/invalid-model-123",
    )

    # 422 names the field that failed validation.
    invalid = _error(
        api.post("/models", json={"name": "bad", "framework": "llama.cpp", "config": {}}),
        422,
        "INVALID_REQUEST",
        "/api/models",
    )
    assert invalid["error"]["details"]["field"] == "config.model_path"
    wrong = _error(
        api.post(
            "/models",
            json={"name": "bad", "framework": "onnx", "config": {"model_path": "/m.gguf"}},
        ),
        422,
        "INVALID_REQUEST",
        "/api/models",
    )
    assert wrong["error"]["details"]["field"] == "framework"
    too_big = _error(
        api.get("/models", params={"size": 101}), 422, "INVALID_REQUEST", "/api/models"
    )
    assert too_big["error"]["details"]["field"] == "size"

    # Malformed JSON: 400 in the same shape (the edge's own refusal).
    _error(
        api.post("/models", content=b"{not json", headers={"content-type": "application/json"}),
        400,
        "INVALID_REQUEST",
        "/api/models",
    )

    with httpx.Client(base_url=f"{stack004.edge_url}/api", timeout=30) as anonymous:
        _error(anonymous.get("/models"), 401, "AUTHENTICATION_FAILED", "/api/models")
        client = {"authorization": f"Bearer {CLIENT_KEY}"}
        refused = anonymous.post("/models/invalid-model-123/start", headers=client, json={})
        assert refused.status_code in (401, 403), refused.text
        _error(
            refused,
            refused.status_code,
            "AUTHORIZATION_FAILED" if refused.status_code == 403 else "AUTHENTICATION_FAILED",
            "/api/models/invalid-model-123/start",
        )
        # A client key may generate, but not on a model that does not exist.
        _error(
            anonymous.post(
                "/models/invalid-model-123/generate",
                headers=client,
                json={"prompt": "Hi"},
            ),
            404,
            "MODEL_NOT_FOUND",
            "/api/models/invalid-model-123/generate",
        )
        _error(anonymous.get("/nothing-here"), 404, "NOT_FOUND", "/api/nothing-here")


def test_token_login(stack004: Stack) -> None:
    url = f"{stack004.edge_url}/api/auth/token"
    wrong = httpx.post(url, json={"username": "admin", "password": "nope"}, timeout=30)
    _error(wrong, 401, "AUTHENTICATION_FAILED", "/api/auth/token")
    nobody = httpx.post(url, json={"username": "eve", "password": "x"}, timeout=30)
    _error(nobody, 401, "AUTHENTICATION_FAILED", "/api/auth/token")
    missing = _error(
        httpx.post(url, json={"username": "admin"}, timeout=30),
        422,
        "INVALID_REQUEST",
        "/api/auth/token",
    )
    assert missing["error"]["details"]["field"] == "password"

    # A client account's token is its key on every surface, admin routes refused.
    token = _login(stack004, "alice", CLIENT_PASSWORD)
    bearer = {"authorization": f"Bearer {token}"}
    with httpx.Client(base_url=stack004.edge_url, headers=bearer, timeout=30) as alice:
        assert alice.get("/v1/models").status_code == 200
        chat = alice.post(
            "/v1/chat/completions",
            json={"model": "mock-chat", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert chat.status_code == 200, chat.text
        refused = alice.get("/api/models")
        assert refused.status_code in (401, 403), refused.text
        assert alice.get("/v1/admin/engines").status_code in (401, 403)
    # Tampered: refused as an invalid credential.
    head, payload, signature = token.split(".")
    forged = f"{head}.{payload}.{signature[:-2]}{'AA' if signature[-2:] != 'AA' else 'BB'}"
    with httpx.Client(base_url=stack004.edge_url, timeout=30) as anyone:
        reply = anyone.get("/v1/models", headers={"authorization": f"Bearer {forged}"})
        assert reply.status_code == 401
        _error(
            anyone.post(
                "/api/models/x/generate",
                headers={"authorization": f"Bearer {forged}"},
                json={"prompt": "hi"},
            ),
            401,
            "AUTHENTICATION_FAILED",
            "/api/models/x/generate",
        )


def test_system_status_and_gpus(stack004: Stack, api: httpx.Client) -> None:
    reply = api.get("/system/status")
    assert reply.status_code == 200, reply.text
    status = reply.json()
    assert status["status"] in ("healthy", "degraded")
    assert status["version"]
    assert isinstance(status["uptime"], int)
    assert status["uptime"] >= 0
    models = status["models"]
    assert {"total", "running", "stopped", "error"} <= set(models)
    assert models["total"] >= models["running"] + models["stopped"] + models["error"]
    resources = status["resources"]
    assert 0 <= resources["cpu_percent"] <= 100
    assert 0 < resources["memory_percent"] <= 100
    assert 0 < resources["disk_percent"] <= 100
    [gpu] = status["gpu"]
    assert gpu["id"] == 0
    assert gpu["name"] == "NVIDIA RTX 4090"
    assert gpu["utilization"] == 78.5
    assert gpu["memory_used"] == 12288
    assert gpu["memory_total"] == 24576
    assert gpu["temperature"] == 65

    detail = api.get("/v1/system/gpu")
    assert detail.status_code == 200, detail.text
    [one] = detail.json()["gpus"]
    assert one["driver_version"] == "535.86.10"
    assert one["cuda_version"] == "12.2"
    assert one["memory_free"] == 12288
    assert one["power_usage"] == 350
    assert one["power_limit"] == 450
    assert all(set(p) == {"pid", "name", "memory_usage"} for p in one["processes"])

    with httpx.Client(base_url=f"{stack004.edge_url}/api", timeout=30) as anonymous:
        _error(anonymous.get("/system/status"), 401, "AUTHENTICATION_FAILED", "/api/system/status")
        _error(anonymous.get("/system/gpu"), 401, "AUTHENTICATION_FAILED", "/api/system/gpu")
