"""SWITCHBOARD_WORKERS=2: the router and the provider each run two processes on
one port. Calls land on both router workers, and a rate limit holds across
them (Redis); the metrics port sums the workers; the SIGTERM and SIGKILL
drills (tests/support/drills.py) hold as they do with one process: each
answered call is counted once, and a worker killed with SIGKILL is started
again, while a supervisor killed with SIGKILL takes its workers with it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from switchboard.common.v1 import openai_pb2
from switchboard.router.v1 import router_pb2, router_pb2_grpc
from switchboard_stack.harness import Stack, running_stack
from tests.conftest import UPSTREAM_KEY, eventually
from tests.support.drills import sigkill_drill, sigterm_drill
from tests.support.grpc_errors import reason
from tests.support.openai_upstream import OpenAIUpstream

# Faults, restarts and wall-clock bounds: not beside another stack.
pytestmark = [pytest.mark.e2e, pytest.mark.serial]

REDIS_URL = "redis://127.0.0.1:6379/0"
ADMIN = "workers-e2e-admin-key"
WORKERS = 2
RPM = 10
# A fresh model name per run: limits left in Redis by an earlier run never count.
LIMITED = f"limited-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def stack(upstream: OpenAIUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    deployments = [{"provider": "loopback", "model": "up"}]
    config = {
        "providers": [
            {
                "name": "loopback",
                "kind": "openai",
                "base_url": upstream.base_url,
                "api_key_env": "WORKERS_E2E_KEY",
            }
        ],
        "models": [
            {"name": "slow", "deployments": deployments},
            {"name": LIMITED, "rpm": RPM, "deployments": deployments},
        ],
    }
    env = {
        "WORKERS_E2E_KEY": UPSTREAM_KEY,
        "SWITCHBOARD_WORKERS": str(WORKERS),
        "REDIS_URL": REDIS_URL,
        "SWITCHBOARD_ADMIN_KEY": ADMIN,
        # A Redis check that times out on a loaded machine is refused, not
        # admitted past the limit this test counts.
        "SWITCHBOARD_LIMITS_ON_REDIS_ERROR": "closed",
    }
    with running_stack(config, tmp_path_factory.mktemp("workers"), env) as running:
        yield running


def workers_of(stack: Stack, component: str) -> list[int]:
    """The worker pids of a component's supervisor (the pid its pid file names)."""
    supervisor = stack.pids()[component]
    try:
        children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text()
    except OSError:
        return []
    return sorted(int(pid) for pid in children.split())


def running_workers(stack: Stack, component: str) -> list[int]:
    """Eventually WORKERS of them (a restarted supervisor starts its workers in turn)."""

    def check() -> list[int]:
        pids = workers_of(stack, component)
        assert len(pids) == WORKERS, pids
        return pids

    return eventually(check, timeout=30, what=f"{WORKERS} {component} workers")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def metrics(stack: Stack, component: str) -> str:
    port = stack.env[f"SWITCHBOARD_{component.upper()}_METRICS_PORT"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return str(reply.read().decode())


def test_router_and_provider_run_two_workers_each(stack: Stack) -> None:
    for component in ("router", "provider"):
        assert len(running_workers(stack, component)) == WORKERS
    # The other services run one process whatever SWITCHBOARD_WORKERS says.
    for component in ("registry", "usage"):
        assert workers_of(stack, component) == []
    router_log = stack.log("router")
    for index in range(WORKERS):
        assert f'"worker": {index}, "logger": "switchboard_common.server", "msg": "serving"' in (
            router_log
        )


async def _spread_calls(stack: Stack, channels: int, calls: int) -> tuple[set[str], list[str]]:
    """`calls` calls on the limited model over `channels` connections of their own
    (each lands on the worker the kernel picks for it); the router instances
    (host-pid) those connections reached, and each call's outcome."""
    admin = (("authorization", f"Bearer {ADMIN}"),)
    opened = [
        grpc.aio.insecure_channel(
            stack.router_address, options=[("grpc.use_local_subchannel_pool", 1)]
        )
        for _ in range(channels)
    ]
    try:
        stubs = [router_pb2_grpc.RouterServiceStub(channel) for channel in opened]
        health = await asyncio.gather(
            *(
                stub.GetRoutingHealth(
                    router_pb2.GetRoutingHealthRequest(), metadata=admin, timeout=10
                )
                for stub in stubs
            )
        )

        async def call(i: int) -> str:
            params = openai_pb2.ChatCompletionParams(model=LIMITED, max_tokens=5)
            params.messages.add(role="user").content.string_value = f"spread {i}"
            request = router_pb2.CreateChatCompletionRequest(params=params)
            try:
                await stubs[i % channels].CreateChatCompletion(request, timeout=15)
            except grpc.aio.AioRpcError as exc:
                return reason(exc)
            return "OK"

        outcomes = await asyncio.gather(*(call(i) for i in range(calls)))
    finally:
        for channel in opened:
            await channel.close()
    return {h.instance for h in health}, list(outcomes)


@pytest.mark.asyncio
async def test_calls_land_on_both_router_workers_and_share_one_limit(stack: Stack) -> None:
    pids = running_workers(stack, "router")
    instances, outcomes = await _spread_calls(stack, channels=16, calls=60)
    # Each connection reached one worker; 16 of them reached both (the chance of
    # all 16 landing on one is 2**-15).
    assert {int(instance.rsplit("-", 1)[1]) for instance in instances} == set(pids)
    admitted = outcomes.count("OK")
    unavailable = outcomes.count("SERVICE_UNAVAILABLE")
    # One limit for both workers: per-process windows would admit up to twice RPM.
    assert admitted <= RPM, outcomes
    assert admitted == RPM or unavailable > 0, outcomes
    assert outcomes.count("RATE_LIMITED") + unavailable + admitted == len(outcomes), outcomes


def test_the_metrics_port_sums_the_workers(stack: Stack) -> None:
    text = metrics(stack, "router")
    assert f'switchboard_workers{{service="router"}} {float(WORKERS)}' in text
    served = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("switchboard_rpc_duration_seconds_count")
        and 'method="GetRoutingHealth"' in line
    ]
    # The previous test asked each of 16 connections, spread over both workers.
    assert sum(served) >= 16, served
    # Gauges are per worker: one series per worker pid.
    pids = running_workers(stack, "router")
    for pid in pids:
        assert f'pid="{pid}"' in text


@pytest.mark.parametrize("component", ["router", "provider"])
def test_sigterm_with_two_workers_loses_no_call_in_flight(
    stack: Stack, upstream: OpenAIUpstream, component: str
) -> None:
    before = running_workers(stack, component)
    sigterm_drill(stack, upstream, component)
    after = running_workers(stack, component)
    assert not any(alive(pid) for pid in before), "the old workers drained and exited"
    assert not set(before) & set(after)


def _sockets(port: int) -> set[str]:
    """Inodes of the established TCP connections whose local end is `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                    found.add(fields[9])
    return found


def connections(pid: int, port: int) -> int:
    """How many established connections on `port` process `pid` holds."""
    inodes = _sockets(port)
    held = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            link = os.readlink(fd)
            held += link.startswith("socket:[") and link[8:-1] in inodes
    return held


class KillBusiest:
    """SIGKILLs the worker that holds the most connections (the edge's to the
    router, the router workers' to the provider): one with calls in flight,
    whichever worker the kernel gave them to."""

    def __init__(self, stack: Stack, component: str) -> None:
        self.pids = running_workers(stack, component)
        address = (
            stack.router_address
            if component == "router"
            else stack.env[f"SWITCHBOARD_{component.upper()}_PORT"]
        )
        self.port = int(address.rsplit(":", 1)[-1])
        self.killed: int | None = None

    def __call__(self) -> None:
        self.killed = max(self.pids, key=lambda pid: connections(pid, self.port))
        os.kill(self.killed, signal.SIGKILL)


@pytest.mark.parametrize("component", ["router", "provider"])
def test_a_worker_killed_under_load_is_replaced_and_answered_calls_count_once(
    stack: Stack, upstream: OpenAIUpstream, component: str
) -> None:
    kill = KillBusiest(stack, component)
    sigkill_drill(stack, upstream, kill, must_cut=False, router_survives=component == "provider")
    assert kill.killed is not None
    assert kill.killed not in running_workers(stack, component)
    assert "worker died; starting it again" in stack.log(component)
    eventually(
        lambda: (
            f'switchboard_worker_restarts_total{{service="{component}"}} 1.0'
            in metrics(stack, component)
        ),
        what="the restart counted",
    )


def test_router_supervisor_killed_under_load_takes_its_workers_and_counts_once(
    stack: Stack, upstream: OpenAIUpstream
) -> None:
    before = running_workers(stack, "router")
    supervisor = stack.pids()["router"]

    def kill() -> None:
        # At once (`restart --kill` would first start a Python process).
        os.kill(supervisor, signal.SIGKILL)
        stack.restart("router")

    sigkill_drill(stack, upstream, kill)
    # PR_SET_PDEATHSIG: the workers died with their supervisor; none is left on the port.
    assert not any(alive(pid) for pid in before)
    assert not set(before) & set(running_workers(stack, "router"))
