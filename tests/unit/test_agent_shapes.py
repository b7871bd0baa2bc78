"""The agent APIs' mappings onto the canonical chat shapes (Messages and
Responses requests in, chat answers out)."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import json_format

from switchboard.common.v1 import openai_pb2
from switchboard.usage.v1 import usage_pb2
from switchboard_common.errors import SwitchboardError
from switchboard_router.surfaces import anthropic_shapes, responses_shapes

SCHEMA: Any = {"type": "object", "properties": {"city": {"type": "string"}}}


def _dict(params: openai_pb2.ChatCompletionParams) -> dict[str, Any]:
    return json_format.MessageToDict(params, preserving_proto_field_name=True)


def test_a_messages_request_becomes_chat_params() -> None:
    params = anthropic_shapes.chat_params(
        {
            "model": "m",
            "max_tokens": 64,
            "system": [{"type": "text", "text": "Be brief."}],
            "stop_sequences": ["END"],
            "tools": [{"name": "get_weather", "input_schema": SCHEMA}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
            "metadata": {"user_id": "u1"},
            "messages": [
                {"role": "user", "content": "weather?"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "text", "text": "Looking."},
                        {
                            "type": "tool_use",
                            "id": "t1",
                            "name": "get_weather",
                            "input": {"city": "Oslo"},
                        },
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "t1",
                            "content": [{"type": "text", "text": "sunny"}],
                        },
                        {"type": "text", "text": "thanks"},
                    ],
                },
            ],
        }
    )
    out = _dict(params)
    assert [m["role"] for m in out["messages"]] == ["system", "user", "assistant", "tool", "user"]
    assert out["messages"][2]["tool_calls"][0]["function"] == {
        "name": "get_weather",
        "arguments": '{"city":"Oslo"}',
    }
    assert out["messages"][3] == {"role": "tool", "tool_call_id": "t1", "content": "sunny"}
    assert out["tool_choice"] == "required"
    assert out["parallel_tool_calls"] is False
    assert out["stop"] == ["END"]
    assert out["user"] == "u1"
    assert out["tools"][0]["function"]["parameters"] == SCHEMA


@pytest.mark.parametrize(
    "request_",
    [
        {"model": "m", "messages": [{"role": "user", "content": "x"}]},  # no max_tokens
        {"model": "m", "max_tokens": 5, "messages": []},
        {"model": "m", "max_tokens": 5, "messages": [{"role": "robot", "content": "x"}]},
        {
            "model": "m",
            "max_tokens": 5,
            "messages": [{"role": "user", "content": "x"}],
            "tools": [{"type": "web_search_20250305", "name": "web_search"}],
        },
    ],
)
def test_bad_messages_requests_are_400s(request_: dict[str, Any]) -> None:
    with pytest.raises(SwitchboardError) as refused:
        anthropic_shapes.chat_params(request_)
    status, body = anthropic_shapes.error(refused.value)
    assert status == 400
    assert body["error"]["type"] == "invalid_request_error"


def test_a_chat_answer_becomes_a_message_with_anthropic_usage() -> None:
    answer = json_format.ParseDict(
        {
            "choices": [
                {
                    "message": {
                        "role": "assistant",
                        "tool_calls": [
                            {
                                "id": "c1",
                                "type": "function",
                                "function": {"name": "f", "arguments": '{"a": 1}'},
                            }
                        ],
                    },
                    "finish_reason": "tool_calls",
                }
            ],
            "usage": {
                "prompt_tokens": 100,
                "completion_tokens": 7,
                "prompt_tokens_details": {"cached_tokens": 60},
            },
        },
        openai_pb2.ChatCompletion(),
    )
    record = usage_pb2.UsageRecord(cache_write_tokens=30)
    message = anthropic_shapes.message(answer, "m", [record])
    assert message["stop_reason"] == "tool_use"
    assert message["content"] == [{"type": "tool_use", "id": "c1", "name": "f", "input": {"a": 1}}]
    assert message["usage"] == {
        "input_tokens": 10,
        "output_tokens": 7,
        "cache_read_input_tokens": 60,
        "cache_creation_input_tokens": 30,
    }


def test_no_deployment_is_anthropics_overloaded() -> None:
    from switchboard_common.errors import R

    status, body = anthropic_shapes.error(
        SwitchboardError(R.ERROR_REASON_NO_HEALTHY_DEPLOYMENT, "none")
    )
    assert (status, body["error"]["type"]) == (529, "overloaded_error")


def test_responses_items_become_chat_messages() -> None:
    items = responses_shapes.input_items(
        {
            "input": [
                {"role": "developer", "content": "rules"},
                {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "hi"}],
                },
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "one"},
                {"type": "function_call_output", "call_id": "c2", "output": "two"},
            ]
        }
    )
    assert all(item["id"] for item in items)
    history = [{"role": "user", "content": "before"}]
    params = responses_shapes.chat_params(
        {
            "model": "m",
            "instructions": "sys",
            "max_output_tokens": 9,
            "tools": [{"type": "function", "name": "f", "parameters": SCHEMA}],
            "tool_choice": {"type": "function", "name": "f"},
        },
        history,
        items,
    )
    out = _dict(params)
    roles = [m["role"] for m in out["messages"]]
    assert roles == ["system", "user", "system", "user", "assistant", "tool", "tool"]
    assert [c["id"] for c in out["messages"][4]["tool_calls"]] == ["c1", "c2"]
    assert out["max_tokens"] == 9
    assert out["tool_choice"] == {"type": "function", "function": {"name": "f"}}


def test_hosted_tools_are_refused() -> None:
    with pytest.raises(SwitchboardError):
        responses_shapes.chat_params(
            {"model": "m", "tools": [{"type": "web_search"}]},
            [],
            responses_shapes.input_items({"input": "x"}),
        )
