"""The provider's streaming contract, called directly over gRPC: output events,
then exactly one usage record per attempt, even when the attempt breaks."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from switchboard.common.v1 import openai_pb2
from switchboard.provider.v1 import provider_pb2, provider_pb2_grpc
from switchboard.usage.v1 import usage_pb2
from tests.conftest import Loopbacks
from tests.support.inprocess import services
from tests.support.openai_upstream import Behaviour, OpenAIUpstream

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]


@pytest_asyncio.fixture
async def upstream(loopbacks: Loopbacks) -> OpenAIUpstream:
    """In the test's loop, accepting any key (the provider here sends none)."""
    return await loopbacks.openai(api_key=None)


@pytest_asyncio.fixture
async def provider(
    upstream: OpenAIUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[provider_pb2_grpc.ProviderServiceAsyncStub]:
    config = {
        "providers": [
            {
                "name": "up",
                "kind": "openai",
                "base_url": upstream.base_url,
                "first_token_timeout_s": 0.3,
                "idle_timeout_s": 0.3,
            }
        ],
        "models": [{"name": "m", "deployments": [{"provider": "up", "model": "x"}]}],
    }
    async with (
        services(config, tmp_path, monkeypatch, names=("provider",)) as settings,
        grpc.aio.insecure_channel(settings.address("provider")) as channel,
    ):
        yield provider_pb2_grpc.ProviderServiceStub(channel)


def _request(stream: bool) -> provider_pb2.StreamGenerateRequest:
    params = openai_pb2.ChatCompletionParams(model="m")
    params.messages.add(role="user").content.string_value = "one two three four five"
    return provider_pb2.StreamGenerateRequest(
        request_id="r1",
        stream=stream,
        target=provider_pb2.Target(provider="up", upstream_model="x", deployment_id="m/up/x"),
        chat=params,
    )


async def test_usage_record_is_last_and_matches_upstream(
    provider: provider_pb2_grpc.ProviderServiceAsyncStub, upstream: OpenAIUpstream
) -> None:
    events = [e async for e in provider.StreamGenerate(_request(stream=True))]
    assert [e.WhichOneof("event") for e in events].count("usage") == 1
    record = events[-1].usage
    served = upstream.served[-1]
    assert record.status == usage_pb2.USAGE_STATUS_OK
    assert (record.prompt_tokens, record.completion_tokens) == (
        served.prompt_tokens,
        served.completion_tokens,
    )
    assert not record.estimated
    assert record.provider_request_id.startswith("req_")
    assert record.ttft_ms > 0
    assert record.latency_ms >= record.ttft_ms


async def test_reset_after_n_chunks_gives_n_chunks_then_partial_usage_then_error(
    provider: provider_pb2_grpc.ProviderServiceAsyncStub, upstream: OpenAIUpstream
) -> None:
    seen = threading.Event()
    upstream.behaviour = Behaviour(mode="reset_after", reset_after_chunks=3, reset_when=seen)
    events: list[provider_pb2.StreamGenerateResponse] = []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for event in provider.StreamGenerate(_request(stream=True)):
            events.append(event)
            if len([c for e in events for c in e.chat_chunk.choices if c.delta.content]) == 3:
                seen.set()
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    content = [
        c.delta.content
        for e in events
        if e.HasField("chat_chunk")
        for c in e.chat_chunk.choices
        if c.delta.content
    ]
    assert len(content) == 3
    assert events[-1].HasField("usage")
    record = events[-1].usage
    assert record.status == usage_pb2.USAGE_STATUS_PARTIAL
    assert record.error_reason == "UPSTREAM_ERROR"
    # The upstream never reported usage for the broken stream: counted locally.
    assert record.estimated
    assert record.completion_tokens > 0


@pytest.mark.serial  # a 0.1 s wall-clock bound
async def test_cancel_closes_the_upstream_request_promptly(
    provider: provider_pb2_grpc.ProviderServiceAsyncStub, upstream: OpenAIUpstream
) -> None:
    upstream.behaviour = Behaviour(mode="slow", chunk_delay_s=0.5)
    call = provider.StreamGenerate(_request(stream=True))
    await call.read()
    cancelled_at = time.monotonic()
    call.cancel()
    assert await upstream.wait_for(lambda: upstream.disconnects == 1, within_s=2.0)
    # From the cancel to the upstream seeing its client go away (the 100 ms).
    assert time.monotonic() - cancelled_at < 0.1


@pytest.mark.parametrize(
    ("behaviour", "produced", "why"),
    [
        (Behaviour(mode="slow", first_byte_delay_s=1.5), False, "sent no first token"),
        (Behaviour(mode="slow", chunk_delay_s=1.0), True, "sent nothing more"),
    ],
)
async def test_first_token_and_idle_timeouts(
    provider: provider_pb2_grpc.ProviderServiceAsyncStub,
    upstream: OpenAIUpstream,
    behaviour: Behaviour,
    produced: bool,
    why: str,
) -> None:
    upstream.behaviour = behaviour
    started = time.monotonic()
    events: list[provider_pb2.StreamGenerateResponse] = []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for event in provider.StreamGenerate(_request(stream=True)):
            events.append(event)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert why in (err.value.details() or "")
    assert time.monotonic() - started < 1.0
    status = events[-1].usage.status
    assert status == (usage_pb2.USAGE_STATUS_PARTIAL if produced else usage_pb2.USAGE_STATUS_ERROR)


async def test_first_token_timeout_does_not_cut_a_non_streaming_answer(
    provider: provider_pb2_grpc.ProviderServiceAsyncStub, upstream: OpenAIUpstream
) -> None:
    # A unary answer arrives whole; only timeout_s (60 s here) bounds it.
    upstream.behaviour = Behaviour(mode="slow", first_byte_delay_s=0.5)
    events = [e async for e in provider.StreamGenerate(_request(stream=False))]
    assert events[0].HasField("chat_completion")
    assert events[-1].usage.status == usage_pb2.USAGE_STATUS_OK


def _unary(request: provider_pb2.StreamGenerateRequest) -> provider_pb2.GenerateRequest:
    return provider_pb2.GenerateRequest(
        request_id=request.request_id, target=request.target, chat=request.chat
    )


async def test_unary_generate_carries_the_answer_and_its_record(
    provider: provider_pb2_grpc.ProviderServiceAsyncStub, upstream: OpenAIUpstream
) -> None:
    response = await provider.Generate(_unary(_request(stream=False)))
    assert response.chat_completion.choices[0].message.content
    assert not response.HasField("error")
    assert response.usage.status == usage_pb2.USAGE_STATUS_OK
    assert response.usage.request_id == "r1"
    assert response.usage.prompt_tokens > 0
    assert [call.completed for call in upstream.served] == [True]


async def test_unary_generate_reports_an_upstream_failure_beside_its_record(
    provider: provider_pb2_grpc.ProviderServiceAsyncStub, upstream: OpenAIUpstream
) -> None:
    # Not an RPC error: the record must reach the router with the error, as
    # StreamGenerate's record precedes its error status.
    upstream.behaviour = Behaviour(mode="status", status=503)
    response = await provider.Generate(_unary(_request(stream=False)))
    assert response.WhichOneof("answer") is None
    assert response.usage.status == usage_pb2.USAGE_STATUS_ERROR
    assert response.usage.error_reason == "UPSTREAM_ERROR"
    assert response.error.code == grpc.StatusCode.UNAVAILABLE.value[0]


async def test_unary_generate_for_an_unknown_provider_is_an_rpc_error(
    provider: provider_pb2_grpc.ProviderServiceAsyncStub,
) -> None:
    request = _unary(_request(stream=False))
    request.target.provider = "nowhere"
    with pytest.raises(grpc.aio.AioRpcError):
        await provider.Generate(request)
