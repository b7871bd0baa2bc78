"""Typed content (content_text / content_parts) and the Value fields' kinds: the
router turns typed content into the JSON form before validation, and refuses a
Value with no kind, or of a kind its field cannot take, naming the field."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from google.protobuf import json_format, struct_pb2
from google.rpc import error_details_pb2

from switchboard.common.v1 import openai_pb2
from switchboard_common.errors import R, SwitchboardError
from switchboard_common.values import to_python
from switchboard_router.validation import validate_chat, validate_completion, validate_embedding


def _params(*messages: openai_pb2.ChatMessage) -> openai_pb2.ChatCompletionParams:
    return openai_pb2.ChatCompletionParams(model="m", messages=list(messages))


def _refused(validate: Any, params: Any) -> SwitchboardError:
    with pytest.raises(SwitchboardError) as info:
        validate(params)
    assert info.value.reason == R.ERROR_REASON_INVALID_REQUEST
    # The google.rpc.Status a gRPC caller gets names the field in its ErrorInfo.
    status = info.value.to_status()
    assert status.code == 3  # INVALID_ARGUMENT
    return info.value


def _error_info_param(err: SwitchboardError) -> str:
    for detail in err.to_status().details:
        found = error_details_pb2.ErrorInfo()
        if detail.Unpack(found):
            param: str = found.metadata["param"]
            return param
    raise AssertionError("no ErrorInfo")


def test_content_text_becomes_the_json_string() -> None:
    params = _params(openai_pb2.ChatMessage(role="user", content_text="hi"))
    validate_chat(params)
    msg = params.messages[0]
    assert msg.WhichOneof("typed_content") is None
    assert to_python(msg.content) == "hi"


def test_content_parts_become_openai_parts() -> None:
    parts = openai_pb2.ContentParts(
        parts=[
            openai_pb2.ContentPart(text="what is this?"),
            openai_pb2.ContentPart(
                image_url=openai_pb2.ImageUrl(url="https://x.test/a.png", detail="low")
            ),
            openai_pb2.ContentPart(input_audio=openai_pb2.InputAudio(data=b"RIFF", format="wav")),
            openai_pb2.ContentPart(
                file=openai_pb2.FileInput(
                    filename="a.pdf", data=b"%PDF-1.4", mime_type="application/pdf"
                )
            ),
            openai_pb2.ContentPart(file=openai_pb2.FileInput(file_id="file-1")),
        ]
    )
    params = _params(openai_pb2.ChatMessage(role="user", content_parts=parts))
    validate_chat(params)
    assert to_python(params.messages[0].content) == [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "https://x.test/a.png", "detail": "low"}},
        {
            "type": "input_audio",
            "input_audio": {"data": base64.b64encode(b"RIFF").decode(), "format": "wav"},
        },
        {
            "type": "file",
            "file": {
                "filename": "a.pdf",
                "file_data": "data:application/pdf;base64,"
                + base64.b64encode(b"%PDF-1.4").decode(),
            },
        },
        {"type": "file", "file": {"file_id": "file-1"}},
    ]


def test_typed_and_json_forms_normalise_to_the_same_params() -> None:
    typed = _params(
        openai_pb2.ChatMessage(role="system", content_text="be brief"),
        openai_pb2.ChatMessage(
            role="user",
            content_parts=openai_pb2.ContentParts(
                parts=[
                    openai_pb2.ContentPart(text="look"),
                    openai_pb2.ContentPart(
                        image_url=openai_pb2.ImageUrl(url="data:image/png;base64,AA==")
                    ),
                ]
            ),
        ),
    )
    json_form = json_format.ParseDict(
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": "be brief"},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "look"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}},
                    ],
                },
            ],
        },
        openai_pb2.ChatCompletionParams(),
    )
    validate_chat(typed)
    validate_chat(json_form)
    assert typed == json_form


def test_tool_result_sets_the_tool_message() -> None:
    result = openai_pb2.ContentPart(
        tool_result=openai_pb2.ToolResult(tool_call_id="call_1", text="42")
    )
    params = _params(
        openai_pb2.ChatMessage(role="tool", content_parts=openai_pb2.ContentParts(parts=[result]))
    )
    validate_chat(params)
    assert params.messages[0].tool_call_id == "call_1"
    assert to_python(params.messages[0].content) == "42"


@pytest.mark.parametrize(
    ("message", "param"),
    [
        pytest.param(
            openai_pb2.ChatMessage(
                role="user",
                content=struct_pb2.Value(string_value="a"),
                content_text="b",
            ),
            "messages[0].content",
            id="both-forms",
        ),
        pytest.param(
            openai_pb2.ChatMessage(
                role="user",
                content_parts=openai_pb2.ContentParts(parts=[openai_pb2.ContentPart()]),
            ),
            "messages[0].content_parts[0]",
            id="empty-part",
        ),
        pytest.param(
            openai_pb2.ChatMessage(
                role="user",
                content_parts=openai_pb2.ContentParts(
                    parts=[
                        openai_pb2.ContentPart(
                            input_audio=openai_pb2.InputAudio(data=b"x", format="ogg")
                        )
                    ]
                ),
            ),
            "messages[0].content_parts[0].input_audio",
            id="audio-format",
        ),
        pytest.param(
            openai_pb2.ChatMessage(
                role="user",
                content_parts=openai_pb2.ContentParts(
                    parts=[openai_pb2.ContentPart(file=openai_pb2.FileInput(data=b"x"))]
                ),
            ),
            "messages[0].content_parts[0].file.mime_type",
            id="file-without-type",
        ),
        pytest.param(
            openai_pb2.ChatMessage(
                role="user",
                content_parts=openai_pb2.ContentParts(
                    parts=[
                        openai_pb2.ContentPart(tool_result=openai_pb2.ToolResult(tool_call_id="c"))
                    ]
                ),
            ),
            "messages[0].content_parts[0].tool_result",
            id="tool-result-outside-tool-message",
        ),
        pytest.param(
            openai_pb2.ChatMessage(
                role="user",
                content_parts=openai_pb2.ContentParts(
                    parts=[
                        openai_pb2.ContentPart(
                            image_url=openai_pb2.ImageUrl(url="file:///etc/passwd")
                        )
                    ]
                ),
            ),
            "messages[0].content[0]",
            id="image-url-scheme",
        ),
    ],
)
def test_typed_content_mistakes_name_the_field(message: openai_pb2.ChatMessage, param: str) -> None:
    err = _refused(validate_chat, _params(message))
    assert err.param == param
    assert _error_info_param(err) == param


def _kindless_content() -> openai_pb2.ChatCompletionParams:
    params = _params(openai_pb2.ChatMessage(role="user"))
    params.messages[0].content.SetInParent()
    return params


def _content(value: struct_pb2.Value) -> openai_pb2.ChatCompletionParams:
    return _params(openai_pb2.ChatMessage(role="user", content=value))


def _nested_kindless() -> openai_pb2.ChatCompletionParams:
    params = _content(struct_pb2.Value())
    part = params.messages[0].content.list_value.values.add().struct_value
    part.update({"type": "text"})
    part.fields["text"].SetInParent()
    return params


def _chat(**fields: Any) -> openai_pb2.ChatCompletionParams:
    params = _params(openai_pb2.ChatMessage(role="user", content_text="hi"))
    for name, value in fields.items():
        if isinstance(value, struct_pb2.Value | struct_pb2.Struct):
            getattr(params, name).CopyFrom(value)
        else:
            json_format.ParseDict({name: value}, params, ignore_unknown_fields=False)
    return params


def _kindless_struct_field(name: str, key: str) -> openai_pb2.ChatCompletionParams:
    params = _chat()
    getattr(params, name).fields[key].SetInParent()
    return params


@pytest.mark.parametrize(
    ("params", "param"),
    [
        pytest.param(_kindless_content(), "messages[0].content", id="content-kindless"),
        pytest.param(_nested_kindless(), "messages[0].content[0].text", id="part-kindless"),
        pytest.param(
            _content(struct_pb2.Value(number_value=1)), "messages[0].content", id="content-number"
        ),
        pytest.param(
            _content(struct_pb2.Value(bool_value=True)), "messages[0].content", id="content-bool"
        ),
        pytest.param(
            _content(struct_pb2.Value(null_value=struct_pb2.NULL_VALUE)),
            "messages[0].content",
            id="content-null-for-user",
        ),
        pytest.param(_chat(stop=struct_pb2.Value()), "stop", id="stop-kindless"),
        pytest.param(_chat(stop=struct_pb2.Value(bool_value=True)), "stop", id="stop-bool"),
        pytest.param(
            _chat(tool_choice=struct_pb2.Value()), "tool_choice", id="tool-choice-kindless"
        ),
        pytest.param(
            _chat(tool_choice=struct_pb2.Value(number_value=2)),
            "tool_choice",
            id="tool-choice-number",
        ),
        pytest.param(
            _kindless_struct_field("response_format", "type"),
            "response_format.type",
            id="response-format-kindless",
        ),
        pytest.param(
            _chat(response_format={"type": "json_schema", "json_schema": 1}),
            "response_format.json_schema",
            id="json-schema-number",
        ),
        pytest.param(
            _kindless_struct_field("prediction", "content"),
            "prediction.content",
            id="prediction-kindless",
        ),
        pytest.param(
            _chat(prediction={"type": "content", "content": 5}),
            "prediction.content",
            id="prediction-number",
        ),
        pytest.param(_chat(audio={"voice": True, "format": "wav"}), "audio.voice", id="audio-bool"),
        pytest.param(_kindless_struct_field("audio", "voice"), "audio.voice", id="audio-kindless"),
    ],
)
def test_chat_value_kinds(params: openai_pb2.ChatCompletionParams, param: str) -> None:
    err = _refused(validate_chat, params)
    assert err.param == param
    assert _error_info_param(err) == param


def test_tool_parameters_with_a_kindless_value_are_refused() -> None:
    params = _chat()
    tool = params.tools.add(type="function")
    tool.function.name = "lookup"
    tool.function.parameters.fields["type"].SetInParent()
    assert _refused(validate_chat, params).param == "tools[0].function.parameters.type"


@pytest.mark.parametrize(
    ("validate", "params", "param"),
    [
        (
            validate_completion,
            openai_pb2.CompletionParams(model="m", prompt=struct_pb2.Value()),
            "prompt",
        ),
        (
            validate_completion,
            openai_pb2.CompletionParams(model="m", prompt=struct_pb2.Value(bool_value=True)),
            "prompt",
        ),
        (
            validate_completion,
            openai_pb2.CompletionParams(
                model="m", prompt=struct_pb2.Value(string_value="x"), stop=struct_pb2.Value()
            ),
            "stop",
        ),
        (
            validate_embedding,
            openai_pb2.EmbeddingParams(model="m", input=struct_pb2.Value()),
            "input",
        ),
        (
            validate_embedding,
            openai_pb2.EmbeddingParams(model="m", input=struct_pb2.Value(number_value=3)),
            "input",
        ),
    ],
    ids=[
        "prompt-kindless",
        "prompt-bool",
        "completion-stop-kindless",
        "input-kindless",
        "input-number",
    ],
)
def test_completion_and_embedding_value_kinds(validate: Any, params: Any, param: str) -> None:
    assert _refused(validate, params).param == param
