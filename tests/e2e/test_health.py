"""End to end: GET /healthz tells the truth. It names each component with its
state, turns 503 within 5 s of the provider dying, and 200 again once it is
back; the router's readiness (grpc.health.v1) follows, its liveness does not."""

from __future__ import annotations

import importlib.metadata
import os
import signal
import time
from collections.abc import Iterator

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from switchboard.router.v1 import router_pb2
from switchboard_stack.harness import Stack, running_stack

pytestmark = pytest.mark.e2e

DOWN_WITHIN_S = 5.0
BACK_WITHIN_S = 10.0
ROUTER = router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    config = {
        "providers": [{"name": "mock", "kind": "mock"}],
        "models": [
            {"name": "mock-chat", "deployments": [{"provider": "mock", "model": "mock-echo"}]},
        ],
    }
    with running_stack(config, tmp_path_factory.mktemp("health")) as running:
        yield running


def _health(stack: Stack) -> httpx.Response:
    return httpx.get(f"{stack.edge_url}/healthz", timeout=10)


def _until_status(
    stack: Stack, status: int, within_s: float, says: str | None = None
) -> tuple[float, httpx.Response]:
    """Seconds until /healthz answered `status` (and, given `says`, that body
    status), polled every 50 ms, failing past within_s."""
    start = time.monotonic()
    while True:
        reply = _health(stack)
        elapsed = time.monotonic() - start
        if reply.status_code == status and (says is None or reply.json()["status"] == says):
            return elapsed, reply
        assert elapsed < within_s, (
            f"/healthz still {reply.status_code} after {elapsed:.1f}s: {reply.text}"
        )
        time.sleep(0.05)


def _router_health(stack: Stack, service: str) -> int:
    with grpc.insecure_channel(stack.router_address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
    status: int = reply.status
    return status


def test_healthz_names_every_component(stack: Stack) -> None:
    # A component still starting (on a loaded machine, for seconds after the
    # stack is up) is "degraded" with 200: wait until every one is ok.
    _, reply = _until_status(stack, 200, BACK_WITHIN_S, says="ok")
    body = reply.json()
    assert body["version"] == importlib.metadata.version("switchboard")
    components = body["components"]
    # The engine joins these where the stack runs one.
    assert {"router", "provider", "registry", "usage", "gpu"} <= set(components)
    assert all(state == "ok" for state in components.values()), components


def test_provider_death_turns_healthz_503_and_back(stack: Stack) -> None:
    _until_status(stack, 200, BACK_WITHIN_S)
    os.kill(stack.pids()["provider"], signal.SIGKILL)
    took, down = _until_status(stack, 503, DOWN_WITHIN_S)
    body = down.json()
    assert body["status"] == "unavailable"
    assert body["components"]["provider"].startswith("down: ")
    assert body["components"]["registry"] == "ok"
    assert down.headers["content-type"].startswith("application/json")
    serving = health_pb2.HealthCheckResponse.SERVING
    # Liveness stays; readiness follows what serving needs (within a probe period).
    assert _router_health(stack, "") == serving
    deadline = time.monotonic() + DOWN_WITHIN_S
    while _router_health(stack, ROUTER) == serving:
        assert time.monotonic() < deadline, "the router stayed ready without a provider"
        time.sleep(0.05)

    stack.restart("provider")
    _, back = _until_status(stack, 200, BACK_WITHIN_S)
    assert back.json()["status"] == "ok"
    chat = httpx.post(
        f"{stack.edge_url}/v1/chat/completions",
        json={"model": "mock-chat", "messages": [{"role": "user", "content": "back?"}]},
        timeout=10,
    )
    assert chat.status_code == 200, chat.text
    assert took < DOWN_WITHIN_S
