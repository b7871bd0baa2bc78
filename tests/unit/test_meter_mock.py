"""Per-attempt usage metering, and the mock adapter a keyless stack answers with."""

from __future__ import annotations

import math
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from google.protobuf import json_format

from switchboard.common.v1 import openai_pb2
from switchboard.provider.v1 import provider_pb2
from switchboard.usage.v1 import usage_pb2
from switchboard_common.config import ProviderConfig
from switchboard_common.errors import R, SwitchboardError
from switchboard_provider.adapters.mock import FINGERPRINT, MockAdapter
from switchboard_provider.meter import UsageMeter, estimate_tokens

OK = usage_pb2.USAGE_STATUS_OK
CHAT = usage_pb2.OPERATION_CHAT
TARGET = provider_pb2.Target(provider="mock", upstream_model="mock-echo", deployment_id="m/mock/e")


def _chat_request(stream: bool, *messages: dict[str, Any]) -> provider_pb2.StreamGenerateRequest:
    request = provider_pb2.StreamGenerateRequest(
        request_id="req-1", attempt=2, target=TARGET, stream=stream
    )
    json_format.ParseDict({"model": "mock-chat", "messages": list(messages)}, request.chat)
    return request


def _completion_request(stream: bool, prompt: object) -> provider_pb2.StreamGenerateRequest:
    request = provider_pb2.StreamGenerateRequest(request_id="req-2", target=TARGET, stream=stream)
    json_format.ParseDict({"model": "mock-chat", "prompt": prompt}, request.completion)
    return request


MESSAGES = (
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "first question"},
    {"role": "assistant", "content": "an answer"},
    {
        "role": "user",
        "content": [{"type": "text", "text": "héllo"}, {"type": "text", "text": "wörld 🌍"}],
    },
)


# --- UsageMeter ------------------------------------------------------------------


@pytest.mark.parametrize(("text", "tokens"), [("", 0), ("a", 1), ("abcd", 1), ("abcde", 2)])
def test_estimate_tokens_is_about_four_chars_per_token(text: str, tokens: int) -> None:
    assert estimate_tokens(text) == tokens


def test_meter_record_identifies_the_attempt() -> None:
    record = UsageMeter(_chat_request(True), CHAT).record
    assert record.request_id == "req-1"
    assert record.attempt == 2
    assert (record.provider, record.upstream_model, record.deployment_id) == (
        "mock",
        "mock-echo",
        "m/mock/e",
    )
    assert record.operation == CHAT
    assert record.stream is True


def test_meter_names_the_record_once_finished() -> None:
    # The id is made when the record is finished (an attempt the router only
    # follows never needs one), and finishing again keeps it.
    meter = UsageMeter(_chat_request(True), CHAT)
    assert meter.record.event_id == ""
    record = meter.finish(OK)
    assert uuid.UUID(record.event_id).version == 7
    assert meter.finish(OK).event_id == record.event_id
    assert record.start_time.ToNanoseconds() <= record.end_time.ToNanoseconds()


def test_meter_estimates_when_no_usage_is_reported() -> None:
    meter = UsageMeter(_chat_request(False), CHAT)
    meter.prompt_text = "x" * 40
    meter.add_output_text("y" * 10)
    meter.add_output_text("")
    meter.add_output_text("z" * 5)
    record = meter.finish(OK)
    assert record.estimated is True
    assert record.prompt_tokens == 10
    assert record.completion_tokens == math.ceil(15 / 4)
    assert record.total_tokens == record.prompt_tokens + record.completion_tokens
    assert record.status == OK


def test_meter_estimate_with_nothing_is_zero() -> None:
    record = UsageMeter(_chat_request(False), CHAT).finish(OK)
    assert (record.prompt_tokens, record.completion_tokens, record.total_tokens) == (0, 0, 0)
    assert record.estimated is True


def test_meter_reported_usage_wins_over_estimate() -> None:
    meter = UsageMeter(_chat_request(False), CHAT)
    meter.prompt_text = "x" * 400
    meter.add_output_text("y" * 400)
    meter.report(
        openai_pb2.Usage(
            prompt_tokens=7,
            completion_tokens=3,
            total_tokens=10,
            prompt_tokens_details=openai_pb2.PromptTokensDetails(cached_tokens=4),
            completion_tokens_details=openai_pb2.CompletionTokensDetails(reasoning_tokens=2),
        )
    )
    record = meter.finish(OK)
    assert record.estimated is False
    assert (record.prompt_tokens, record.completion_tokens, record.total_tokens) == (7, 3, 10)
    assert (record.cached_tokens, record.reasoning_tokens) == (4, 2)


def test_meter_report_without_total_sums_the_parts() -> None:
    meter = UsageMeter(_chat_request(False), CHAT)
    meter.report(openai_pb2.Usage(prompt_tokens=7, completion_tokens=3))
    assert meter.finish(OK).total_tokens == 10


def test_meter_ttft_only_for_streams() -> None:
    for stream, expect_ttft in [(True, True), (False, False)]:
        meter = UsageMeter(_chat_request(stream), CHAT)
        meter.add_output_text("tok")
        record = meter.finish(OK)
        assert (record.ttft_ms > 0) is expect_ttft, stream
        assert record.latency_ms >= record.ttft_ms


def test_meter_stream_without_output_has_no_ttft() -> None:
    assert UsageMeter(_chat_request(True), CHAT).finish(OK).ttft_ms == 0


def test_meter_first_token_is_sticky() -> None:
    meter = UsageMeter(_chat_request(True), CHAT)
    meter.first_token()
    first = meter.finish(OK).ttft_ms
    meter.add_output_text("later")
    assert meter.finish(OK).ttft_ms == first


def test_meter_finish_records_error_and_times() -> None:
    meter = UsageMeter(_chat_request(True), CHAT)
    meter.set_provider_request_id(None)
    meter.set_provider_request_id("up-1")
    err = SwitchboardError(R.ERROR_REASON_UPSTREAM_TIMEOUT, "slow")
    record = meter.finish(usage_pb2.USAGE_STATUS_ERROR, err)
    assert record.status == usage_pb2.USAGE_STATUS_ERROR
    assert record.error_reason == "UPSTREAM_TIMEOUT"
    assert record.provider_request_id == "up-1"
    assert record.HasField("start_time")
    assert record.HasField("end_time")
    assert record.end_time.ToNanoseconds() >= record.start_time.ToNanoseconds()


def test_meter_embedding_report_is_not_estimated() -> None:
    meter = UsageMeter(_chat_request(False), usage_pb2.OPERATION_EMBEDDING)
    meter.record.prompt_tokens = 5
    meter.report_embedding()
    record = meter.finish(OK)
    assert record.estimated is False
    assert record.prompt_tokens == 5


# --- MockAdapter -----------------------------------------------------------------


@pytest.fixture
def adapter() -> MockAdapter:
    return MockAdapter(ProviderConfig(name="mock", kind="mock"))


async def _collect(
    stream: AsyncIterator[provider_pb2.StreamGenerateResponse],
) -> list[provider_pb2.StreamGenerateResponse]:
    return [event async for event in stream]


@pytest.mark.asyncio
async def test_mock_chat_non_stream(adapter: MockAdapter) -> None:
    request = _chat_request(False, *MESSAGES)
    meter = UsageMeter(request, CHAT)
    events = await _collect(adapter.generate(request, meter, 5.0))

    assert len(events) == 1
    completion = events[0].chat_completion
    assert events[0].WhichOneof("event") == "chat_completion"
    assert completion.object == "chat.completion"
    assert completion.model == "mock-echo"
    assert completion.system_fingerprint == FINGERPRINT
    (choice,) = completion.choices
    assert choice.message.role == "assistant"
    # Echoes the last user message, text parts joined by spaces.
    assert choice.message.content == "[mock] héllo wörld 🌍"
    assert choice.finish_reason == "stop"
    assert completion.usage.completion_tokens == 4
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )

    record = meter.finish(OK)
    assert record.estimated is False
    assert record.completion_tokens == completion.usage.completion_tokens
    assert record.provider_request_id == completion.id


@pytest.mark.asyncio
async def test_mock_chat_stream_matches_non_stream(adapter: MockAdapter) -> None:
    whole_request = _chat_request(False, *MESSAGES)
    (whole,) = await _collect(adapter.generate(whole_request, UsageMeter(whole_request, CHAT), 5.0))
    request = _chat_request(True, *MESSAGES)
    meter = UsageMeter(request, CHAT)
    events = await _collect(adapter.generate(request, meter, 5.0))

    assert all(e.WhichOneof("event") == "chat_chunk" for e in events)
    chunks = [e.chat_chunk for e in events]
    content_chunks, finish, final = chunks[:-2], chunks[-2], chunks[-1]

    assert "".join(c.choices[0].delta.content for c in content_chunks) == (
        whole.chat_completion.choices[0].message.content
    )
    assert content_chunks[0].choices[0].delta.role == "assistant"
    assert not any(c.choices[0].delta.HasField("role") for c in content_chunks[1:])
    assert not any(c.choices[0].HasField("finish_reason") for c in content_chunks)
    assert len({c.id for c in chunks}) == 1

    assert finish.choices[0].finish_reason == "stop"
    assert not finish.choices[0].delta.HasField("content")

    assert not final.choices
    assert final.HasField("usage")
    assert final.usage == whole.chat_completion.usage

    record = meter.finish(OK)
    assert record.stream is True
    assert record.ttft_ms > 0
    assert record.completion_tokens == final.usage.completion_tokens


@pytest.mark.asyncio
async def test_mock_completion_non_stream_and_stream(adapter: MockAdapter) -> None:
    op = usage_pb2.OPERATION_COMPLETION
    whole_request = _completion_request(False, ["once upon", "a time"])
    (whole,) = await _collect(adapter.generate(whole_request, UsageMeter(whole_request, op), 5.0))
    assert whole.completion.choices[0].text == "[mock] once upon a time"
    assert whole.completion.choices[0].finish_reason == "stop"

    request = _completion_request(True, ["once upon", "a time"])
    events = [
        e.completion
        for e in await _collect(adapter.generate(request, UsageMeter(request, op), 5.0))
    ]
    text = "".join(c.choices[0].text for c in events if c.choices)
    assert text == whole.completion.choices[0].text
    assert events[-2].choices[0].finish_reason == "stop"
    assert not events[-1].choices
    assert events[-1].usage == whole.completion.usage


@pytest.mark.asyncio
async def test_mock_chat_without_user_message(adapter: MockAdapter) -> None:
    request = _chat_request(False, {"role": "system", "content": "only system"})
    (event,) = await _collect(adapter.generate(request, UsageMeter(request, CHAT), 5.0))
    assert event.chat_completion.choices[0].message.content == "[mock]"


def _embed_request(inputs: object) -> provider_pb2.CreateEmbeddingRequest:
    request = provider_pb2.CreateEmbeddingRequest(
        request_id="r", target=provider_pb2.Target(provider="mock", upstream_model="mock-embed")
    )
    json_format.ParseDict({"model": "mock-embedding", "input": inputs}, request.params)
    return request


def _vectors(result: openai_pb2.EmbeddingList) -> list[list[float]]:
    return [[v.number_value for v in e.embedding.list_value.values] for e in result.data]


@pytest.mark.asyncio
async def test_mock_embed_is_deterministic_8_dim(adapter: MockAdapter) -> None:
    first = await adapter.embed(_embed_request(["alpha", "beta", "alpha"]), 5.0)
    again = await adapter.embed(_embed_request("beta"), 5.0)

    assert first.object == "list"
    assert first.model == "mock-embed"
    assert [e.index for e in first.data] == [0, 1, 2]
    assert all(e.object == "embedding" for e in first.data)
    vectors = _vectors(first)
    assert all(len(v) == 8 for v in vectors)
    assert all(-1.0 <= x < 1.0 for v in vectors for x in v)
    assert vectors[0] == vectors[2]
    assert vectors[0] != vectors[1]
    assert _vectors(again) == [vectors[1]]
    assert first.usage.prompt_tokens == 3
    assert first.usage.total_tokens == 3
