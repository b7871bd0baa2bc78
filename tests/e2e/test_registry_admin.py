"""End to end: the admin API at the edge changes what the router serves, live.

A model created over HTTP is callable within 1 s, switching it offline makes
calls fail within 1 s, keys created and revoked over HTTP take effect as fast,
and killing the registry does not interrupt serving."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest

from switchboard_stack.harness import Stack, running_stack
from tests.conftest import eventually

pytestmark = pytest.mark.e2e

ADMIN_KEY = "e2e-admin-key-0123456789"
OPS_KEY = "e2e-ops-key-0123456789"
LIVE_S = 1.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    config = {
        "providers": [{"name": "mock", "kind": "mock"}],
        "models": [
            {"name": "mock-chat", "deployments": [{"provider": "mock", "model": "mock-echo"}]},
        ],
        "keys": [{"name": "ops", "key_env": "E2E_OPS_KEY"}],
    }
    env = {"SWITCHBOARD_ADMIN_KEY": ADMIN_KEY, "E2E_OPS_KEY": OPS_KEY}
    with running_stack(config, tmp_path_factory.mktemp("admin"), env) as running:
        yield running


@pytest.fixture(scope="module")
def admin(stack: Stack) -> Iterator[httpx.Client]:
    headers = {"authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(base_url=stack.edge_url, headers=headers, timeout=10) as client:
        yield client


_CLIENTS: dict[str, openai.OpenAI] = {}


@pytest.fixture(scope="module", autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    for client in _CLIENTS.values():
        client.close()
    _CLIENTS.clear()


def _client(stack: Stack, key: str = OPS_KEY) -> openai.OpenAI:
    """One client per key for the module: each holds a connection pool."""
    if key not in _CLIENTS:
        _CLIENTS[key] = openai.OpenAI(
            base_url=f"{stack.edge_url}/v1", api_key=key, max_retries=0, timeout=10
        )
    return _CLIENTS[key]


def _chat(client: openai.OpenAI, model: str) -> str:
    answer = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}]
    )
    return answer.choices[0].message.content or ""


def _within(deadline_s: float, check: Callable[[], bool]) -> float:
    """Seconds until check() held (polling every 20 ms), failing after deadline_s."""
    start = time.monotonic()
    eventually(check, timeout=deadline_s, interval=0.02)
    return time.monotonic() - start


def _ok(call: Callable[[], Any]) -> bool:
    try:
        call()
    except openai.APIStatusError:
        return False
    return True


def _status(call: Callable[[], Any]) -> int | None:
    try:
        call()
    except openai.APIStatusError as err:
        return err.status_code
    return None


def test_admin_api_needs_the_admin_key(stack: Stack) -> None:
    anonymous = httpx.get(f"{stack.edge_url}/v1/admin/models", timeout=10)
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["type"] == "authentication_error"
    client_key = httpx.get(
        f"{stack.edge_url}/v1/admin/models",
        headers={"authorization": f"Bearer {OPS_KEY}"},
        timeout=10,
    )
    assert client_key.status_code == 401


def test_a_model_created_over_http_is_callable_within_a_second(
    stack: Stack, admin: httpx.Client
) -> None:
    client = _client(stack)
    created = admin.post(
        "/v1/admin/models",
        json={"name": "hot-model", "description": "added live", "tags": ["demo"]},
    )
    assert created.status_code == 200, created.text
    assert created.json()["model"]["online"] is True
    deployment = admin.post(
        "/v1/admin/models/hot-model/deployments",
        json={"provider": "mock", "upstream_model": "mock-echo"},
    )
    assert deployment.status_code == 200, deployment.text
    took = _within(5, lambda: _ok(lambda: _chat(client, "hot-model")))
    assert took < LIVE_S, f"callable after {took:.3f}s"
    assert _chat(client, "hot-model").startswith("[mock]")
    details = client.models.retrieve("hot-model").model_dump()
    assert details["switchboard"]["description"] == "added live"

    offline = admin.patch("/v1/admin/models/hot-model", json={"online": False})
    assert offline.status_code == 200, offline.text
    assert offline.json()["model"]["online"] is False
    took = _within(5, lambda: _status(lambda: _chat(client, "hot-model")) == 404)
    assert took < LIVE_S, f"refused after {took:.3f}s"
    with pytest.raises(openai.NotFoundError, match="offline"):
        _chat(client, "hot-model")
    assert "hot-model" not in [m.id for m in client.models.list()]


def test_conflicts_and_in_use_deletes_are_refused_clearly(admin: httpx.Client) -> None:
    duplicate = admin.post(
        "/v1/admin/providers", json={"name": "mock", "kind": "PROVIDER_KIND_MOCK"}
    )
    assert duplicate.status_code == 409
    in_use = admin.delete("/v1/admin/providers/mock")
    assert in_use.status_code == 400
    assert "used by" in in_use.json()["error"]["message"]
    invalid = admin.post("/v1/admin/models", json={"name": "bad/name"})
    assert invalid.status_code == 400
    assert invalid.json()["error"]["param"] == "model.name"


def test_keys_from_the_admin_api_allow_deny_and_revoke(stack: Stack, admin: httpx.Client) -> None:
    created = admin.post("/v1/admin/keys", json={"name": "team-a", "models": ["mock-chat"]})
    assert created.status_code == 200, created.text
    secret = created.json()["secret"]
    team = _client(stack, secret)
    took = _within(5, lambda: _ok(lambda: _chat(team, "mock-chat")))
    assert took < LIVE_S
    assert [m.id for m in team.models.list()] == ["mock-chat"]
    admin.post("/v1/admin/models", json={"name": "other-model"}).raise_for_status()
    admin.post(
        "/v1/admin/models/other-model/deployments",
        json={"provider": "mock", "upstream_model": "mock-echo"},
    ).raise_for_status()
    _within(5, lambda: _ok(lambda: _chat(_client(stack), "other-model")))
    assert _status(lambda: _chat(team, "other-model")) == 403

    revoked = admin.post("/v1/admin/keys/team-a:revoke", json={})
    assert revoked.status_code == 200
    assert revoked.json()["key"]["revoked"] is True
    took = _within(5, lambda: _status(lambda: _chat(team, "mock-chat")) == 401)
    assert took < LIVE_S
    listed = admin.get("/v1/admin/keys", params={"include_revoked": "true"}).json()
    assert secret not in str(listed)


def test_killing_the_registry_does_not_interrupt_serving(stack: Stack, admin: httpx.Client) -> None:
    client = _client(stack)
    os.kill(stack.pids()["registry"], signal.SIGKILL)
    for _ in range(20):
        assert _chat(client, "mock-chat").startswith("[mock]")
    stack.restart("registry")
    for _ in range(5):
        assert _chat(client, "mock-chat").startswith("[mock]")
    # Routers reconnect and follow changes made after the restart.
    admin.post("/v1/admin/models", json={"name": "after-restart"}).raise_for_status()
    admin.post(
        "/v1/admin/models/after-restart/deployments",
        json={"provider": "mock", "upstream_model": "mock-echo"},
    ).raise_for_status()
    _within(10, lambda: _ok(lambda: _chat(client, "after-restart")))
