"""EngineFeedService.WatchEngines through the real server bootstrap, a real
registry and a real process (the vLLM stand-in, as test_engine_service)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from switchboard.engine.v1 import engine_pb2 as pb
from switchboard.engine.v1 import engine_pb2_grpc
from switchboard_common.server import CHANNEL_OPTIONS
from tests.integration.test_engine_service import (
    AUTH,
    WAIT_S,
    engine_service,
    until,
    vllm_config,
)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]


async def test_the_engine_feed_reports_every_state_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EngineFeedService.WatchEngines (what the gpu service's monitor relays as
    model_status_update): the engines now, then each change, then the deletion."""
    async with (
        engine_service(tmp_path, monkeypatch) as env,
        grpc.aio.insecure_channel(env.settings.address("engine"), CHANNEL_OPTIONS) as channel,
    ):
        feed = engine_pb2_grpc.EngineFeedServiceStub(channel).WatchEngines(pb.WatchEnginesRequest())
        seen: list[tuple[int, bool]] = []

        async def follow() -> None:
            async for event in feed:
                assert event.engine.name == "watched"
                assert event.engine.node == "node-a"
                seen.append((event.engine.state, event.deleted))
                if event.deleted:
                    return

        following = asyncio.create_task(follow())
        await env.engines.CreateEngine(
            pb.CreateEngineRequest(name="watched", config=vllm_config("org/watched")),
            metadata=AUTH,
        )
        await env.engines.StartEngine(pb.StartEngineRequest(name="watched"), metadata=AUTH)
        await until(env, "watched", lambda e: e.pid > 0, "launched")
        env.ready.touch()
        await until(env, "watched", lambda e: e.state == pb.ENGINE_STATE_RUNNING, "running")
        await env.engines.DeleteEngine(
            pb.DeleteEngineRequest(name="watched", delete_model=True), metadata=AUTH
        )
        await asyncio.wait_for(following, WAIT_S)
        feed.cancel()  # hung up before the server ends the stream
    states = [state for state, _ in seen]
    # A health check may repeat a state; each change comes once, in order.
    changes = [s for i, s in enumerate(states) if i == 0 or states[i - 1] != s]
    assert changes == [
        pb.ENGINE_STATE_CREATED,
        pb.ENGINE_STATE_STARTING,
        pb.ENGINE_STATE_RUNNING,
        pb.ENGINE_STATE_STOPPING,
        pb.ENGINE_STATE_STOPPED,
    ]
    assert seen[-1] == (pb.ENGINE_STATE_STOPPED, True)
