"""The SIGTERM and SIGKILL drills, run on a stack whose config serves the "slow"
model from the loopback upstream: with one process per service
(tests/e2e/test_graceful_shutdown.py) and with SWITCHBOARD_WORKERS=2
(tests/e2e/test_workers.py). Each checks that the calls that were answered are
counted exactly once, and nothing the upstream did not serve."""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import time
from collections.abc import Callable
from typing import Any

import grpc
import httpx
import openai

from switchboard.router.v1 import router_pb2, router_pb2_grpc
from switchboard_stack.harness import Stack
from tests.conftest import eventually
from tests.support.openai_upstream import Behaviour, OpenAIUpstream

IN_FLIGHT = 8


def drill_config(upstream: OpenAIUpstream, key_env: str) -> dict[str, Any]:
    """The drills' config: the "slow" model on the loopback upstream, whose key
    is in the environment variable `key_env`."""
    return {
        "providers": [
            {
                "name": "loopback",
                "kind": "openai",
                "base_url": upstream.base_url,
                "api_key_env": key_env,
            }
        ],
        "models": [{"name": "slow", "deployments": [{"provider": "loopback", "model": "up"}]}],
    }


def call(stack: Stack, i: int) -> str:
    """One call through the edge (odd i: streamed); its text."""
    with openai.OpenAI(
        base_url=f"{stack.edge_url}/v1", api_key="x", max_retries=0, timeout=30
    ) as client:
        messages: Any = [{"role": "user", "content": f"in flight {i}"}]
        if i % 2:
            return "".join(
                chunk.choices[0].delta.content or ""
                for chunk in client.chat.completions.create(
                    model="slow", messages=messages, stream=True
                )
                if chunk.choices
            )
        answer = client.chat.completions.create(model="slow", messages=messages)
        return answer.choices[0].message.content or ""


def counted(stack: Stack) -> int:
    """Requests the usage service has stored today."""
    today = dt.datetime.now(dt.UTC).date().isoformat()
    reply = httpx.get(f"{stack.edge_url}/v1/usage/summary", params={"start": today, "end": today})
    reply.raise_for_status()
    return int(reply.json()["total_requests"])


def completed(upstream: OpenAIUpstream) -> int:
    return len([c for c in upstream.served if c.completed])


def settled(upstream: OpenAIUpstream) -> int:
    """Calls the upstream completed, once none is in flight there (a stream is
    marked completed on the upstream's thread a moment after the client's last read)."""
    assert upstream.wait_until(lambda: upstream.in_flight == 0, within_s=10)
    return completed(upstream)


def stream(stack: Stack, i: int) -> bool:
    """One streamed call; True only when it ended with [DONE] (an answer the
    client can trust), False when it broke off."""
    body = {
        "model": "slow",
        "messages": [{"role": "user", "content": f"crash {i}"}],
        "stream": True,
    }
    try:
        with httpx.stream(
            "POST", f"{stack.edge_url}/v1/chat/completions", json=body, timeout=30
        ) as reply:
            if reply.status_code != 200:
                return False
            return "data: [DONE]" in "".join(reply.iter_text())
    except httpx.HTTPError:
        return False


def router_sees_the_suite(stack: Stack, connections: int = 12) -> None:
    """Wait until the router (each of its workers: a connection of its own each,
    spread by the kernel) reaches the provider and the usage service again. A
    restart returns once the restarted service answers; the router's channel to
    it may still be in its reconnect backoff (up to 2 s) for a moment."""

    def ask() -> bool:
        for _ in range(connections):
            with grpc.insecure_channel(
                stack.router_address, options=[("grpc.use_local_subchannel_pool", 1)]
            ) as channel:
                health = router_pb2_grpc.RouterServiceStub(channel).GetHealth(
                    router_pb2.GetHealthRequest(), timeout=5
                )
            for component in ("provider", "usage"):
                assert health.components[component] == "ok", dict(health.components)
        return True

    eventually(ask, timeout=30, interval=0.2, what="the router reaches the suite again")


def sigterm_drill(stack: Stack, upstream: OpenAIUpstream, component: str) -> None:
    """SIGTERM `component` with IN_FLIGHT slow calls in flight: every call
    completes, within the drain, and each is counted once."""
    router_sees_the_suite(stack)
    before = completed(upstream)
    # Slow enough that every call is still running when the signal lands.
    upstream.behaviour = Behaviour(mode="slow", first_byte_delay_s=0.8, chunk_delay_s=0.05)
    with concurrent.futures.ThreadPoolExecutor(IN_FLIGHT) as pool:
        calls = [pool.submit(call, stack, i) for i in range(IN_FLIGHT)]
        assert upstream.wait_until(lambda: upstream.in_flight >= IN_FLIGHT, within_s=10)
        began = time.monotonic()
        stack.restart(component)  # SIGTERM, wait for the drain and exit, start again
        answers = [c.result(timeout=30) for c in calls]
    assert all(a.startswith("echo: in flight") for a in answers), answers
    assert time.monotonic() - began < 15
    upstream.behaviour = Behaviour()
    router_sees_the_suite(stack)
    assert call(stack, 0).startswith("echo:")
    served = settled(upstream)
    assert served == before + IN_FLIGHT + 1
    eventually(lambda: counted(stack) >= served, timeout=30, interval=0.2, what="calls counted")
    assert counted(stack) == served


def sigkill_drill(
    stack: Stack,
    upstream: OpenAIUpstream,
    kill: Callable[[], None],
    *,
    must_cut: bool = True,
    router_survives: bool = False,
) -> None:
    """`kill` (a SIGKILL of something on the path) under load: calls in flight
    may break (the client sees it), but every call answered in full is counted,
    and nothing the upstream did not serve. must_cut=False where the process
    killed may have had no call in flight (one of several workers: the kernel
    decides which connections it holds). router_survives: a provider was
    killed, and the router counts the attempts it cut (estimated from what it
    forwarded, switchboard_router/cut_short.py), so the bound is the calls that
    reached the upstream, not the ones it completed."""
    router_sees_the_suite(stack)
    counted_before = counted(stack)
    completed_before = completed(upstream)
    reached_before = len(upstream.served)
    upstream.behaviour = Behaviour(mode="slow", chunk_delay_s=0.03)
    calls = 40
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = [pool.submit(stream, stack, i) for i in range(calls)]
        eventually(
            lambda: sum(r.done() and r.result() for r in results) >= 8,
            timeout=20,
            what="8 calls answered before the crash",
        )
        kill()
        answered = sum(r.result(timeout=60) for r in results)
    upstream.behaviour = Behaviour()
    served = settled(upstream) - completed_before
    if router_survives:
        served = len(upstream.served) - reached_before
    assert 8 <= answered <= calls, answered
    assert answered < calls or not must_cut, "the crash should have cut some calls off, not all"
    eventually(
        lambda: counted(stack) - counted_before >= answered,
        timeout=30,
        interval=0.2,
        what="answered calls counted",
    )
    # Every answered call is counted; nothing is counted that the upstream did not serve.
    now = counted(stack) - counted_before
    assert answered <= now <= served, f"answered {answered}, counted {now}, served {served}"
