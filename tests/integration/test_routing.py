"""Routing policies against several loopback upstreams that can be told to
slow down, fail, answer 429 or hang: the weighted distribution, failover
inside the deadline, the circuit breaker opening and recovering, labelled
fallbacks, Retry-After, per-deployment limits and budgets."""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeAlias

import grpc
import pytest
import pytest_asyncio

from switchboard.common.v1 import openai_pb2
from switchboard.router.v1 import router_pb2, router_pb2_grpc
from switchboard_common.server import CHANNEL_OPTIONS
from switchboard_common.settings import Settings
from tests.conftest import UPSTREAM_KEY, Loopbacks, eventually, loopback_provider
from tests.support.grpc_errors import reason
from tests.support.inprocess import services
from tests.support.openai_upstream import Behaviour, OpenAIUpstream

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

KEY = UPSTREAM_KEY
ADMIN_KEY = "routing-test-admin"
Upstreams = tuple[OpenAIUpstream, OpenAIUpstream, OpenAIUpstream]


@pytest_asyncio.fixture
async def upstreams(loopbacks: Loopbacks) -> Upstreams:
    return (await loopbacks.openai(), await loopbacks.openai(), await loopbacks.openai())


def _providers(upstreams: Upstreams, timeout_s: float = 1.0) -> list[dict[str, Any]]:
    return [
        loopback_provider(name, up, "ROUTING_UPSTREAM_KEY", timeout_s=timeout_s)
        for name, up in zip(("a", "b", "c"), upstreams, strict=True)
    ]


def _deployment(provider: str, **extra: Any) -> dict[str, Any]:
    return {"provider": provider, "model": f"up-{provider}", **extra}


Router: TypeAlias = "router_pb2_grpc.RouterServiceAsyncStub"


@pytest_asyncio.fixture
async def start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Callable[..., Awaitable[Router]]]:
    """start(config, **env) → a router stub over real registry/provider/router servers."""
    monkeypatch.setenv("ROUTING_UPSTREAM_KEY", KEY)
    monkeypatch.setenv("SWITCHBOARD_ADMIN_KEY", ADMIN_KEY)
    monkeypatch.setenv("SWITCHBOARD_ROUTING_SEED", "20261124")
    stack: list[Any] = []

    async def run(
        config: dict[str, Any], names: tuple[str, ...] = ("provider", "router"), **env: str
    ) -> Router:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        context = services(config, tmp_path, monkeypatch, names)
        settings: Settings = await context.__aenter__()
        channel = grpc.aio.insecure_channel(settings.address("router"), options=CHANNEL_OPTIONS)
        stack.append((context, channel))
        return router_pb2_grpc.RouterServiceStub(channel)

    yield run
    for context, channel in reversed(stack):
        await channel.close()
        await context.__aexit__(None, None, None)


def _chat(model: str) -> router_pb2.CreateChatCompletionRequest:
    params = openai_pb2.ChatCompletionParams(model=model)
    params.messages.add(role="user").content.string_value = "route me"
    return router_pb2.CreateChatCompletionRequest(params=params)


async def _served(router: Router, model: str, deadline_s: float | None = None) -> dict[str, str]:
    """The trailing metadata naming what served the call."""
    call = router.CreateChatCompletion(_chat(model), timeout=deadline_s)
    await call
    return {k: v for k, v in (await call.trailing_metadata() or ()) if isinstance(v, str)}


async def test_weighted_distribution_matches_the_weights(
    upstreams: Upstreams, start: Callable[..., Awaitable[Router]]
) -> None:
    weights = {"a": 1, "b": 2, "c": 7}
    router = await start(
        {
            "providers": _providers(upstreams),
            "models": [
                {"name": "m", "deployments": [_deployment(p, weight=w) for p, w in weights.items()]}
            ],
        }
    )
    n = 600
    served = Counter([(await _served(router, "m"))["x-switchboard-deployment"] for _ in range(n)])
    expected = {f"m.{p}.up-{p}": n * w / sum(weights.values()) for p, w in weights.items()}
    chi2 = sum((served[d] - e) ** 2 / e for d, e in expected.items())
    # The 0.999 quantile of chi-square with 2 degrees of freedom.
    assert chi2 < 13.816, (served, chi2)
    assert sum(served.values()) == n


async def test_round_robin_and_priority_strategies(
    upstreams: Upstreams, start: Callable[..., Awaitable[Router]]
) -> None:
    router = await start(
        {
            "providers": _providers(upstreams),
            "models": [
                {
                    "name": "rr",
                    "strategy": "round_robin",
                    "deployments": [_deployment("a", weight=2), _deployment("b", weight=1)],
                },
                {
                    "name": "prio",
                    "strategy": "priority",
                    "deployments": [_deployment("a", priority=1), _deployment("b", priority=0)],
                },
            ],
        }
    )
    rr = [(await _served(router, "rr"))["x-switchboard-deployment"] for _ in range(6)]
    assert rr == ["rr.a.up-a", "rr.b.up-b", "rr.a.up-a"] * 2
    prio = {(await _served(router, "prio"))["x-switchboard-deployment"] for _ in range(5)}
    assert prio == {"prio.b.up-b"}


@pytest.mark.serial  # wall-clock bounds of a second or two
async def test_failover_to_the_next_deployment_within_the_deadline(
    upstreams: Upstreams, start: Callable[..., Awaitable[Router]]
) -> None:
    a, b, _ = upstreams
    a.behaviour = Behaviour(mode="hang")
    router = await start(
        {
            "providers": _providers(upstreams, timeout_s=0.4),
            "models": [
                {
                    "name": "m",
                    "strategy": "priority",
                    "deployments": [_deployment("a", priority=0), _deployment("b", priority=1)],
                }
            ],
        },
        SWITCHBOARD_BREAKER_CONSECUTIVE_FAILURES="100",
    )
    began = time.monotonic()
    served = await _served(router, "m", deadline_s=2.0)
    took = time.monotonic() - began
    assert served["x-switchboard-deployment"] == "m.b.up-b"
    assert took < 2.0
    assert len(b.requests) == 1

    # With every deployment hung, the caller's deadline still holds.
    b.behaviour = Behaviour(mode="hang")
    began = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await router.CreateChatCompletion(_chat("m"), timeout=0.6)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - began < 1.0


async def test_breaker_opens_on_failures_then_recovers(
    upstreams: Upstreams, start: Callable[..., Awaitable[Router]]
) -> None:
    a, _, _ = upstreams
    a.behaviour = Behaviour(mode="status", status=500)
    router = await start(
        {
            "providers": _providers(upstreams),
            "models": [
                {
                    "name": "m",
                    "strategy": "priority",
                    "deployments": [_deployment("a", priority=0), _deployment("b", priority=1)],
                }
            ],
        },
        SWITCHBOARD_BREAKER_CONSECUTIVE_FAILURES="3",
        SWITCHBOARD_BREAKER_COOLDOWN_S="0.5",
    )
    admin = (("authorization", f"Bearer {ADMIN_KEY}"),)

    async def state() -> int:
        health = await router.GetRoutingHealth(router_pb2.GetRoutingHealthRequest(), metadata=admin)
        return {d.deployment_id: d.breaker for d in health.deployments}["m.a.up-a"]

    for _ in range(3):
        assert (await _served(router, "m"))["x-switchboard-deployment"] == "m.b.up-b"
    assert len(a.requests) == 3
    assert await state() == router_pb2.DeploymentHealth.BREAKER_STATE_OPEN
    # Open: the failing deployment is not even tried.
    for _ in range(5):
        assert (await _served(router, "m"))["x-switchboard-deployment"] == "m.b.up-b"
    assert len(a.requests) == 3

    a.behaviour = Behaviour()

    # The cooldown is a duration: poll the reported state, bounded.
    async def half_open() -> bool:
        return await state() == router_pb2.DeploymentHealth.BREAKER_STATE_HALF_OPEN

    await eventually(half_open, timeout=5)
    # The half-open probe succeeds, and the deployment is back.
    assert (await _served(router, "m"))["x-switchboard-deployment"] == "m.a.up-a"
    assert await state() == router_pb2.DeploymentHealth.BREAKER_STATE_CLOSED

    anonymous = await _error(router.GetRoutingHealth(router_pb2.GetRoutingHealthRequest()))
    assert anonymous.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_fallback_model_serves_and_is_labelled(
    upstreams: Upstreams, start: Callable[..., Awaitable[Router]]
) -> None:
    a, _, _ = upstreams
    a.behaviour = Behaviour(mode="status", status=503)
    router = await start(
        {
            "providers": _providers(upstreams),
            "models": [
                {"name": "main", "deployments": [_deployment("a")], "fallbacks": ["spare"]},
                {"name": "spare", "deployments": [_deployment("b")]},
            ],
        }
    )
    call = router.CreateChatCompletion(_chat("main"))
    answer = await call
    served = dict(await call.trailing_metadata() or ())
    assert served["x-switchboard-model"] == "spare"
    assert served["x-switchboard-fallback-from"] == "main"
    # The caller sees the model it asked for in the body, like every OpenAI answer.
    assert answer.model == "main"
    initial = dict(await call.initial_metadata() or ())
    assert initial["x-switchboard-model"] == "spare"


async def test_retry_after_is_honoured_within_the_deadline(
    upstreams: Upstreams, start: Callable[..., Awaitable[Router]]
) -> None:
    a, _, _ = upstreams
    a.behaviour = Behaviour(mode="status", status=429, retry_after=0.3)
    router = await start(
        {
            "providers": _providers(upstreams),
            "models": [{"name": "m", "deployments": [_deployment("a")]}],
        },
        SWITCHBOARD_BREAKER_CONSECUTIVE_FAILURES="100",
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await router.CreateChatCompletion(_chat("m"), timeout=5)
    assert reason(err.value) == "UPSTREAM_RATE_LIMITED"
    # Three attempts, each after the upstream's Retry-After.
    arrivals = [r.received_at for r in a.requests]
    assert len(arrivals) == 3
    assert all(later - earlier >= 0.3 for earlier, later in itertools.pairwise(arrivals))

    # No retry that would outlive the caller's deadline.
    a.requests.clear()
    with pytest.raises(grpc.aio.AioRpcError):
        await router.CreateChatCompletion(_chat("m"), timeout=0.2)
    assert len(a.requests) == 1


async def test_invalid_requests_are_never_retried(
    upstreams: Upstreams, start: Callable[..., Awaitable[Router]]
) -> None:
    a, b, _ = upstreams
    a.behaviour = Behaviour(mode="status", status=400)
    router = await start(
        {
            "providers": _providers(upstreams),
            "models": [
                {
                    "name": "m",
                    "strategy": "priority",
                    "deployments": [_deployment("a", priority=0), _deployment("b", priority=1)],
                }
            ],
        }
    )
    error = await _error(router.CreateChatCompletion(_chat("m")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(a.requests) == 1
    assert not b.requests


async def test_deployment_rpm_limit_moves_traffic_to_the_next_deployment(
    upstreams: Upstreams, start: Callable[..., Awaitable[Router]]
) -> None:
    router = await start(
        {
            "providers": _providers(upstreams),
            "models": [
                {
                    "name": "m",
                    "strategy": "priority",
                    "deployments": [
                        _deployment("a", priority=0, rpm=2),
                        _deployment("b", priority=1, rpm=1),
                    ],
                }
            ],
        }
    )
    served = [(await _served(router, "m"))["x-switchboard-deployment"] for _ in range(3)]
    assert served == ["m.a.up-a", "m.a.up-a", "m.b.up-b"]
    # Every deployment is at its limit: 429 with Retry-After.
    limited = await _error(router.CreateChatCompletion(_chat("m")))
    assert limited.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reason(limited) == "RATE_LIMITED"


async def test_a_spent_key_budget_is_refused(
    upstreams: Upstreams, start: Callable[..., Awaitable[Router]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROUTING_TEAM_KEY", "routing-team-key")
    monkeypatch.setenv("KAFKA_BOOTSTRAP", "127.0.0.1:9")  # no broker: spend stays in the outbox
    router = await start(
        {
            "providers": _providers(upstreams),
            "models": [
                {
                    "name": "pricey",
                    "deployments": [_deployment("a")],
                    "pricing": {"input_per_1k": 1000.0, "output_per_1k": 1000.0},
                }
            ],
            "keys": [{"name": "team", "key_env": "ROUTING_TEAM_KEY", "budget": 1.0}],
        },
        names=("provider", "usage", "router"),
    )
    team = (("authorization", "Bearer routing-team-key"),)
    await router.CreateChatCompletion(_chat("pricey"), metadata=team)
    refused = await _error(router.CreateChatCompletion(_chat("pricey"), metadata=team))
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reason(refused) == "BUDGET_EXCEEDED"
    assert "budget of 1 USD" in (refused.details() or "")
    assert len(upstreams[0].requests) == 1


async def _error(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value
