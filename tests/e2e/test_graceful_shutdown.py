"""SIGTERM under load: every unary call already in flight finishes, streams in
flight finish, and each call is counted exactly once. The service drains (NOT
SERVING, then stop(grace)) and comes back with `restart`."""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from switchboard_stack.harness import Stack, running_stack
from tests.conftest import UPSTREAM_KEY, eventually
from tests.support.openai_upstream import Behaviour, OpenAIUpstream

# Faults, restarts and wall-clock bounds: not beside another stack.
pytestmark = [pytest.mark.e2e, pytest.mark.serial]

KEY = UPSTREAM_KEY
IN_FLIGHT = 8


@pytest.fixture(scope="module")
def stack(upstream: OpenAIUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    config = {
        "providers": [
            {
                "name": "loopback",
                "kind": "openai",
                "base_url": upstream.base_url,
                "api_key_env": "GRACEFUL_E2E_KEY",
            }
        ],
        "models": [{"name": "slow", "deployments": [{"provider": "loopback", "model": "up"}]}],
    }
    with running_stack(
        config, tmp_path_factory.mktemp("graceful"), {"GRACEFUL_E2E_KEY": KEY}
    ) as running:
        yield running


def _call(stack: Stack, i: int) -> str:
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


def _counted(stack: Stack) -> int:
    today = dt.datetime.now(dt.UTC).date().isoformat()
    reply = httpx.get(f"{stack.edge_url}/v1/usage/summary", params={"start": today, "end": today})
    reply.raise_for_status()
    return int(reply.json()["total_requests"])


@pytest.mark.parametrize("component", ["router", "provider", "usage", "registry"])
def test_sigterm_loses_no_call_in_flight(
    stack: Stack, upstream: OpenAIUpstream, component: str
) -> None:
    before = len([c for c in upstream.served if c.completed])
    # Slow enough that every call is still running when the signal lands.
    upstream.behaviour = Behaviour(mode="slow", first_byte_delay_s=0.8, chunk_delay_s=0.05)
    with concurrent.futures.ThreadPoolExecutor(IN_FLIGHT) as pool:
        calls = [pool.submit(_call, stack, i) for i in range(IN_FLIGHT)]
        assert upstream.wait_until(lambda: upstream.in_flight >= IN_FLIGHT, within_s=10)
        began = time.monotonic()
        stack.restart(component)  # SIGTERM, wait for the drain and exit, start again
        answers = [c.result(timeout=30) for c in calls]
    assert all(a.startswith("echo: in flight") for a in answers), answers
    assert time.monotonic() - began < 15
    upstream.behaviour = Behaviour()
    assert _call(stack, 0).startswith("echo:")
    served = len([c for c in upstream.served if c.completed])
    assert served == before + IN_FLIGHT + 1
    eventually(lambda: _counted(stack) >= served, timeout=30, interval=0.2, what="calls counted")
    assert _counted(stack) == served


def _stream(stack: Stack, i: int) -> bool:
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


def test_router_killed_under_load_counts_every_answered_call(
    stack: Stack, upstream: OpenAIUpstream
) -> None:
    """kill -9, not SIGTERM: calls in flight break (the client sees it), but
    every call that was answered in full is counted, and none twice."""
    counted_before = _counted(stack)
    completed_before = len([c for c in upstream.served if c.completed])
    upstream.behaviour = Behaviour(mode="slow", chunk_delay_s=0.03)
    calls = 40
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = [pool.submit(_stream, stack, i) for i in range(calls)]
        assert upstream.wait_until(
            lambda: len([c for c in upstream.served if c.completed]) >= completed_before + 8,
            within_s=20,
        )
        stack.restart("router", kill=True)
        answered = sum(r.result(timeout=60) for r in results)
    upstream.behaviour = Behaviour()
    completed = len([c for c in upstream.served if c.completed]) - completed_before
    assert 8 <= answered < calls, "the crash should have cut some calls off, not all"
    eventually(
        lambda: _counted(stack) - counted_before >= answered,
        timeout=30,
        interval=0.2,
        what="answered calls counted",
    )
    counted = _counted(stack) - counted_before
    # Every answered call is counted; nothing is counted that the upstream did not serve.
    assert answered <= counted <= completed
