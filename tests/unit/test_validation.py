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


# -- hostile input: the router's half of the edge's defences -------------------------


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param(
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {"name": "get_weather-2", "parameters": {"type": "object"}},
                    }
                ],
                "tool_choice": {"type": "function", "function": {"name": "get_weather-2"}},
            },
            id="tools-and-named-choice",
        ),
        pytest.param({"tool_choice": "required"}, id="tool-choice-required"),
        pytest.param({"response_format": {"type": "json_schema", "json_schema": {}}}, id="schema"),
        pytest.param({"presence_penalty": -2, "frequency_penalty": 2}, id="penalty-bounds"),
        pytest.param({"logit_bias": {"50256": -100, "1": 100}}, id="logit-bias-bounds"),
        pytest.param({"top_logprobs": 20, "logprobs": True}, id="top-logprobs"),
        pytest.param({"metadata": {f"k{i}": "v" * 512 for i in range(16)}}, id="metadata-full"),
        pytest.param({"model": "m" * 256}, id="model-256"),
    ],
)
def test_valid_chat_extras_pass(fields: dict[str, Any]) -> None:
    validate_chat(_chat(**fields))


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        pytest.param({"model": "m" * 257}, "model", id="model-too-long"),
        pytest.param({"presence_penalty": 2.5}, "presence_penalty", id="presence-penalty"),
        pytest.param({"frequency_penalty": "NaN"}, "frequency_penalty", id="frequency-nan"),
        pytest.param({"logit_bias": {"x": 1}}, "logit_bias", id="logit-bias-key"),
        pytest.param({"logit_bias": {"1": 101}}, "logit_bias", id="logit-bias-value"),
        pytest.param({"logit_bias": {"1": "Infinity"}}, "logit_bias", id="logit-bias-inf"),
        pytest.param({"top_logprobs": 21}, "top_logprobs", id="top-logprobs"),
        pytest.param({"tools": [{"type": "code", "function": {"name": "f"}}]}, "tools[0].type"),
        pytest.param(
            {"tools": [{"type": "function", "function": {"name": "a b"}}]},
            "tools[0].function.name",
            id="tool-name",
        ),
        pytest.param(
            {"tools": [{"type": "function", "function": {"name": "f"}}] * 129},
            "tools",
            id="too-many-tools",
        ),
        pytest.param({"tool_choice": "sometimes"}, "tool_choice", id="tool-choice"),
        pytest.param({"response_format": {"type": "xml"}}, "response_format.type", id="format"),
        pytest.param({"response_format": {}}, "response_format.type", id="format-untyped"),
        pytest.param({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata", id="metadata"),
        pytest.param({"metadata": {"k" * 65: "v"}}, "metadata", id="metadata-key-length"),
        pytest.param({"base_url": "http://x"}, None, id="top-level-dropped-not-here"),
    ],
)
def test_invalid_chat_extras_name_the_field(fields: dict[str, Any], param: str | None) -> None:
    if param is None:  # unknown top-level fields never reach the router
        with pytest.raises(json_format.ParseError):
            _chat(**fields)
        return
    assert _rejected_param(validate_chat, _chat(**fields)) == param


def test_response_format_check_does_not_add_a_type() -> None:
    params = _chat(response_format={"json_schema": {}})
    with pytest.raises(SwitchboardError):
        validate_chat(params)
    assert "type" not in params.response_format.fields


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        pytest.param({"metadata": {"api_key": "x"}}, "metadata.api_key", id="metadata"),
        pytest.param(
            {
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "x", "baseUrl": 1}]}
                ]
            },
            "messages[0].content[0].baseUrl",
            id="content-part",
        ),
        pytest.param(
            {"response_format": {"type": "text", "nested": [{"EXTRA-HEADERS": {}}]}},
            "response_format.nested[0].EXTRA-HEADERS",
            id="response-format-nested",
        ),
        pytest.param(
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {"name": "f", "parameters": {"api_base": "http://x"}},
                    }
                ]
            },
            "tools[0].function.parameters.api_base",
            id="tool-schema",
        ),
        pytest.param({"tool_choice": {"extra_query": {}}}, "tool_choice.extra_query", id="choice"),
        pytest.param({"logit_bias": {"extra_body": 1}}, "logit_bias.extra_body", id="map-key"),
    ],
)
def test_upstream_steering_keys_are_refused(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(SwitchboardError) as info:
        validate_chat(_chat(**fields))
    assert info.value.reason == R.ERROR_REASON_INVALID_REQUEST
    assert info.value.param == param
    assert "cannot be set by clients" in info.value.message


def test_non_finite_numbers_in_json_fields_are_refused() -> None:
    params = _chat()
    params.stop.list_value.values.add().number_value = float("nan")
    assert _rejected_param(validate_chat, params) == "stop[0]"
    params = _chat(messages=[{"role": "user", "content": [{"type": "text", "text": "x"}]}])
    params.messages[0].content.list_value.values[0].struct_value.fields["w"].number_value = float(
        "inf"
    )
    assert _rejected_param(validate_chat, params) == "messages[0].content[0].w"


def test_long_client_values_are_not_echoed() -> None:
    with pytest.raises(SwitchboardError) as info:
        validate_chat(_chat(messages=[{"role": "r" * 100_000, "content": "x"}]))
    assert len(info.value.message) < 200
    params = _chat(metadata={"k" * 10_000: "v"})
    with pytest.raises(SwitchboardError) as info:
        validate_chat(params)
    assert len(info.value.message) < 200


def test_messages_too_large_for_the_services_are_413(monkeypatch: pytest.MonkeyPatch) -> None:
    from switchboard_router import validation

    monkeypatch.setattr(validation, "MAX_PARAMS_BYTES", 1000)
    validate_chat(_chat(messages=[{"role": "user", "content": "x" * 900}]))
    with pytest.raises(SwitchboardError) as info:
        validate_chat(_chat(messages=[{"role": "user", "content": "x" * 1000}]))
    assert info.value.reason == R.ERROR_REASON_REQUEST_TOO_LARGE
    assert info.value.http_status == 413
    with pytest.raises(SwitchboardError) as info:
        validate_embedding(_embedding(input="x" * 1000))
    assert info.value.http_status == 413


@pytest.mark.parametrize(
    "prompt",
    [
        pytest.param([[1, 2], "a"], id="mixed"),
        pytest.param([[[1]]], id="too-deep"),
        pytest.param([-1], id="negative-token"),
        pytest.param([1.5], id="fractional-token"),
        pytest.param([True], id="boolean-token"),
        pytest.param([[]], id="empty-token-array"),
        pytest.param([2**32], id="token-too-large"),
    ],
)
def test_invalid_prompt_shapes(prompt: object) -> None:
    assert _rejected_param(validate_completion, _completion(prompt=prompt)) == "prompt"
    assert _rejected_param(validate_embedding, _embedding(input=prompt)) == "input"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        pytest.param({"presence_penalty": -3}, "presence_penalty", id="penalty"),
        pytest.param({"logprobs": 6}, "logprobs", id="logprobs"),
        pytest.param({"best_of": 0}, "best_of", id="best-of"),
        pytest.param({"model": "m" * 257}, "model", id="model-too-long"),
    ],
)
def test_invalid_completion_extras(fields: dict[str, Any], param: str) -> None:
    assert _rejected_param(validate_completion, _completion(**fields)) == param


def test_embedding_limits() -> None:
    validate_embedding(_embedding(input=["x"] * 2048, dimensions=65536))
    assert _rejected_param(validate_embedding, _embedding(input=["x"] * 2049)) == "input"
    assert _rejected_param(validate_embedding, _embedding(dimensions=65537)) == "dimensions"
    assert _rejected_param(validate_embedding, _embedding(model="m" * 257)) == "model"
