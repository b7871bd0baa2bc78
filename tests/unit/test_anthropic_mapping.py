"""The anthropic kind's request mapping: OpenAI chat parameters as a Messages body."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from google.protobuf import json_format

from switchboard.common.v1 import openai_pb2
from switchboard_common.errors import SwitchboardError
from switchboard_provider.adapters.anthropic.request import messages_request


def _body(messages: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    params = json_format.ParseDict(
        {"model": "m", "messages": messages} | extra, openai_pb2.ChatCompletionParams()
    )
    return messages_request(params, "claude-up", 4096)


def test_system_images_stops_cache_control_and_output_config() -> None:
    pixel = base64.b64encode(b"\x89PNG fake pixels").decode()
    cached = {"type": "ephemeral"}
    body = _body(
        [
            {
                "role": "system",
                "content": [{"type": "text", "text": "be brief", "cache_control": cached}],
            },
            {"role": "developer", "content": "use plain words"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{pixel}"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.webp"}},
                ],
            },
        ],
        temperature=0.5,
        top_p=0.9,
        max_completion_tokens=50,
        stop=["END", "STOP"],
        user="user-7",
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "a", "schema": {"type": "object"}},
        },
        reasoning_effort="minimal",
    )
    assert body == {
        "model": "claude-up",
        "max_tokens": 50,
        "system": [
            {"type": "text", "text": "be brief", "cache_control": cached},
            {"type": "text", "text": "use plain words"},
        ],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": pixel},
                    },
                    {
                        "type": "image",
                        "source": {"type": "url", "url": "https://example.com/cat.webp"},
                    },
                ],
            }
        ],
        "temperature": 0.5,
        "top_p": 0.9,
        "stop_sequences": ["END", "STOP"],
        "metadata": {"user_id": "user-7"},
        "output_config": {
            "format": {"type": "json_schema", "schema": {"type": "object"}},
            "effort": "low",
        },
    }


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        ("auto", None, {"type": "auto"}),
        ("none", None, {"type": "none"}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        ({"type": "function", "function": {"name": "f"}}, None, {"type": "tool", "name": "f"}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        (None, None, None),
    ],
)
def test_tool_choice(choice: Any, parallel: bool | None, expected: Any) -> None:
    extra: dict[str, Any] = {"tools": [{"type": "function", "function": {"name": "f"}}]}
    if choice is not None:
        extra["tool_choice"] = choice
    if parallel is not None:
        extra["parallel_tool_calls"] = parallel
    body = _body([{"role": "user", "content": "hi"}], **extra)
    assert body["tools"] == [{"name": "f", "input_schema": {"type": "object", "properties": {}}}]
    assert body.get("tool_choice") == expected


@pytest.mark.parametrize(
    ("messages", "extra", "param"),
    [
        ([{"role": "user", "content": "hi"}], {"reasoning_effort": "extreme"}, "reasoning_effort"),
        ([{"role": "user", "content": "hi"}], {"logit_bias": {"1": 1}}, "logit_bias"),
        (
            [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}],
            {},
            "messages",
        ),
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,x"}}]}],
            {},
            "messages",
        ),
        (
            [
                {
                    "role": "assistant",
                    "tool_calls": [
                        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "["}}
                    ],
                }
            ],
            {},
            "messages",
        ),
    ],
)
def test_refusals(messages: list[dict[str, Any]], extra: dict[str, Any], param: str) -> None:
    with pytest.raises(SwitchboardError) as exc:
        _body(messages, **extra)
    assert exc.value.param == param
