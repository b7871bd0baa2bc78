"""Streamed chunk JSON must match OpenAI's byte for byte in shape, order and nulls."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from google.protobuf import json_format

from switchboard.common.v1 import openai_pb2
from switchboard_common.errors import R, SwitchboardError
from switchboard_router.render import (
    DONE,
    chat_chunk,
    completion_chunk,
    error_event,
    is_usage_only,
    sse,
    sse_bodies,
    usage_dict,
)

USAGE = openai_pb2.Usage(prompt_tokens=3, completion_tokens=5, total_tokens=8)


def _chunk(**delta: Any) -> openai_pb2.ChatCompletionChunk:
    chunk = openai_pb2.ChatCompletionChunk(
        id="chatcmpl-1", object="chat.completion.chunk", created=1700000000, model="upstream-x"
    )
    chunk.choices.add(index=0, delta=openai_pb2.ChatCompletionDelta(**delta))
    return chunk


def test_chat_chunk_shape_field_order_and_nulls() -> None:
    out = chat_chunk(_chunk(role="assistant", content="Hi"), "my-model", include_usage=False)
    assert out == {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "my-model",
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "delta": {"role": "assistant", "content": "Hi"},
                "logprobs": None,
                "finish_reason": None,
            }
        ],
    }
    assert list(out) == ["id", "object", "created", "model", "system_fingerprint", "choices"]
    assert list(out["choices"][0]) == ["index", "delta", "logprobs", "finish_reason"]


def test_chat_chunk_uses_the_requested_model_name_not_the_upstream_one() -> None:
    assert chat_chunk(_chunk(content="x"), "alias-name", False)["model"] == "alias-name"


def test_chat_chunk_service_tier_and_fingerprint_when_set() -> None:
    chunk = _chunk(content="x")
    chunk.service_tier = "default"
    chunk.system_fingerprint = "fp_1"
    out = chat_chunk(chunk, "m", False)
    assert list(out)[:6] == [
        "id",
        "object",
        "created",
        "model",
        "service_tier",
        "system_fingerprint",
    ]
    assert out["service_tier"] == "default"
    assert out["system_fingerprint"] == "fp_1"


def test_chat_chunk_finish_reason_and_empty_delta() -> None:
    chunk = _chunk()
    chunk.choices[0].finish_reason = "stop"
    choice = chat_chunk(chunk, "m", False)["choices"][0]
    assert choice["delta"] == {}
    assert choice["finish_reason"] == "stop"


def test_chat_chunk_empty_string_content_is_kept() -> None:
    # The first OpenAI chunk is {"role":"assistant","content":""}: presence, not truthiness.
    delta = chat_chunk(_chunk(role="assistant", content=""), "m", False)["choices"][0]["delta"]
    assert delta == {"role": "assistant", "content": ""}


def test_chat_chunk_refusal_delta() -> None:
    delta = chat_chunk(_chunk(refusal="no"), "m", False)["choices"][0]["delta"]
    assert delta == {"refusal": "no"}


def test_chat_chunk_without_include_usage_has_no_usage_key() -> None:
    chunk = _chunk(content="x")
    chunk.usage.CopyFrom(USAGE)
    assert "usage" not in chat_chunk(chunk, "m", include_usage=False)


def test_chat_chunk_include_usage_is_null_on_content_chunks() -> None:
    out = chat_chunk(_chunk(content="x"), "m", include_usage=True)
    assert "usage" in out
    assert out["usage"] is None
    assert list(out)[-1] == "usage"


def test_chat_chunk_final_usage_chunk() -> None:
    chunk = openai_pb2.ChatCompletionChunk(id="c", created=1, usage=USAGE)
    out = chat_chunk(chunk, "m", include_usage=True)
    assert out["choices"] == []
    assert out["usage"] == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}


def test_usage_dict_includes_details_only_when_present() -> None:
    usage = openai_pb2.Usage(
        prompt_tokens=10,
        completion_tokens=4,
        total_tokens=14,
        prompt_tokens_details=openai_pb2.PromptTokensDetails(cached_tokens=6),
        completion_tokens_details=openai_pb2.CompletionTokensDetails(reasoning_tokens=2),
    )
    assert usage_dict(usage) == {
        "prompt_tokens": 10,
        "completion_tokens": 4,
        "total_tokens": 14,
        "prompt_tokens_details": {"cached_tokens": 6, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 2,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }
    assert list(usage_dict(USAGE)) == ["prompt_tokens", "completion_tokens", "total_tokens"]


def test_chat_chunk_tool_call_deltas() -> None:
    first = openai_pb2.ToolCallDelta(
        index=0,
        id="call_1",
        type="function",
        function=openai_pb2.FunctionCallDelta(name="get_weather", arguments=""),
    )
    later = openai_pb2.ToolCallDelta(
        index=0, function=openai_pb2.FunctionCallDelta(arguments='{"city":')
    )
    second_call = openai_pb2.ToolCallDelta(index=1, id="call_2")
    out_first = chat_chunk(_chunk(role="assistant", tool_calls=[first]), "m", False)
    out_later = chat_chunk(_chunk(tool_calls=[later, second_call]), "m", False)

    assert out_first["choices"][0]["delta"] == {
        "role": "assistant",
        "tool_calls": [
            {
                "index": 0,
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": ""},
            }
        ],
    }
    assert out_later["choices"][0]["delta"] == {
        "tool_calls": [
            {"index": 0, "function": {"arguments": '{"city":'}},
            {"index": 1, "id": "call_2"},
        ]
    }


def test_chat_chunk_logprobs_pass_through() -> None:
    chunk = _chunk(content="h")
    json_format.ParseDict({"content": [{"token": "h", "logprob": -0.5}]}, chunk.choices[0].logprobs)
    logprobs = chat_chunk(chunk, "m", False)["choices"][0]["logprobs"]
    assert logprobs == {"content": [{"token": "h", "logprob": -0.5}]}


def test_chat_chunk_logprob_bytes_stay_integers() -> None:
    chunk = _chunk(content="h")
    json_format.ParseDict(
        {"content": [{"token": "h", "logprob": -0.5, "bytes": [104], "top_logprobs": []}]},
        chunk.choices[0].logprobs,
    )
    assert b'"bytes":[104]' in sse(chat_chunk(chunk, "m", False))


def test_sse_framing_is_exact_compact_json() -> None:
    payload = {"a": 1, "b": [1, 2], "c": None, "d": {"e": "f"}}
    assert sse(payload) == b'data: {"a":1,"b":[1,2],"c":null,"d":{"e":"f"}}\n\n'


def test_sse_keeps_non_ascii_as_utf8() -> None:
    framed = sse({"content": "héllo 世界 🎉"})
    assert framed == 'data: {"content":"héllo 世界 🎉"}\n\n'.encode()
    assert b"\\u" not in framed


def test_sse_of_a_chunk_round_trips_through_json() -> None:
    out = chat_chunk(_chunk(content='quote " and\nnewline'), "m", True)
    framed = sse(out)
    assert framed.startswith(b"data: ")
    assert framed.endswith(b"\n\n")
    assert framed.count(b"\n") == 2
    assert json.loads(framed[len(b"data: ") : -2]) == out


def test_error_event_is_openai_error_body() -> None:
    err = SwitchboardError(R.ERROR_REASON_UPSTREAM_ERROR, "upstream broke")
    framed = error_event(err)
    assert json.loads(framed[len(b"data: ") : -2]) == err.openai_body()


def test_completion_chunk_shape() -> None:
    chunk = openai_pb2.Completion(id="cmpl-1", created=5, model="up")
    chunk.choices.add(text="Hello", index=0)
    out = completion_chunk(chunk, "m", include_usage=False)
    assert out == {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 5,
        "model": "m",
        "system_fingerprint": None,
        "choices": [{"text": "Hello", "index": 0, "logprobs": None, "finish_reason": None}],
    }
    assert list(out["choices"][0]) == ["text", "index", "logprobs", "finish_reason"]


def test_completion_chunk_usage_handling() -> None:
    content = openai_pb2.Completion(id="c")
    content.choices.add(text="x", finish_reason="length")
    final = openai_pb2.Completion(id="c", usage=USAGE)

    assert completion_chunk(content, "m", True)["usage"] is None
    assert completion_chunk(content, "m", True)["choices"][0]["finish_reason"] == "length"
    assert completion_chunk(final, "m", True)["usage"] == usage_dict(USAGE)
    assert "usage" not in completion_chunk(final, "m", False)


def _with_usage(
    chunk: openai_pb2.ChatCompletionChunk | openai_pb2.Completion,
) -> openai_pb2.ChatCompletionChunk | openai_pb2.Completion:
    chunk.usage.CopyFrom(USAGE)
    return chunk


@pytest.mark.parametrize(
    ("chunk", "expected"),
    [
        pytest.param(openai_pb2.ChatCompletionChunk(usage=USAGE), True, id="chat-usage-only"),
        pytest.param(openai_pb2.Completion(usage=USAGE), True, id="completion-usage-only"),
        pytest.param(_with_usage(_chunk(content="x")), False, id="chat-choices-and-usage"),
        pytest.param(_chunk(content="x"), False, id="chat-choices-only"),
        pytest.param(openai_pb2.ChatCompletionChunk(), False, id="chat-empty"),
        # An all-zero Usage that is set still counts: presence, not value.
        pytest.param(
            openai_pb2.ChatCompletionChunk(usage=openai_pb2.Usage()), True, id="zero-usage"
        ),
    ],
)
def test_is_usage_only(
    chunk: openai_pb2.ChatCompletionChunk | openai_pb2.Completion, expected: bool
) -> None:
    assert is_usage_only(chunk) is expected


async def _frames(
    items: list[tuple[str, dict[str, Any]] | SwitchboardError],
) -> tuple[list[bytes], list[str]]:
    """What sse_bodies sends for `items` (an error raises where it stands),
    and who on_start was told served the stream."""
    started: list[str] = []

    async def chunks() -> AsyncIterator[tuple[str, dict[str, Any]]]:
        for item in items:
            if isinstance(item, SwitchboardError):
                raise item
            yield item

    async def on_start(source: str) -> None:
        started.append(source)

    bodies = [body async for body in sse_bodies(chunks(), on_start)]
    assert {body.content_type for body in bodies} <= {"text/event-stream"}
    return [body.data for body in bodies], started


@pytest.mark.asyncio
async def test_sse_bodies_frame_each_chunk_then_done() -> None:
    frames, started = await _frames([("dep-a", {"n": 1}), ("dep-a", {"n": 2})])
    assert frames == [sse({"n": 1}), sse({"n": 2}), DONE]
    assert started == ["dep-a"]


@pytest.mark.asyncio
async def test_sse_bodies_error_before_the_first_byte_propagates() -> None:
    refused = SwitchboardError(R.ERROR_REASON_RATE_LIMITED, "slow down")
    with pytest.raises(SwitchboardError) as info:
        await _frames([refused])
    assert info.value is refused


@pytest.mark.asyncio
async def test_sse_bodies_error_after_the_first_byte_is_an_error_event() -> None:
    broke = SwitchboardError(R.ERROR_REASON_UPSTREAM_ERROR, "upstream broke")
    frames, started = await _frames([("dep-a", {"n": 1}), broke])
    # No [DONE]: the client must not take a broken stream for a whole one.
    assert frames == [sse({"n": 1}), error_event(broke)]
    assert started == ["dep-a"]
