"""The local stack will not start over ports something else holds, nor wait
forever on a readiness probe that hangs."""

from __future__ import annotations

import asyncio
import io
import socket
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from switchboard_common.settings import Settings
from switchboard_stack import harness, supervisor
from switchboard_stack.components import Component
from switchboard_stack.supervisor import Stack, StackError


def test_the_stack_refuses_ports_already_in_use() -> None:
    """A component whose port something else holds would look healthy to its
    probe; the stack refuses to start instead, naming the port."""

    async def never() -> bool:
        return False

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        taken = Component("router", ["true"], never, stage=0, ports=(port,))
        with pytest.raises(StackError, match=f"port {port} \\(router\\) is already in use"):
            Stack.check_ports_free([taken])
    Stack.check_ports_free([taken])  # released: fine


@pytest.mark.asyncio
async def test_a_probe_that_hangs_counts_as_not_ready(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A readiness probe that never returns cannot hold `make up` past its
    deadline: it is a "not yet", and a component that stays so is named."""
    monkeypatch.setenv("SWITCHBOARD_HOME", str(tmp_path))
    monkeypatch.setattr(supervisor, "PROBE_TIMEOUT_S", 0.05)
    monkeypatch.setattr(supervisor, "READY_TIMEOUT_S", 0.3)
    calls = 0

    async def hangs() -> bool:
        nonlocal calls
        calls += 1
        await asyncio.Event().wait()
        return True

    stack = Stack(Settings.from_env(), out=io.StringIO())
    stuck = Component("router", ["true"], hangs, stage=0)
    stack.procs["router"] = cast(Any, SimpleNamespace(returncode=None))
    with pytest.raises(StackError, match="router not ready after"):
        await asyncio.wait_for(stack._await_ready([stuck]), 5.0)
    assert calls > 1  # asked again after each probe gave up


def test_a_stuck_make_up_is_stopped_and_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test harness stops what a `make up` that never finished started
    (`make down`), and says what it printed, instead of leaving the stack running."""
    calls: list[str] = []

    def run(command: str, env: Any, timeout: float) -> subprocess.CompletedProcess[str]:
        calls.append(command)
        if command == "up":
            raise subprocess.TimeoutExpired(["up"], timeout, output=b"[stack] broker is ready\n")
        return subprocess.CompletedProcess(["down"], 0, "", "")

    monkeypatch.setattr(harness, "_run", run)
    with pytest.raises(RuntimeError, match=r"did not finish in 120s:\n\[stack\] broker is ready"):
        harness._up({})
    assert calls == ["up", "down"]
