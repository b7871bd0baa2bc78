"""SWITCHBOARD_WORKERS: the supervisor (started here on stand-in workers),
what the router and the stack do with N > 1. The workers of real services, on a
real stack, under load and faults: tests/e2e/test_workers.py."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from switchboard_common import workers
from switchboard_common.server import server_options
from switchboard_common.settings import Settings
from switchboard_router.limits import workers_refusal
from switchboard_stack import envoy
from tests.conftest import eventually

REPO = Path(__file__).resolve().parents[2]
FAKE = [sys.executable, "-m", "tests.support.fake_worker"]


@pytest.mark.parametrize(("raw", "count"), [("", 1), ("1", 1), ("4", 4)])
def test_worker_count(monkeypatch: pytest.MonkeyPatch, raw: str, count: int) -> None:
    monkeypatch.setenv("SWITCHBOARD_WORKERS", raw)
    assert workers.worker_count() == count


@pytest.mark.parametrize("raw", ["0", "-1", "two"])
def test_a_worker_count_that_is_not_a_count_is_refused(
    monkeypatch: pytest.MonkeyPatch, raw: str
) -> None:
    monkeypatch.setenv("SWITCHBOARD_WORKERS", raw)
    with pytest.raises(workers.WorkersRefused, match="SWITCHBOARD_WORKERS"):
        workers.worker_count()


def test_router_workers_need_the_shared_limit_store() -> None:
    settings = Settings.from_env()
    refusal = workers_refusal(dataclasses.replace(settings, redis_url=None))
    assert refusal is not None
    assert "REDIS_URL" in refusal
    assert workers_refusal(dataclasses.replace(settings, redis_url="redis://x:6379/0")) is None


def test_the_router_refuses_to_start_workers_without_redis(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(
        SWITCHBOARD_WORKERS="2",
        SWITCHBOARD_HOME=str(tmp_path),
        PYTHONPATH=os.pathsep.join([str(REPO / "services"), str(REPO / "gen")]),
    )
    done = subprocess.run(
        [sys.executable, "-m", "switchboard_router"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "needs REDIS_URL" in done.stderr
    assert '"msg": "cannot start workers"' in done.stderr


def test_only_workers_share_their_port() -> None:
    assert ("grpc.so_reuseport", 1) in server_options(shared_port=True)
    assert ("grpc.so_reuseport", 0) in server_options(shared_port=False)


def test_the_edge_spreads_router_calls_over_connections_only_with_workers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SWITCHBOARD_WORKERS", raising=False)
    assert envoy.router_h2_options() == "{}"
    monkeypatch.setenv("SWITCHBOARD_WORKERS", "2")
    assert envoy.router_h2_options() == (
        f'{{"max_concurrent_streams": {envoy.ROUTER_STREAMS_PER_CONNECTION}}}'
    )


def _supervisor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> workers.Supervisor:
    monkeypatch.setenv("SWITCHBOARD_PROVIDER_METRICS_PORT", "0")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), str(REPO / "services")]))
    settings = dataclasses.replace(Settings.from_env(), home=tmp_path)
    return workers.Supervisor("provider", settings, 2, argv=FAKE)


def _pids(supervisor: workers.Supervisor) -> list[int]:
    return [w.proc.pid for w in supervisor.workers if w.proc is not None]


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


@pytest.mark.asyncio
async def test_the_supervisor_restarts_a_dead_worker_and_drains_them_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    supervisor = _supervisor(tmp_path, monkeypatch)
    running = asyncio.create_task(supervisor.run())
    try:
        await eventually(
            lambda: asyncio.sleep(0, all(w.ready for w in supervisor.workers)),
            timeout=20,
            what="both workers ready",
        )
        first = _pids(supervisor)
        os.kill(first[0], signal.SIGKILL)

        def replaced() -> bool:
            pids = _pids(supervisor)
            return (
                len(pids) == 2 and first[0] not in pids and all(w.ready for w in supervisor.workers)
            )

        await eventually(lambda: asyncio.sleep(0, replaced()), timeout=20, what="a new worker")
        restarts = {"service": "provider"}
        assert (
            supervisor.registry.get_sample_value("switchboard_worker_restarts_total", restarts) == 1
        )
        last = _pids(supervisor)
    finally:
        supervisor.stop.set()
        code = await asyncio.wait_for(running, 30)
    assert code == 0
    # SIGTERM reached each worker, and the supervisor waited for them.
    assert all(_gone(pid) for pid in last)
    assert not supervisor.metrics_dir.exists()


@pytest.mark.asyncio
async def test_a_worker_that_fails_to_start_stops_the_supervisor_with_its_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_WORKER_FAIL", "3")
    supervisor = _supervisor(tmp_path, monkeypatch)
    assert await asyncio.wait_for(supervisor.run(), 30) == 3
