"""Front-door validation: good requests pass, each bad one names its field."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import json_format

from switchboard.common.v1 import openai_pb2
from switchboard_common.errors import R, SwitchboardError
from switchboard_router.validation import (
    MAX_MESSAGES,
    validate_chat,
    validate_completion,
    validate_embedding,
)

USER = {"role": "user", "content": "hi"}


def _chat(**fields: Any) -> openai_pb2.ChatCompletionParams:
    body: dict[str, Any] = {"model": "m", "messages": [USER]}
    body.update(fields)
    return json_format.ParseDict(body, openai_pb2.ChatCompletionParams())


def _completion(**fields: Any) -> openai_pb2.CompletionParams:
    body: dict[str, Any] = {"model": "m", "prompt": "Once upon a time"}
    body.update(fields)
    return json_format.ParseDict(body, openai_pb2.CompletionParams())


def _embedding(**fields: Any) -> openai_pb2.EmbeddingParams:
    body: dict[str, Any] = {"model": "m", "input": "hello"}
    body.update(fields)
    return json_format.ParseDict(body, openai_pb2.EmbeddingParams())


def _rejected_param(call: Any, params: Any) -> str | None:
    with pytest.raises(SwitchboardError) as info:
        call(params)
    assert info.value.reason == R.ERROR_REASON_INVALID_REQUEST
    assert info.value.http_status == 400
    assert info.value.message
    return info.value.param


def test_chat_built_field_by_field_is_valid() -> None:
    params = openai_pb2.ChatCompletionParams(model="m")
    message = params.messages.add(role="user")
    message.content.string_value = "hello"
    validate_chat(params)


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({}, id="minimal"),
        pytest.param(
            {
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "developer", "content": "really"},
                    {"role": "user", "content": "weather?"},
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {
                                "id": "c1",
                                "type": "function",
                                "function": {"name": "w", "arguments": "{}"},
                            }
                        ],
                    },
                    {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
                    {"role": "assistant", "content": None},
                ]
            },
            id="every-role-and-null-assistant-content",
        ),
        pytest.param(
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "what is this"},
                            {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}},
                            {"type": "image_url", "image_url": {"url": "http://x.test/a.png"}},
                            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}},
                            {"type": "input_audio", "input_audio": {"data": "AA", "format": "wav"}},
                            {"type": "file", "file": {"file_id": "f"}},
                        ],
                    }
                ]
            },
            id="content-parts",
        ),
        pytest.param(
            {"temperature": 0, "top_p": 1, "n": 16, "max_tokens": 1, "stop": "\n"},
            id="bounds-inclusive",
        ),
        pytest.param({"temperature": 2, "top_p": 0, "n": 1}, id="other-bounds"),
        pytest.param({"max_completion_tokens": 1_000_000}, id="max-completion-tokens-limit"),
        pytest.param({"stop": ["a", "b", "c", "d"]}, id="four-stops"),
        pytest.param({"stop": None}, id="null-stop"),
    ],
)
def test_valid_chat_passes(fields: dict[str, Any]) -> None:
    validate_chat(_chat(**fields))


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        pytest.param({"model": ""}, "model", id="empty-model"),
        pytest.param({"model": "   "}, "model", id="blank-model"),
        pytest.param({"messages": []}, "messages", id="no-messages"),
        pytest.param(
            {"messages": [USER, {"role": "robot", "content": "x"}]},
            "messages[1].role",
            id="bad-role",
        ),
        pytest.param(
            {"messages": [{"role": "", "content": "x"}]}, "messages[0].role", id="no-role"
        ),
        pytest.param(
            {"messages": [{"role": "user", "content": 42}]},
            "messages[0].content",
            id="content-number",
        ),
        pytest.param(
            {"messages": [{"role": "user", "content": {"text": "x"}}]},
            "messages[0].content",
            id="content-object",
        ),
        pytest.param(
            {"messages": [{"role": "user", "content": True}]},
            "messages[0].content",
            id="content-bool",
        ),
        pytest.param({"messages": [{"role": "user"}]}, "messages[0].content", id="user-no-content"),
        pytest.param(
            {"messages": [{"role": "system"}]}, "messages[0].content", id="system-no-content"
        ),
        pytest.param(
            {"messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]},
            "messages[0].content[0]",
            id="text-part-non-string",
        ),
        pytest.param(
            {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
            "messages[0].content[0]",
            id="text-part-missing-text",
        ),
        pytest.param(
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, "b"]}]},
            "messages[0].content[1]",
            id="part-not-object",
        ),
        pytest.param(
            {"messages": [{"role": "user", "content": [{"type": "video", "video": {}}]}]},
            "messages[0].content[0]",
            id="unknown-part-type",
        ),
        pytest.param(
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}
                        ],
                    }
                ]
            },
            "messages[0].content[0]",
            id="image-file-url",
        ),
        pytest.param(
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": "data:text/html,<b>"}}
                        ],
                    }
                ]
            },
            "messages[0].content[0]",
            id="image-non-image-data-url",
        ),
        pytest.param(
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": "https://x"}]}
                ]
            },
            "messages[0].content[0]",
            id="image-url-not-object",
        ),
        pytest.param({"n": 0}, "n", id="n-zero"),
        pytest.param({"n": 17}, "n", id="n-too-big"),
        pytest.param({"max_tokens": 0}, "max_tokens", id="max-tokens-zero"),
        pytest.param({"max_tokens": -5}, "max_tokens", id="max-tokens-negative"),
        pytest.param({"max_tokens": 1_000_001}, "max_tokens", id="max-tokens-huge"),
        pytest.param(
            {"max_completion_tokens": 0}, "max_completion_tokens", id="max-completion-tokens-zero"
        ),
        pytest.param({"temperature": -0.1}, "temperature", id="temperature-negative"),
        pytest.param({"temperature": 2.01}, "temperature", id="temperature-too-high"),
        pytest.param({"temperature": "NaN"}, "temperature", id="temperature-nan"),
        pytest.param({"top_p": 1.5}, "top_p", id="top-p-too-high"),
        pytest.param({"stop": ["a", "b", "c", "d", "e"]}, "stop", id="five-stops"),
        pytest.param({"stop": ["a", 1]}, "stop", id="stop-non-string"),
        pytest.param({"stop": 7}, "stop", id="stop-number"),
    ],
)
def test_invalid_chat_names_the_field(fields: dict[str, Any], param: str) -> None:
    assert _rejected_param(validate_chat, _chat(**fields)) == param


def test_chat_message_count_limit() -> None:
    validate_chat(_chat(messages=[USER] * MAX_MESSAGES))
    assert _rejected_param(validate_chat, _chat(messages=[USER] * (MAX_MESSAGES + 1))) == "messages"


def test_chat_bad_role_message_lists_allowed_roles() -> None:
    with pytest.raises(SwitchboardError, match=r"must be one of .*user.*got 'robot'"):
        validate_chat(_chat(messages=[{"role": "robot", "content": "x"}]))


@pytest.mark.parametrize(
    "prompt",
    [
        pytest.param("text", id="string"),
        pytest.param(["a", "b"], id="strings"),
        pytest.param([1, 2, 3], id="tokens"),
        pytest.param([[1, 2], [3]], id="token-arrays"),
    ],
)
def test_valid_completion_prompts(prompt: object) -> None:
    validate_completion(_completion(prompt=prompt))


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        pytest.param({"model": ""}, "model", id="empty-model"),
        pytest.param({"prompt": None}, "prompt", id="null-prompt"),
        pytest.param({"prompt": []}, "prompt", id="empty-array"),
        pytest.param({"prompt": 5}, "prompt", id="number"),
        pytest.param({"prompt": [{"a": 1}]}, "prompt", id="array-of-objects"),
        pytest.param({"max_tokens": 0}, "max_tokens", id="max-tokens-zero"),
        pytest.param({"n": 0}, "n", id="n-zero"),
        pytest.param({"temperature": 3}, "temperature", id="temperature"),
        pytest.param({"stop": ["1", "2", "3", "4", "5"]}, "stop", id="five-stops"),
    ],
)
def test_invalid_completion_names_the_field(fields: dict[str, Any], param: str) -> None:
    assert _rejected_param(validate_completion, _completion(**fields)) == param


def test_completion_without_prompt_is_rejected() -> None:
    assert _rejected_param(validate_completion, openai_pb2.CompletionParams(model="m")) == "prompt"


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({}, id="string"),
        pytest.param({"input": ["a", "b"]}, id="strings"),
        pytest.param({"input": [1, 2]}, id="tokens"),
        pytest.param({"encoding_format": "float"}, id="float"),
        pytest.param({"encoding_format": "base64"}, id="base64"),
        pytest.param({"dimensions": 8}, id="dimensions"),
    ],
)
def test_valid_embedding_passes(fields: dict[str, Any]) -> None:
    validate_embedding(_embedding(**fields))


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        pytest.param({"model": " "}, "model", id="blank-model"),
        pytest.param({"input": []}, "input", id="empty-array"),
        pytest.param({"input": None}, "input", id="null-input"),
        pytest.param({"input": {"a": 1}}, "input", id="object-input"),
        pytest.param({"encoding_format": "int8"}, "encoding_format", id="bad-encoding-format"),
        pytest.param({"encoding_format": "FLOAT"}, "encoding_format", id="encoding-format-case"),
        pytest.param({"dimensions": 0}, "dimensions", id="dimensions-zero"),
    ],
)
def test_invalid_embedding_names_the_field(fields: dict[str, Any], param: str) -> None:
    assert _rejected_param(validate_embedding, _embedding(**fields)) == param


def test_embedding_without_input_is_rejected() -> None:
    assert _rejected_param(validate_embedding, openai_pb2.EmbeddingParams(model="m")) == "input"


def test_embedding_empty_string_input_is_rejected() -> None:
    assert _rejected_param(validate_embedding, _embedding(input="")) == "input"
