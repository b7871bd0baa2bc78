"""The Responses API's native pass-through, its pure parts: which upstreams
serve it, the canonical chunks and answer made from the upstream's events and
response object, and what the surface sends up and passes back."""

from __future__ import annotations

import contextvars
import json
from typing import Any

from switchboard.provider.v1 import provider_pb2
from switchboard_common.config import ProviderConfig
from switchboard_provider.adapters import openai_responses as upstream
from switchboard_router import native
from switchboard_router.surfaces import responses_native

USAGE: Any = {
    "input_tokens": 11,
    "input_tokens_details": {"cached_tokens": 4},
    "output_tokens": 9,
    "output_tokens_details": {"reasoning_tokens": 3},
    "total_tokens": 20,
}


def _request(api: int = provider_pb2.NATIVE_API_OPENAI_RESPONSES) -> Any:
    request = provider_pb2.StreamGenerateRequest()
    request.chat.model = "m"
    request.native.api = api  # type: ignore[assignment]
    request.native.body = b'{"model": "m", "input": "hi"}'
    return request


def test_only_upstreams_configured_for_it_serve_the_api_natively() -> None:
    plain = ProviderConfig(name="p", kind="openai", base_url="http://x")
    native_config = ProviderConfig(
        name="p", kind="openai", base_url="http://x", options={"responses": "native"}
    )
    assert upstream.serves(native_config, _request())
    assert not upstream.serves(plain, _request())
    assert not upstream.serves(native_config, _request(provider_pb2.NATIVE_API_UNSPECIFIED))


def test_usage_maps_cached_and_reasoning_tokens() -> None:
    usage = upstream.usage(USAGE)
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (11, 9, 20)
    assert usage.prompt_tokens_details.cached_tokens == 4
    assert usage.completion_tokens_details.reasoning_tokens == 3


def test_a_whole_response_as_the_canonical_answer() -> None:
    response = {
        "id": "resp_1",
        "created_at": 5,
        "model": "up",
        "status": "completed",
        "output": [
            {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "x"},
            {"type": "message", "content": [{"type": "output_text", "text": "Hi "}]},
            {"type": "message", "content": [{"type": "output_text", "text": "there"}]},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        ],
        "usage": USAGE,
    }
    answer = upstream.completion(response)
    [choice] = answer.choices
    assert choice.message.content == "Hi there"
    assert [(c.id, c.function.name, c.function.arguments) for c in choice.message.tool_calls] == [
        ("c1", "f", "{}")
    ]
    assert choice.finish_reason == "tool_calls"
    assert answer.usage.completion_tokens_details.reasoning_tokens == 3
    truncated = {**response, "status": "incomplete", "output": response["output"][:2]}
    truncated["incomplete_details"] = {"reason": "max_output_tokens"}
    assert upstream.completion(truncated).choices[0].finish_reason == "length"


def test_stream_events_as_canonical_chunks() -> None:
    chunks = upstream._Chunks()
    events: list[Any] = [
        {"type": "response.created", "response": {"id": "resp_9"}},
        {"type": "response.output_item.added", "item": {"type": "reasoning", "id": "rs"}},
        {"type": "response.output_text.delta", "item_id": "m", "delta": "Hel"},
        {
            "type": "response.output_item.added",
            "item": {"type": "function_call", "id": "fc_a", "call_id": "c_a", "name": "f"},
        },
        {
            "type": "response.output_item.added",
            "item": {"type": "function_call", "id": "fc_b", "call_id": "c_b", "name": "g"},
        },
        {"type": "response.function_call_arguments.delta", "item_id": "fc_b", "delta": '{"x"'},
        {"type": "response.function_call_arguments.delta", "item_id": "fc_a", "delta": "{}"},
        {"type": "response.completed", "response": {"status": "completed", "usage": USAGE}},
    ]
    created, reasoning, text, call_a, call_b, args_b, args_a, done = map(chunks.of, events)
    assert created.id == "resp_9"
    assert created.choices[0].delta.role == "assistant"
    assert not reasoning.choices  # nothing canonical: the native event travels alone
    assert text.choices[0].delta.content == "Hel"
    assert [(c.index, c.id, c.function.name) for c in call_a.choices[0].delta.tool_calls] == [
        (0, "c_a", "f")
    ]
    assert call_b.choices[0].delta.tool_calls[0].index == 1
    assert args_b.choices[0].delta.tool_calls[0].index == 1
    assert args_a.choices[0].delta.tool_calls[0].function.arguments == "{}"
    assert done.choices[0].finish_reason == "tool_calls"
    assert done.usage.prompt_tokens_details.cached_tokens == 4


def test_the_surface_sends_the_whole_conversation_and_asks_the_upstream_not_to_store() -> None:
    thread: list[Any] = [
        {"type": "message", "id": "msg_ours", "role": "user", "content": [{"type": "input_text"}]},
        # Reasoning without its encrypted content cannot go back to a store-less upstream.
        {"type": "reasoning", "id": "rs_bare", "summary": []},
        {"type": "reasoning", "id": "rs_up", "encrypted_content": "e", "summary": []},
        {
            "type": "function_call",
            "id": "fc_up",
            "call_id": "c",
            "name": "f",
            "status": "completed",
        },
        {"type": "function_call_output", "id": "item_ours", "call_id": "c", "output": "ok"},
    ]
    request = {
        "model": "m",
        "input": "x",
        "previous_response_id": "resp_1",
        "stream": True,
        "include": ["message.output_text.logprobs"],
    }

    def offer() -> tuple[native.NativeCall | None, native.NativeCall | None]:
        call = responses_native.offer(request, thread)
        return call, native.current()

    # In a context of its own, as each RPC's task has: the offer is the RPC's only.
    call, current = contextvars.copy_context().run(offer)
    assert call is not None
    assert current is call
    assert native.current() is None
    assert call.request.api == provider_pb2.NATIVE_API_OPENAI_RESPONSES
    body = json.loads(call.request.body)
    assert body["store"] is False
    assert body["include"] == ["message.output_text.logprobs", "reasoning.encrypted_content"]
    assert "previous_response_id" not in body
    assert "stream" not in body
    # Only reasoning items keep their ids (their encrypted content needs them).
    assert [item.get("id") for item in body["input"]] == [None, "rs_up", None, None]
    assert "status" not in body["input"][2]
    # A conversation stored without its items cannot go natively.
    assert contextvars.copy_context().run(responses_native.offer, request, None) is None


def test_the_native_stream_is_passed_on_as_ours_with_the_end_held_back() -> None:
    request = {"model": "alias", "previous_response_id": "resp_prev", "store": True}
    stream = responses_native.NativeStream(request, "resp_ours")
    snapshot = {"id": "resp_up", "model": "up-model", "output": [], "store": False}
    item = {"type": "message", "id": "msg_1"}
    bodies = stream.events(
        [
            {"type": "response.created", "sequence_number": 0, "response": snapshot},
            {"type": "response.output_item.done", "sequence_number": 1, "item": item},
            {
                "type": "response.completed",
                "sequence_number": 2,
                "response": {**snapshot, "output": [item]},
            },
        ]
    )
    assert len(bodies) == 2
    name, data = bodies[0].data.decode().split("\n")[:2]
    assert name == "event: response.created"
    created = json.loads(data.removeprefix("data: "))
    assert created["response"]["id"] == "resp_ours"
    assert created["response"]["model"] == "alias"
    assert created["response"]["previous_response_id"] == "resp_prev"
    assert created["response"]["store"] is True
    assert stream.final is not None
    assert stream.final["id"] == "resp_ours"
    assert stream.final_event is not None
    assert b"event: response.completed" in stream.final_event.data
    failed = json.loads(stream.failed("E", "broke").data.decode().split("data: ")[1])
    assert failed["sequence_number"] == 3
    assert failed["response"]["output"] == [item]
    assert failed["response"]["error"] == {"code": "E", "message": "broke"}


def test_encrypted_reasoning_is_kept_but_shown_only_when_asked() -> None:
    reasoning = {"type": "reasoning", "id": "rs", "summary": [], "encrypted_content": "e"}
    other = {"type": "message", "encrypted_content": "not reasoning: left alone"}
    event = {"type": "response.output_item.done", "sequence_number": 0, "item": reasoning}
    assert responses_native.shown([reasoning, other], {}) == [
        {"type": "reasoning", "id": "rs", "summary": []},
        other,
    ]
    asked = {"include": ["reasoning.encrypted_content"]}
    assert responses_native.shown([reasoning], asked) == [reasoning]
    stream = responses_native.NativeStream({"model": "m"}, "resp_1")
    [body] = stream.events([event])
    assert b"encrypted_content" not in body.data
    assert stream.output == [reasoning]  # the conversation keeps it
