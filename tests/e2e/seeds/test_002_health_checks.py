"""Seed API 002's model status with active health checks: with
health_check_interval set (PUT /config/load-balancing), every deployment is
probed without any client traffic; a failing upstream is found unhealthy by the
probes alone, and found healthy again once it recovers."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from switchboard_stack.harness import Stack, running_stack
from tests.e2e.seeds.keys import ADMIN_KEY, PROVIDER_KEY
from tests.support.openai_upstream import Behaviour, OpenAIUpstream, run_in_thread

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def probed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, OpenAIUpstream]]:
    with run_in_thread(OpenAIUpstream(api_key=PROVIDER_KEY)) as upstream:
        config = {
            "providers": [
                {
                    "name": "loopback",
                    "kind": "openai",
                    "base_url": upstream.base_url,
                    "api_key_env": "SEEDS_PROVIDER_KEY",
                    "timeout_s": 2,
                }
            ],
            "models": [
                {"name": "probed", "deployments": [{"provider": "loopback", "model": "up"}]}
            ],
        }
        env = {
            "SEEDS_PROVIDER_KEY": PROVIDER_KEY,
            "SWITCHBOARD_ADMIN_KEY": ADMIN_KEY,
            "SWITCHBOARD_MAX_ATTEMPTS": "1",
            "SWITCHBOARD_BREAKER_CONSECUTIVE_FAILURES": "2",
            "SWITCHBOARD_BREAKER_COOLDOWN_S": "1",
        }
        path: Path = tmp_path_factory.mktemp("probes")
        with running_stack(config, path, env) as stack:
            yield stack, upstream


def _until(check: Callable[[], bool], within_s: float = 20.0) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.2)


def test_probes_find_failures_and_recoveries_without_traffic(
    probed: tuple[Stack, OpenAIUpstream],
) -> None:
    stack, upstream = probed
    api = f"{stack.edge_url}/api/llm"
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}

    def status() -> dict[str, Any]:
        reply = httpx.get(f"{api}/models/probed/status")
        assert reply.status_code == 200, reply.text
        body: dict[str, Any] = reply.json()
        return body

    assert upstream.served == []
    reply = httpx.put(
        f"{api}/config/load-balancing", json={"health_check_interval": 1}, headers=admin
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["health_check_interval"] == 1
    # Probes arrive with no client call: "ping", one token at most.
    _until(lambda: len(upstream.served) >= 2)
    probe = upstream.requests[-1].json
    assert isinstance(probe, dict)
    assert probe["messages"] == [{"role": "user", "content": "ping"}]
    assert probe["max_tokens"] == 1
    body = status()
    assert body["health"] == "healthy"
    checked = dt.datetime.strptime(body["last_check"], "%Y-%m-%dT%H:%M:%SZ")
    age = dt.datetime.now(dt.UTC).replace(tzinfo=None) - checked
    assert age.total_seconds() < 5

    # The upstream fails: the probes alone open the breaker.
    upstream.behaviour = Behaviour(mode="status", status=500)
    _until(lambda: status()["health"] == "unhealthy")
    assert status()["status"] == "unavailable"
    # It recovers: after the cooldown, a probe is the half-open trial and closes it.
    upstream.behaviour = Behaviour()
    _until(lambda: status()["health"] == "healthy")
    assert status()["status"] == "available"

    # Probes are accounted like any attempt.
    today = dt.datetime.now(dt.UTC).date().isoformat()

    def counted() -> bool:
        reply = httpx.get(f"{api}/stats/usage", params={"start_date": today})
        return bool(reply.json()["total_requests"] >= 2)

    _until(counted)
    reply = httpx.put(
        f"{api}/config/load-balancing", json={"health_check_interval": 0}, headers=admin
    )
    assert reply.status_code == 200, reply.text
