"""Fleet-wide rate limits through the machine's real Redis: several router
replicas share one limit, token limits settle, and a hung Redis never hangs a
request."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio

from switchboard.common.v1 import openai_pb2
from switchboard.router.v1 import router_pb2, router_pb2_grpc
from switchboard_common.errors import SwitchboardError
from switchboard_router.limits import RedisLimiter, Scope
from switchboard_router.service import setup as router_setup
from tests.support.grpc_errors import reason
from tests.support.inprocess import services, serving
from tests.support.limits import take
from tests.support.openai_upstream import OpenAIUpstream

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

REDIS_URL = "redis://127.0.0.1:6379/0"
KEY = "limits-test-key"
REPLICAS = 3


@pytest_asyncio.fixture
async def routers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[list[router_pb2_grpc.RouterServiceAsyncStub]]:
    # A fresh key name per test, so limits left in Redis by other runs never count.
    name = f"team-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("LIMITS_TEST_KEY", KEY)
    # Fail closed: on a loaded machine a Redis check can time out, and failing
    # open would admit that request past the limit this test counts.
    monkeypatch.setenv("SWITCHBOARD_LIMITS_ON_REDIS_ERROR", "closed")
    async with OpenAIUpstream(record_requests=False) as upstream:
        config = {
            "providers": [{"name": "up", "kind": "openai", "base_url": upstream.base_url}],
            "models": [{"name": "m", "deployments": [{"provider": "up", "model": "x"}]}],
            "keys": [{"name": name, "key_env": "LIMITS_TEST_KEY", "rpm": 10, "tpm": 400}],
        }
        async with services(config, tmp_path, monkeypatch, names=("provider",)) as settings:
            settings = dataclasses.replace(settings, redis_url=REDIS_URL)
            async with contextlib.AsyncExitStack() as replicas:
                stubs = []
                for _ in range(REPLICAS):
                    replica, _task = await replicas.enter_async_context(
                        serving("router", router_setup, settings)
                    )
                    channel = await replicas.enter_async_context(
                        grpc.aio.insecure_channel(replica.address("router"))
                    )
                    stubs.append(router_pb2_grpc.RouterServiceStub(channel))
                yield stubs


def _request(words: int = 1, max_tokens: int = 5) -> router_pb2.CreateChatCompletionRequest:
    params = openai_pb2.ChatCompletionParams(model="m", max_tokens=max_tokens)
    params.messages.add(role="user").content.string_value = " ".join(["hi"] * words)
    return router_pb2.CreateChatCompletionRequest(params=params)


AUTH = (("authorization", f"Bearer {KEY}"),)


async def test_replicas_share_one_rpm_limit(
    routers: list[router_pb2_grpc.RouterServiceAsyncStub],
) -> None:
    async def call(i: int) -> str:
        try:
            await routers[i % REPLICAS].CreateChatCompletion(_request(), metadata=AUTH, timeout=10)
        except grpc.aio.AioRpcError as exc:
            return reason(exc)
        return "OK"

    results = await asyncio.gather(*(call(i) for i in range(100)))
    admitted = results.count("OK")
    unavailable = results.count("SERVICE_UNAVAILABLE")
    # rpm: 10 across all replicas; the documented slack is 0. A check that
    # timed out (a loaded machine) is refused, and may have taken its slot.
    assert admitted <= 10, results
    assert admitted == 10 or unavailable > 0, results
    assert results.count("RATE_LIMITED") + unavailable + admitted == 100, results


async def test_rate_limited_answers_carry_retry_after(
    routers: list[router_pb2_grpc.RouterServiceAsyncStub],
) -> None:
    for i in range(10):
        await routers[i % REPLICAS].CreateChatCompletion(_request(), metadata=AUTH, timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await routers[0].CreateChatCompletion(_request(), metadata=AUTH, timeout=10)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    retry_after = dict(err.value.trailing_metadata() or ())["retry-after"]
    assert 1 <= int(str(retry_after)) <= 60


async def test_token_limit_admits_at_most_one_request_over_it(
    routers: list[router_pb2_grpc.RouterServiceAsyncStub],
) -> None:
    # tpm: 400. One request larger than that (≈225 prompt + 400 max_tokens
    # reserved; ≈600 actually used, the upstream echoes the prompt) passes an
    # empty window, the one over-limit request allowed; the next is refused.
    big = _request(words=300, max_tokens=400)
    await routers[0].CreateChatCompletion(big, metadata=AUTH, timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await routers[1].CreateChatCompletion(big, metadata=AUTH, timeout=10)
    assert reason(err.value) == "RATE_LIMITED"


@pytest_asyncio.fixture
async def hung_redis() -> AsyncIterator[str]:
    """A server that accepts connections and never answers."""
    held: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


@pytest.mark.serial  # a 1 s wall-clock bound
@pytest.mark.parametrize("fail_open", [True, False])
async def test_hung_redis_never_hangs_a_request(hung_redis: str, fail_open: bool) -> None:
    limiter = RedisLimiter(hung_redis, fail_open=fail_open)
    started = time.monotonic()
    try:
        if fail_open:
            reservation = await take(limiter, "rpm:key hung", 10, 1)
            assert reservation.entry == ""
        else:
            with pytest.raises(SwitchboardError) as err:
                await take(limiter, "rpm:key hung", 10, 1)
            assert err.value.reason_name == "SERVICE_UNAVAILABLE"
    finally:
        await limiter.close()
    assert time.monotonic() - started < 1.0


async def test_settled_tokens_free_room_in_the_shared_window() -> None:
    """The window keeps a running total next to its entries: settling a
    reservation down frees room at once, and the total stays exact."""
    limiter = RedisLimiter(REDIS_URL, fail_open=False)
    scope = f"tpm:test {uuid.uuid4().hex[:8]}"
    try:
        first = await take(limiter, scope, 25, 10)
        await take(limiter, scope, 25, 10)
        with pytest.raises(SwitchboardError):
            await take(limiter, scope, 25, 10)
        await limiter.settle([(first, 1)])  # used 11 of 25
        await take(limiter, scope, 25, 10)  # 21
        with pytest.raises(SwitchboardError):
            await take(limiter, scope, 25, 5)  # 26 would pass the limit
        await take(limiter, scope, 25, 4)  # exactly 25
    finally:
        await limiter.close()


async def test_a_phase_takes_all_its_scopes_or_none() -> None:
    """Admission's scopes go to Redis together: one refusal gives back what the
    others took, so a refused request holds nothing."""
    limiter = RedisLimiter(REDIS_URL, fail_open=False)
    tag = uuid.uuid4().hex[:8]
    roomy, full = f"tpm:roomy {tag}", f"rpm:full {tag}"
    try:
        await take(limiter, full, 1, 1)
        with pytest.raises(SwitchboardError) as err:
            await limiter.acquire([Scope(roomy, 10, 6), Scope(full, 1, 1)])
        assert "full" in err.value.message
        await take(limiter, roomy, 10, 10)  # the refused request's 6 were given back
    finally:
        await limiter.close()


async def _script_exists_calls(client: Any) -> int:
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_script|exists", {}).get("calls", 0))


async def test_a_phase_is_one_round_trip_and_survives_a_script_flush() -> None:
    """EVALSHA straight away: no SCRIPT EXISTS before each pipeline (a second
    round trip a phase). A Redis that lost its scripts (restarted, or SCRIPT
    FLUSH) is given them again, and the phase still takes its scopes once."""
    import redis.asyncio as redis

    client = redis.from_url(REDIS_URL)
    limiter = RedisLimiter(REDIS_URL, fail_open=False)
    scope = f"rpm:flushed {uuid.uuid4().hex[:8]}"
    try:
        asked_before = await _script_exists_calls(client)
        await take(limiter, scope, 2, 1)
        assert await _script_exists_calls(client) == asked_before
        await client.script_flush()
        await take(limiter, scope, 2, 1)  # NOSCRIPT, loaded, run once more
        with pytest.raises(SwitchboardError) as err:
            await take(limiter, scope, 2, 1)  # the retry counted once: 2 of 2 taken
        assert err.value.reason_name == "RATE_LIMITED"
    finally:
        await limiter.close()
        await client.aclose()
