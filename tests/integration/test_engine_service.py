"""EngineService through the real server bootstrap, a real registry and real
processes: a stand-in that speaks vLLM's HTTP surface (tests/support/fake_vllm.py)
is started, health-checked, crashed, restarted, routed to and stopped."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import functools
import json
import os
import signal
import stat
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import openai
import pytest
from switchboard_engine.service import setup
from switchboard_engine.settings import EngineSettings

from switchboard.engine.v1 import engine_pb2 as pb
from switchboard.engine.v1 import engine_pb2_grpc
from switchboard.registry.v1 import engine_config_pb2 as cfg
from switchboard.registry.v1 import registry_pb2, registry_pb2_grpc
from switchboard_common.server import CHANNEL_OPTIONS
from switchboard_common.settings import Settings
from tests.support.grpc_errors import reason
from tests.support.inprocess import services, serving

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

ADMIN = "engine-test-admin-key"
AUTH = (("authorization", f"Bearer {ADMIN}"),)
WAIT_S = 20.0
FAKE_VLLM = Path(__file__).resolve().parents[1] / "support" / "fake_vllm.py"
CONFIG: dict[str, Any] = {"providers": [{"name": "mock", "kind": "mock"}], "models": []}


@dataclasses.dataclass
class Env:
    engines: engine_pb2_grpc.EngineServiceAsyncStub
    registry: registry_pb2_grpc.RegistryServiceAsyncStub
    ready: Path
    settings: Settings


def vllm_config(model_path: str, **fields: Any) -> cfg.EngineConfig:
    return cfg.EngineConfig(framework=cfg.ENGINE_FRAMEWORK_VLLM, model_path=model_path, **fields)


@contextlib.asynccontextmanager
async def engine_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **overrides: Any
) -> AsyncIterator[Env]:
    monkeypatch.setenv("SWITCHBOARD_ADMIN_KEY", ADMIN)
    wrapper = tmp_path / "vllm"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_VLLM}" "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    ready = tmp_path / "ready"
    monkeypatch.setenv("FAKE_VLLM_READY_FILE", str(ready))
    async with services(CONFIG, tmp_path, monkeypatch, ("registry",)) as settings:
        engine_settings = dataclasses.replace(
            EngineSettings(settings.home, "node-a", "127.0.0.1", "127.0.0.1"),
            health_interval_s=0.1,
            start_poll_s=0.05,
            unhealthy_after=3,
            backoff_base_s=0.05,
            stop_timeout_s=5.0,
            vllm_bin=wrapper,
            **overrides,
        )
        engine_setup = functools.partial(setup, engine_settings=engine_settings)
        async with (
            serving("engine", engine_setup, settings) as (settings, _),
            grpc.aio.insecure_channel(settings.address("engine"), CHANNEL_OPTIONS) as ch,
            grpc.aio.insecure_channel(settings.address("registry"), CHANNEL_OPTIONS) as reg,
        ):
            yield Env(
                engine_pb2_grpc.EngineServiceStub(ch),
                registry_pb2_grpc.RegistryServiceStub(reg),
                ready,
                settings,
            )


async def engine(env: Env, name: str) -> pb.Engine:
    reply = await env.engines.GetEngine(pb.GetEngineRequest(name=name), metadata=AUTH)
    return reply.engine


async def until(
    env: Env, name: str, done: Callable[[pb.Engine], bool], what: str = ""
) -> pb.Engine:
    """Poll GetEngine until `done` holds (bounded)."""
    last = None
    try:
        async with asyncio.timeout(WAIT_S):
            while True:
                last = await engine(env, name)
                if done(last):
                    return last
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"engine never got {what or 'there'}: {last}") from None


async def task_done(env: Env, task_id: str) -> pb.Task:
    async with asyncio.timeout(WAIT_S):
        while True:
            reply = await env.engines.GetTask(pb.GetTaskRequest(id=task_id), metadata=AUTH)
            if reply.task.state in (pb.TASK_STATE_SUCCEEDED, pb.TASK_STATE_FAILED):
                return reply.task
            await asyncio.sleep(0.05)


async def deployments(env: Env, model: str) -> list[registry_pb2.Deployment]:
    reply = await env.registry.ListDeployments(
        registry_pb2.ListDeploymentsRequest(model=model), metadata=AUTH
    )
    return list(reply.deployments)


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


async def launched_argv(pid: int) -> list[str]:
    """The engine's command line once it exec'd (until then it is a copy of us)."""
    for _ in range(int(WAIT_S / 0.01)):
        argv = cmdline(pid)
        if "serve" in argv:
            return argv
        await asyncio.sleep(0.01)
    raise AssertionError(f"pid {pid} never ran the engine: {cmdline(pid)}")


def running_fakes(marker: str) -> list[int]:
    """Live processes whose command line holds `marker` (zombies excluded)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    found.append(int(entry.name))
    return found


async def test_vllm_engine_lifecycle_health_crash_and_routing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with engine_service(tmp_path, monkeypatch) as env:
        created = await env.engines.CreateEngine(
            pb.CreateEngineRequest(
                name="tiny-vllm",
                config=vllm_config("org/tiny-lifecycle", context_size=1024, tensor_parallel_size=1),
            ),
            metadata=AUTH,
        )
        assert created.engine.state == pb.ENGINE_STATE_CREATED
        model = await env.registry.GetModel(
            registry_pb2.GetModelRequest(name="tiny-vllm"), metadata=AUTH
        )
        assert model.model.engine.model_path == "org/tiny-lifecycle"

        started = await env.engines.StartEngine(
            pb.StartEngineRequest(name="tiny-vllm"), metadata=AUTH
        )
        starting = await until(env, "tiny-vllm", lambda e: e.state == pb.ENGINE_STATE_STARTING)
        # /health answers 503 until the model "loaded": no deployment yet.
        assert await deployments(env, "tiny-vllm") == []
        pid = (await until(env, "tiny-vllm", lambda e: e.pid > 0)).pid
        argv = await launched_argv(pid)
        assert argv[argv.index("serve") + 1 :][:8] == [
            "org/tiny-lifecycle",
            "--host",
            "127.0.0.1",
            "--port",
            str((await engine(env, "tiny-vllm")).port),
            "--served-model-name",
            "tiny-vllm",
            "--max-model-len",
        ]
        assert starting.task_id == started.task.id

        env.ready.touch()
        running = await until(env, "tiny-vllm", lambda e: e.state == pb.ENGINE_STATE_RUNNING)
        task = await task_done(env, started.task.id)
        assert task.state == pb.TASK_STATE_SUCCEEDED
        assert task.engine_state == pb.ENGINE_STATE_RUNNING
        assert running.usage.rss_bytes > 0
        (deployment,) = await deployments(env, "tiny-vllm")
        assert deployment.id == running.deployment_id
        provider = await env.registry.GetProvider(
            registry_pb2.GetProviderRequest(name=deployment.provider), metadata=AUTH
        )
        assert provider.provider.base_url == f"http://127.0.0.1:{running.port}/v1"
        assert provider.provider.kind == registry_pb2.PROVIDER_KIND_OPENAI
        async with openai.AsyncOpenAI(base_url=provider.provider.base_url, api_key="x") as client:
            reply = await client.chat.completions.create(
                model=deployment.upstream_model, messages=[{"role": "user", "content": "hi"}]
            )
        assert reply.choices[0].message.content == "served by org/tiny-lifecycle"

        # /health fails while the process lives: restarted after 3 failed checks.
        env.ready.unlink()
        await until(
            env,
            "tiny-vllm",
            lambda e: e.restart_count == 1 and "stopped answering /health" in e.last_crash,
            "restarted after failed health checks",
        )
        assert await deployments(env, "tiny-vllm") == []
        env.ready.touch()
        again = await until(env, "tiny-vllm", lambda e: e.state == pb.ENGINE_STATE_RUNNING)
        assert again.pid != running.pid

        # A crash (SIGKILL): seen, withdrawn, restarted, routed again.
        os.kill(again.pid, signal.SIGKILL)
        back = await until(
            env,
            "tiny-vllm",
            lambda e: e.restart_count == 2 and e.state == pb.ENGINE_STATE_RUNNING,
            "back after a crash",
        )
        assert "killed by signal 9" in back.last_crash
        assert back.pid not in (again.pid, 0)
        assert len(await deployments(env, "tiny-vllm")) == 1

        lines = [
            r.line
            async for r in env.engines.GetEngineLogs(
                pb.GetEngineLogsRequest(name="tiny-vllm", lines=500), metadata=AUTH
            )
        ]
        starts = [x for x in lines if x.message.startswith("Starting vLLM API server")]
        assert len(starts) == 3
        assert all(x.level == pb.LOG_LEVEL_INFO for x in starts)
        now = dt.datetime.now(dt.UTC)
        assert abs((starts[-1].time.ToDatetime(dt.UTC) - now).total_seconds()) < 60

        stopped = await env.engines.StopEngine(
            pb.StopEngineRequest(name="tiny-vllm"), metadata=AUTH
        )
        assert (await task_done(env, stopped.task.id)).state == pb.TASK_STATE_SUCCEEDED
        final = await engine(env, "tiny-vllm")
        assert (final.state, final.pid, final.port) == (pb.ENGINE_STATE_STOPPED, 0, 0)
        assert await deployments(env, "tiny-vllm") == []
        assert running_fakes("org/tiny-lifecycle") == []

        await env.engines.DeleteEngine(
            pb.DeleteEngineRequest(name="tiny-vllm", delete_model=True), metadata=AUTH
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await engine(env, "tiny-vllm")
        assert reason(err.value) == "NOT_FOUND"


async def test_a_start_that_never_gets_healthy_ends_in_error_with_the_log_tail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with engine_service(tmp_path, monkeypatch) as env:
        await env.engines.CreateEngine(
            pb.CreateEngineRequest(
                name="slow", config=vllm_config("org/never-ready", start_timeout_s=1)
            ),
            metadata=AUTH,
        )
        started = await env.engines.StartEngine(pb.StartEngineRequest(name="slow"), metadata=AUTH)
        task = await task_done(env, started.task.id)
        assert task.state == pb.TASK_STATE_FAILED
        assert "did not become healthy within 1 s" in task.error
        failed = await engine(env, "slow")
        assert failed.state == pb.ENGINE_STATE_ERROR
        assert "Starting vLLM API server" in failed.state_reason
        assert failed.pid == 0
        assert running_fakes("org/never-ready") == []


async def test_crashes_past_the_restart_limit_end_in_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with engine_service(tmp_path, monkeypatch, restart_limit=1) as env:
        env.ready.touch()
        await env.engines.CreateEngine(
            pb.CreateEngineRequest(name="fragile", config=vllm_config("org/fragile")),
            metadata=AUTH,
        )
        await env.engines.StartEngine(pb.StartEngineRequest(name="fragile"), metadata=AUTH)
        first = await until(env, "fragile", lambda e: e.state == pb.ENGINE_STATE_RUNNING)
        os.kill(first.pid, signal.SIGKILL)
        second = await until(
            env,
            "fragile",
            lambda e: e.state == pb.ENGINE_STATE_RUNNING and e.pid not in (0, first.pid),
            "restarted once",
        )
        os.kill(second.pid, signal.SIGKILL)
        failed = await until(env, "fragile", lambda e: e.state == pb.ENGINE_STATE_ERROR, "error")
        assert "crashed 2 times in a row (restart limit 1)" in failed.state_reason
        assert "Starting vLLM API server" in failed.state_reason  # the log's tail
        assert failed.restart_count == 1
        assert await deployments(env, "fragile") == []
        assert running_fakes("org/fragile") == []


async def test_a_stop_cuts_a_start_short(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with engine_service(tmp_path, monkeypatch) as env:
        await env.engines.CreateEngine(
            pb.CreateEngineRequest(name="loading", config=vllm_config("org/still-loading")),
            metadata=AUTH,
        )
        started = await env.engines.StartEngine(
            pb.StartEngineRequest(name="loading"), metadata=AUTH
        )
        await until(env, "loading", lambda e: e.pid > 0, "launched")
        stopped = await env.engines.StopEngine(pb.StopEngineRequest(name="loading"), metadata=AUTH)
        start = await task_done(env, started.task.id)
        assert start.state == pb.TASK_STATE_FAILED
        assert "a stop was asked for while it started" in start.error
        assert (await task_done(env, stopped.task.id)).state == pb.TASK_STATE_SUCCEEDED
        final = await engine(env, "loading")
        assert (final.state, final.pid) == (pb.ENGINE_STATE_STOPPED, 0)
        assert running_fakes("org/still-loading") == []


async def test_ten_concurrent_starts_and_stops_end_consistent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with engine_service(tmp_path, monkeypatch) as env:
        env.ready.touch()
        await env.engines.CreateEngine(
            pb.CreateEngineRequest(name="busy", config=vllm_config("org/busy-engine")),
            metadata=AUTH,
        )

        async def op(i: int) -> pb.Task:
            if i % 2 == 0:
                reply = await env.engines.StartEngine(
                    pb.StartEngineRequest(name="busy"), metadata=AUTH
                )
                task: pb.Task = reply.task
                return task
            stopped = await env.engines.StopEngine(
                pb.StopEngineRequest(name="busy", force=i % 4 == 1), metadata=AUTH
            )
            task = stopped.task
            return task

        submitted = await asyncio.gather(*(op(i) for i in range(10)))
        tasks = [await task_done(env, t.id) for t in submitted]
        # A start still waiting for /health is cut short by a stop asked for meanwhile.
        for t in tasks:
            assert t.state == pb.TASK_STATE_SUCCEEDED or (
                t.kind == pb.TASK_KIND_START and "a stop was asked for" in t.error
            ), t
        done = [t for t in tasks if t.state == pb.TASK_STATE_SUCCEEDED]
        last = max(done, key=lambda t: t.end_time.ToDatetime())
        final = await engine(env, "busy")
        alive = running_fakes("org/busy-engine")
        if last.kind == pb.TASK_KIND_START:
            assert final.state == pb.ENGINE_STATE_RUNNING
            assert alive == [final.pid]
            assert [d.id for d in await deployments(env, "busy")] == [final.deployment_id]
        else:
            assert final.state == pb.ENGINE_STATE_STOPPED
            assert alive == []
            assert await deployments(env, "busy") == []


async def test_admission_and_missing_binaries_are_refused_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gpus = tmp_path / "gpus.json"
    gpus.write_text(
        json.dumps(
            {
                "devices": [
                    {
                        "index": 0,
                        "uuid": "GPU-aaaa",
                        "memory_used_mib": 2048,
                        "memory_total_mib": 81559,
                        "processes": [],
                    }
                ]
            }
        )
    )
    async with engine_service(
        tmp_path,
        monkeypatch,
        max_concurrent_models=1,
        gpu_script=gpus,
        llama_server=tmp_path / "no-llama-server",
    ) as env:
        env.ready.touch()
        for name, config in [
            ("a", vllm_config("org/a")),
            ("b", vllm_config("org/b")),
            (
                "big",
                vllm_config(
                    "org/big",
                    gpus=["GPU-aaaa"],
                    resources=cfg.EngineResources(gpu_memory_mib=80_000),
                ),
            ),
            (
                "llama",
                cfg.EngineConfig(
                    framework=cfg.ENGINE_FRAMEWORK_LLAMA_CPP, model_path=str(tmp_path / "m.gguf")
                ),
            ),
        ]:
            await env.engines.CreateEngine(
                pb.CreateEngineRequest(name=name, config=config), metadata=AUTH
            )

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await env.engines.StartEngine(pb.StartEngineRequest(name="big"), metadata=AUTH)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert reason(err.value) == "INSUFFICIENT_RESOURCES"
        assert "79511 MiB free" in (err.value.details() or "")

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await env.engines.StartEngine(pb.StartEngineRequest(name="llama"), metadata=AUTH)
        assert reason(err.value) == "FAILED_PRECONDITION"
        assert "make engines" in (err.value.details() or "")

        started = await env.engines.StartEngine(pb.StartEngineRequest(name="a"), metadata=AUTH)
        assert (await task_done(env, started.task.id)).state == pb.TASK_STATE_SUCCEEDED
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await env.engines.StartEngine(pb.StartEngineRequest(name="b"), metadata=AUTH)
        assert reason(err.value) == "INSUFFICIENT_RESOURCES"
        listed = await env.engines.ListEngines(pb.ListEnginesRequest(), metadata=AUTH)
        assert (listed.active_models, listed.max_concurrent_models) == (1, 1)
        assert [e.name for e in listed.engines] == ["a", "b", "big", "llama"]


async def test_every_rpc_needs_the_admin_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with engine_service(tmp_path, monkeypatch) as env:
        for metadata, expected in [
            ((), "MISSING_API_KEY"),
            ((("authorization", "Bearer wrong"),), "INVALID_API_KEY"),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await env.engines.ListEngines(pb.ListEnginesRequest(), metadata=metadata)
            assert reason(err.value) == expected
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in env.engines.GetEngineLogs(
                    pb.GetEngineLogsRequest(name="x"), metadata=metadata
                ):
                    pass
            assert reason(err.value) == expected
