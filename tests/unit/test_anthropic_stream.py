"""The anthropic kind's stream mapping, on events the way the SDK parses them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pydantic
import pytest
from anthropic import types

from switchboard.provider.v1 import provider_pb2
from switchboard.usage.v1 import usage_pb2
from switchboard_common.errors import SwitchboardError
from switchboard_provider.adapters.anthropic.response import stream_events
from switchboard_provider.meter import UsageMeter

pytestmark = pytest.mark.asyncio

_EVENTS: pydantic.TypeAdapter[types.RawMessageStreamEvent] = pydantic.TypeAdapter(
    types.RawMessageStreamEvent
)
START: dict[str, Any] = {
    "type": "message_start",
    "message": {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-up",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 5, "cache_read_input_tokens": 3, "output_tokens": 1},
    },
}
THINKING: list[dict[str, Any]] = [
    {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "thinking", "thinking": "", "signature": ""},
    },
    {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "thinking_delta", "thinking": "let me think"},
    },
    {"type": "content_block_stop", "index": 0},
]
TEXT: list[dict[str, Any]] = [
    {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "hi"}},
    {"type": "content_block_stop", "index": 1},
]
END: list[dict[str, Any]] = [
    {
        "type": "message_delta",
        "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
        "usage": {"output_tokens": 9},
    },
    {"type": "message_stop"},
]


async def _events(raw: list[dict[str, Any]]) -> AsyncIterator[types.RawMessageStreamEvent]:
    for item in raw:
        yield _EVENTS.validate_python(item)


def _meter() -> UsageMeter:
    request = provider_pb2.StreamGenerateRequest(stream=True)
    return UsageMeter(request, usage_pb2.OPERATION_CHAT)


async def test_thinking_is_left_out_and_usage_is_cumulative() -> None:
    meter = _meter()
    out = [
        e.chat_chunk async for e in stream_events(_events([START, *THINKING, *TEXT, *END]), meter)
    ]
    assert [c.choices[0].delta.content for c in out[:2]] == ["", "hi"]
    assert out[2].choices[0].finish_reason == "length"
    usage = out[3].usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (8, 9, 17)
    assert usage.prompt_tokens_details.cached_tokens == 3
    record = meter.finish(usage_pb2.USAGE_STATUS_OK)
    assert (record.prompt_tokens, record.cached_tokens, record.estimated) == (8, 3, False)


async def test_a_stream_cut_before_message_stop_is_an_error() -> None:
    meter = _meter()
    received = []
    with pytest.raises(SwitchboardError) as exc:
        async for event in stream_events(_events([START, *TEXT]), meter):
            received.append(event)
    assert exc.value.reason_name == "UPSTREAM_ERROR"
    # The text already sent stays sent; the usage record is left to estimate.
    assert [e.chat_chunk.choices[0].delta.content for e in received] == ["", "hi"]
    assert meter.finish(usage_pb2.USAGE_STATUS_PARTIAL).estimated
