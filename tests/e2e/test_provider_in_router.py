"""SWITCHBOARD_PROVIDER_PLACEMENT=router: the router calls the upstreams itself,
through the provider's own code in its process. Through the edge with the
official SDK, answers, streams and accounting are as with the provider service
(which runs, but no call reaches it), and the SIGTERM and SIGKILL drills of the
router (tests/support/drills.py) hold: each answered call is counted once, and
nothing the upstream did not serve."""

from __future__ import annotations

import os
import signal
import urllib.request
from collections.abc import Iterator

import grpc
import pytest

from switchboard.router.v1 import router_pb2, router_pb2_grpc
from switchboard_stack.harness import Stack, running_stack
from tests.conftest import UPSTREAM_KEY, eventually
from tests.support.drills import call, counted, drill_config, sigkill_drill, sigterm_drill
from tests.support.openai_upstream import OpenAIUpstream

# Faults, restarts and wall-clock bounds: not beside another stack.
pytestmark = [pytest.mark.e2e, pytest.mark.serial]


@pytest.fixture(scope="module")
def stack(upstream: OpenAIUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"IN_ROUTER_E2E_KEY": UPSTREAM_KEY, "SWITCHBOARD_PROVIDER_PLACEMENT": "router"}
    config = drill_config(upstream, "IN_ROUTER_E2E_KEY")
    with running_stack(config, tmp_path_factory.mktemp("in-router"), env) as running:
        yield running


def provider_calls(stack: Stack) -> list[str]:
    """The provider service's own metric lines for generation calls it served."""
    port = stack.env["SWITCHBOARD_PROVIDER_METRICS_PORT"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return [
        line
        for line in text.splitlines()
        if line.startswith("switchboard_rpc_duration_seconds_count") and "Generate" in line
    ]


def test_calls_are_answered_and_counted_without_the_provider_service(
    stack: Stack, upstream: OpenAIUpstream
) -> None:
    before = counted(stack)
    served_before = len(upstream.served)
    # Even i: a whole answer (the unary path); odd: a stream.
    answers = [call(stack, i) for i in range(4)]
    assert answers == [f"echo: in flight {i}" for i in range(4)]
    assert len(upstream.served) == served_before + 4
    eventually(lambda: counted(stack) == before + 4, timeout=30, interval=0.2, what="counted")
    assert provider_calls(stack) == []
    with grpc.insecure_channel(stack.router_address) as channel:
        health = router_pb2_grpc.RouterServiceStub(channel).GetHealth(
            router_pb2.GetHealthRequest(), timeout=5
        )
    assert health.components["provider"] == "ok"


def test_sigterm_of_the_router_loses_no_call_in_flight(
    stack: Stack, upstream: OpenAIUpstream
) -> None:
    sigterm_drill(stack, upstream, "router")


def test_router_killed_under_load_counts_every_answered_call(
    stack: Stack, upstream: OpenAIUpstream
) -> None:
    """The upstream calls in flight die with the router now; every call
    answered in full is still counted, and none twice."""
    router = stack.pids()["router"]

    def kill() -> None:
        os.kill(router, signal.SIGKILL)
        stack.restart("router")

    sigkill_drill(stack, upstream, kill)
