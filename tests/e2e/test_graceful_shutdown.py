"""SIGTERM under load: every unary call already in flight finishes, streams in
flight finish, and each call is counted exactly once. The service drains (NOT
SERVING, then stop(grace)) and comes back with `restart`."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from switchboard_stack.harness import Stack, running_stack
from tests.conftest import UPSTREAM_KEY
from tests.support.drills import drill_config, sigkill_drill, sigterm_drill
from tests.support.openai_upstream import OpenAIUpstream

# Faults, restarts and wall-clock bounds: not beside another stack.
pytestmark = [pytest.mark.e2e, pytest.mark.serial]

KEY = UPSTREAM_KEY


@pytest.fixture(scope="module")
def stack(upstream: OpenAIUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    config = drill_config(upstream, "GRACEFUL_E2E_KEY")
    with running_stack(
        config, tmp_path_factory.mktemp("graceful"), {"GRACEFUL_E2E_KEY": KEY}
    ) as running:
        yield running


@pytest.mark.parametrize("component", ["router", "provider", "usage", "registry"])
def test_sigterm_loses_no_call_in_flight(
    stack: Stack, upstream: OpenAIUpstream, component: str
) -> None:
    sigterm_drill(stack, upstream, component)


def test_router_killed_under_load_counts_every_answered_call(
    stack: Stack, upstream: OpenAIUpstream
) -> None:
    """kill -9, not SIGTERM: calls in flight break (the client sees it), but
    every call that was answered in full is counted, and none twice."""
    router = stack.pids()["router"]

    def kill() -> None:
        # At once: `restart --kill` first starts a Python process, and on a
        # loaded machine the drill's calls could all finish before its signal.
        os.kill(router, signal.SIGKILL)
        stack.restart("router")

    sigkill_drill(stack, upstream, kill)
