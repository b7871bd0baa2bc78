"""The record of an attempt cut short counts what the caller was sent."""

from __future__ import annotations

from switchboard.provider.v1 import provider_pb2
from switchboard.usage.v1 import usage_pb2
from switchboard_router.cut_short import CutShort


def _request(stream: bool = True) -> provider_pb2.StreamGenerateRequest:
    request = provider_pb2.StreamGenerateRequest(request_id="r1", attempt=2, stream=stream)
    request.target.provider = "p"
    request.target.deployment_id = "d"
    request.target.upstream_model = "m"
    request.chat.model = "chat"
    request.chat.messages.add(role="user").content.string_value = "twelve chars"
    return request


def test_a_stream_cut_after_two_chunks_counts_them() -> None:
    seen = CutShort(_request())
    for text in ("", "abcd", "efgh"):
        event = provider_pb2.StreamGenerateResponse()
        event.chat_chunk.choices.add().delta.content = text
        seen.saw(event)
    record = seen.record()
    assert (record.prompt_tokens, record.completion_tokens, record.total_tokens) == (3, 2, 5)
    assert record.status == usage_pb2.USAGE_STATUS_CANCELLED
    assert record.operation == usage_pb2.OPERATION_CHAT
    assert record.estimated
    assert record.stream
    assert (record.request_id, record.attempt, record.deployment_id) == ("r1", 2, "d")
    assert (record.provider, record.upstream_model) == ("p", "m")
    assert record.event_id
    assert record.latency_ms >= record.ttft_ms > 0


def test_tool_call_arguments_and_completions_count_too() -> None:
    seen = CutShort(_request(stream=False))
    event = provider_pb2.StreamGenerateResponse()
    call = event.chat_completion.choices.add().message.tool_calls.add()
    call.function.arguments = '{"city": "Oslo"}'
    seen.saw(event)
    assert seen.record().completion_tokens == 4

    request = provider_pb2.StreamGenerateRequest(request_id="r2")
    request.completion.prompt.string_value = "abcdefgh"
    seen = CutShort(request)
    event = provider_pb2.StreamGenerateResponse()
    event.completion.choices.add().text = "abcde"
    seen.saw(event)
    record = seen.record()
    assert (record.operation, record.prompt_tokens, record.completion_tokens) == (
        usage_pb2.OPERATION_COMPLETION,
        2,
        2,
    )


def test_nothing_sent_counts_the_prompt_only() -> None:
    record = CutShort(_request()).record()
    assert (record.prompt_tokens, record.completion_tokens, record.ttft_ms) == (3, 0, 0)
