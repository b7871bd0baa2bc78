"""The `gemini` kind's mapping, without a network: OpenAI params to Gemini
request types, Gemini responses to OpenAI shapes, and SDK errors to ours."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx2
import pytest
from google.genai import errors as genai_errors
from google.genai import types
from google.protobuf import json_format

from switchboard.common.v1 import openai_pb2
from switchboard.provider.v1 import provider_pb2
from switchboard.usage.v1 import usage_pb2
from switchboard_common.config import ProviderConfig, parse_config
from switchboard_common.errors import R, SwitchboardError
from switchboard_provider.adapters.gemini import GeminiAdapter
from switchboard_provider.adapters.gemini.error_mapping import map_error
from switchboard_provider.adapters.gemini.request_mapping import chat_request, completion_request
from switchboard_provider.adapters.gemini.response_mapping import (
    Reply,
    finish_reason,
    stream_events,
    usage,
)
from switchboard_provider.meter import UsageMeter
from switchboard_provider.service import build_adapter

KEY = "AIzaUnitTestOnlyKey000000001"


def _chat(**body: Any) -> openai_pb2.ChatCompletionParams:
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    return json_format.ParseDict({"model": "m", **body}, openai_pb2.ChatCompletionParams())


def _completion(**body: Any) -> openai_pb2.CompletionParams:
    return json_format.ParseDict({"model": "m", **body}, openai_pb2.CompletionParams())


def _meter(stream: bool = True) -> UsageMeter:
    request = provider_pb2.StreamGenerateRequest(
        request_id="req",
        target=provider_pb2.Target(provider="g", upstream_model="gem"),
        stream=stream,
    )
    return UsageMeter(request, usage_pb2.OPERATION_CHAT)


def _invalid(exc: pytest.ExceptionInfo[SwitchboardError], param: str) -> None:
    assert (exc.value.reason, exc.value.param) == (R.ERROR_REASON_INVALID_REQUEST, param)


# -- requests ----------------------------------------------------------------------


def test_roles_and_system_instruction() -> None:
    contents, config = chat_request(
        _chat(
            messages=[
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "question"},
                {"role": "assistant", "content": "answer"},
                {"role": "developer", "content": [{"type": "text", "text": "plain words"}]},
                {"role": "user", "content": [{"type": "text", "text": "again"}]},
                {"role": "user", "content": ""},
            ]
        )
    )
    assert [(c.role, [p.text for p in c.parts or ()]) for c in contents] == [
        ("user", ["question"]),
        ("model", ["answer"]),
        ("user", ["again"]),
    ]
    assert config.system_instruction == types.Content(
        parts=[types.Part(text="be brief"), types.Part(text="plain words")]
    )
    # No callables are passed, and AFC stays off so the SDK makes one request.
    assert config.automatic_function_calling == types.AutomaticFunctionCallingConfig(disable=True)


def test_image_parts() -> None:
    png = b"\x89PNG\r\n"
    url = f"data:image/png;base64,{base64.b64encode(png).decode()}"
    contents, _ = chat_request(
        _chat(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": url, "detail": "low"}},
                        {"type": "image_url", "image_url": {"url": "https://x.test/a/cat.png?s=1"}},
                        {"type": "image_url", "image_url": {"url": "https://x.test/photo"}},
                        {"type": "image_url", "image_url": {"url": "data:image/gif,GIF%38"}},
                    ],
                }
            ]
        )
    )
    parts = contents[0].parts or []
    assert parts[0].inline_data == types.Blob(data=png, mime_type="image/png")
    assert parts[1].file_data == types.FileData(
        file_uri="https://x.test/a/cat.png?s=1", mime_type="image/png"
    )
    assert parts[2].file_data == types.FileData(
        file_uri="https://x.test/photo", mime_type="image/jpeg"
    )
    assert parts[3].inline_data == types.Blob(data=b"GIF8", mime_type="image/gif")


def test_bad_data_url_is_invalid() -> None:
    content = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}]
    with pytest.raises(SwitchboardError) as exc:
        chat_request(_chat(messages=[{"role": "user", "content": content}]))
    _invalid(exc, "messages")


def test_generation_config() -> None:
    _, config = chat_request(
        _chat(
            temperature=0.3,
            top_p=0.8,
            n=2,
            seed=42,
            presence_penalty=0.5,
            frequency_penalty=-0.5,
            max_tokens=10,
            max_completion_tokens=20,
            stop="END",
            response_format={"type": "json_object"},
        )
    )
    assert (config.temperature, config.top_p, config.candidate_count, config.seed) == (
        0.3,
        0.8,
        2,
        42,
    )
    assert (config.presence_penalty, config.frequency_penalty) == (0.5, -0.5)
    # max_completion_tokens wins, as it does at OpenAI.
    assert config.max_output_tokens == 20
    assert config.stop_sequences == ["END"]
    assert config.response_mime_type == "application/json"


def test_unset_fields_stay_unset() -> None:
    _, config = chat_request(_chat(max_tokens=5, stop=["a", "b"]))
    assert config.max_output_tokens == 5
    assert config.stop_sequences == ["a", "b"]
    assert config.temperature is config.top_p is config.seed is config.candidate_count is None
    assert config.response_mime_type is None


def test_json_schema_response_format() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    _, config = chat_request(_chat(response_format=fmt))
    assert config.response_mime_type == "application/json"
    assert config.response_json_schema == schema


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"logprobs": True}, "logprobs"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        # A tool result must answer an earlier tool call: Gemini names the function.
        ({"messages": [{"role": "tool", "content": "42", "tool_call_id": "c"}]}, "messages"),
        ({"reasoning_effort": "extreme"}, "reasoning_effort"),
        ({"messages": [{"role": "user", "content": [{"type": "file", "file": {}}]}]}, "messages"),
    ],
)
def test_unsupported_params_are_rejected(body: dict[str, Any], param: str) -> None:
    with pytest.raises(SwitchboardError) as exc:
        chat_request(_chat(**body))
    _invalid(exc, param)


def test_completion_prompt_is_one_user_message() -> None:
    for prompt in ("say this", ["say this"]):
        contents, config = completion_request(_completion(prompt=prompt, max_tokens=3, n=2))
        assert contents == [types.Content(role="user", parts=[types.Part(text="say this")])]
        assert (config.max_output_tokens, config.candidate_count) == (3, 2)


@pytest.mark.parametrize(
    "body",
    [{"prompt": ["a", "b"]}, {"prompt": [1, 2, 3]}, {"prompt": "a", "echo": True}],
)
def test_unmappable_completions_are_rejected(body: dict[str, Any]) -> None:
    with pytest.raises(SwitchboardError) as exc:
        completion_request(_completion(**body))
    assert exc.value.reason == R.ERROR_REASON_INVALID_REQUEST


# -- responses ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        (types.FinishReason.STOP, "stop"),
        (types.FinishReason.MAX_TOKENS, "length"),
        (types.FinishReason.SAFETY, "content_filter"),
        (types.FinishReason.RECITATION, "content_filter"),
        (types.FinishReason.BLOCKLIST, "content_filter"),
        (types.FinishReason.PROHIBITED_CONTENT, "content_filter"),
        (types.FinishReason.SPII, "content_filter"),
        (types.FinishReason.IMAGE_SAFETY, "content_filter"),
        (types.FinishReason.OTHER, "stop"),
        (types.FinishReason.MALFORMED_FUNCTION_CALL, "stop"),
        (None, "stop"),
    ],
)
def test_finish_reasons(reason: types.FinishReason | None, expected: str) -> None:
    assert finish_reason(reason) == expected


def test_usage_mapping() -> None:
    meta = types.GenerateContentResponseUsageMetadata(
        prompt_token_count=10,
        candidates_token_count=5,
        thoughts_token_count=7,
        cached_content_token_count=4,
        total_token_count=22,
    )
    mapped = usage(meta)
    assert mapped is not None
    assert (mapped.prompt_tokens, mapped.completion_tokens, mapped.total_tokens) == (10, 12, 22)
    assert mapped.prompt_tokens_details.cached_tokens == 4
    assert mapped.completion_tokens_details.reasoning_tokens == 7
    assert usage(None) is None


def test_usage_details_follow_openai() -> None:
    meta = types.GenerateContentResponseUsageMetadata(
        prompt_token_count=3, candidates_token_count=2
    )
    chat, text = usage(meta), usage(meta, chat=False)
    assert chat is not None
    assert text is not None
    assert chat.total_tokens == text.total_tokens == 5
    assert chat.HasField("prompt_tokens_details")
    assert chat.HasField("completion_tokens_details")
    assert not text.HasField("prompt_tokens_details")
    assert not text.HasField("completion_tokens_details")


def _response(
    *candidates: tuple[list[types.Part], types.FinishReason | None],
    prompt: int = 3,
    output: int = 0,
) -> types.GenerateContentResponse:
    return types.GenerateContentResponse(
        candidates=[
            types.Candidate(
                content=types.Content(role="model", parts=parts),
                finish_reason=finish,
                index=i or None,
            )
            for i, (parts, finish) in enumerate(candidates)
        ],
        usage_metadata=types.GenerateContentResponseUsageMetadata(
            prompt_token_count=prompt,
            candidates_token_count=output,
            total_token_count=prompt + output,
        ),
        response_id="resp-1",
        model_version="gemini-test-001",
    )


def test_unary_answer_is_a_chat_completion() -> None:
    thought = types.Part(text="let me think", thought=True)
    response = _response(
        ([thought, types.Part(text="echo: "), types.Part(text="hi")], types.FinishReason.STOP),
        ([types.Part(text="cut")], types.FinishReason.MAX_TOKENS),
        output=3,
    )
    meter = _meter(stream=False)
    event = Reply(True, "gem").answer(response, meter)
    answer = event.chat_completion
    assert answer.id.startswith("gemini-")
    assert answer.object == "chat.completion"
    assert answer.model == "gemini-test-001"
    assert [
        (c.index, c.message.role, c.message.content, c.finish_reason) for c in answer.choices
    ] == [
        (0, "assistant", "echo: hi", "stop"),
        (1, "assistant", "cut", "length"),
    ]
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (3, 3)
    record = meter.finish(usage_pb2.USAGE_STATUS_OK)
    assert (record.provider_request_id, record.total_tokens, record.estimated) == (
        "resp-1",
        6,
        False,
    )


def test_unary_answer_is_a_text_completion() -> None:
    response = _response(([types.Part(text="echo: x")], types.FinishReason.STOP), output=2)
    answer = Reply(False, "gem").answer(response, _meter(stream=False)).completion
    assert answer.object == "text_completion"
    assert [(c.text, c.finish_reason) for c in answer.choices] == [("echo: x", "stop")]


def test_blocked_prompt_is_an_upstream_invalid_request() -> None:
    blocked = types.GenerateContentResponse(
        prompt_feedback=types.GenerateContentResponsePromptFeedback(
            block_reason=types.BlockedReason.PROHIBITED_CONTENT
        )
    )
    with pytest.raises(SwitchboardError) as exc:
        Reply(True, "gem").answer(blocked, _meter())
    assert exc.value.reason == R.ERROR_REASON_UPSTREAM_INVALID_REQUEST
    assert exc.value.message == "Gemini blocked the prompt: PROHIBITED_CONTENT"


async def _collect(
    chat: bool, *responses: types.GenerateContentResponse
) -> tuple[list[provider_pb2.StreamGenerateResponse], UsageMeter]:
    async def upstream() -> AsyncIterator[types.GenerateContentResponse]:
        for r in responses:
            yield r

    meter = _meter()
    events = [e async for e in stream_events(upstream(), Reply(chat, "gem"), meter)]
    return events, meter


@pytest.mark.asyncio
async def test_stream_has_the_openai_sequence() -> None:
    events, meter = await _collect(
        True,
        _response(([types.Part(text="think", thought=True)], None)),
        _response(([types.Part(text="echo: ")], None), output=1),
        _response(([types.Part(text="hi there")], types.FinishReason.STOP), output=3),
    )
    chunks = [e.chat_chunk for e in events]
    view = [json_format.MessageToDict(c.choices[0]) if c.choices else None for c in chunks]
    assert view == [
        {"delta": {"role": "assistant", "content": ""}},
        {"delta": {"content": "echo: "}},
        {"delta": {"content": "hi there"}},
        {"delta": {}, "finishReason": "stop"},
        None,
    ]
    assert chunks[-1].usage.completion_tokens == 3
    assert len({(c.id, c.created, c.model) for c in chunks}) == 1
    assert chunks[0].model == "gemini-test-001"
    record = meter.finish(usage_pb2.USAGE_STATUS_OK)
    assert (record.completion_tokens, record.provider_request_id) == (3, "resp-1")
    assert record.ttft_ms > 0


@pytest.mark.asyncio
async def test_stream_of_completions_and_several_candidates() -> None:
    events, _ = await _collect(
        False,
        _response(([types.Part(text="a")], None), ([types.Part(text="b")], None)),
        _response(
            ([types.Part(text="c")], types.FinishReason.STOP),
            ([], types.FinishReason.SAFETY),
            output=3,
        ),
    )
    pieces = [
        [
            (c.index, c.text, c.finish_reason if c.HasField("finish_reason") else None)
            for c in e.completion.choices
        ]
        for e in events
    ]
    assert pieces == [
        [(0, "a", None), (1, "b", None)],
        [(0, "c", None)],
        [(0, "", "stop"), (1, "", "content_filter")],
        [],
    ]
    assert events[-1].completion.usage.total_tokens == 6


@pytest.mark.asyncio
async def test_stream_blocked_prompt_fails_before_output() -> None:
    blocked = types.GenerateContentResponse(
        prompt_feedback=types.GenerateContentResponsePromptFeedback(
            block_reason=types.BlockedReason.SAFETY
        )
    )
    with pytest.raises(SwitchboardError) as exc:
        await _collect(True, blocked)
    assert exc.value.message == "Gemini blocked the prompt: SAFETY"


# -- errors ------------------------------------------------------------------------


def _api_error(code: int, message: str = "", details: list[Any] | None = None, **kw: Any) -> Any:
    body = {"error": {"code": code, "message": message, "status": "X", "details": details or []}}
    cls = genai_errors.ClientError if code < 500 else genai_errors.ServerError
    return cls(code, body, **kw)


RETRY_INFO = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"}


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (_api_error(429, "quota", [RETRY_INFO]), R.ERROR_REASON_UPSTREAM_RATE_LIMITED),
        (_api_error(401, f"bad key {KEY}"), R.ERROR_REASON_UPSTREAM_AUTH),
        (_api_error(403, "forbidden"), R.ERROR_REASON_UPSTREAM_AUTH),
        (
            _api_error(400, "API key not valid.", [{"reason": "API_KEY_INVALID"}]),
            R.ERROR_REASON_UPSTREAM_AUTH,
        ),
        (_api_error(400, "bad field"), R.ERROR_REASON_UPSTREAM_INVALID_REQUEST),
        (_api_error(404, "no such model"), R.ERROR_REASON_UPSTREAM_INVALID_REQUEST),
        (_api_error(500, "boom"), R.ERROR_REASON_UPSTREAM_ERROR),
        (_api_error(503, "overloaded"), R.ERROR_REASON_UPSTREAM_ERROR),
        (TimeoutError(), R.ERROR_REASON_UPSTREAM_TIMEOUT),
        (aiohttp.ServerTimeoutError("read"), R.ERROR_REASON_UPSTREAM_TIMEOUT),
        (httpx2.ReadTimeout("slow"), R.ERROR_REASON_UPSTREAM_TIMEOUT),
        (aiohttp.ClientPayloadError("cut"), R.ERROR_REASON_UPSTREAM_ERROR),
        (aiohttp.ServerDisconnectedError(), R.ERROR_REASON_UPSTREAM_ERROR),
        (httpx2.ConnectError("refused"), R.ERROR_REASON_UPSTREAM_ERROR),
        (ConnectionResetError(), R.ERROR_REASON_UPSTREAM_ERROR),
        (genai_errors.UnknownApiResponseError("not json"), R.ERROR_REASON_UPSTREAM_ERROR),
    ],
)
def test_error_mapping(exc: BaseException, expected: int) -> None:
    err = map_error(exc, "gem", KEY)
    assert err.reason == expected
    assert KEY not in err.message


def test_rate_limit_delay() -> None:
    assert map_error(_api_error(429, "", [RETRY_INFO]), "gem").retry_after_s == 7.0
    headers = httpx2.Response(429, headers={"Retry-After": "3"})
    assert map_error(_api_error(429, response=headers), "gem").retry_after_s == 3.0
    assert map_error(_api_error(429), "gem").retry_after_s is None


def test_upstream_words_are_kept_but_keys_are_not() -> None:
    err = map_error(
        _api_error(400, f"field x is bad near {KEY} and AIzaOtherKey0123456789abcdefgh"), "gem"
    )
    assert "field x is bad" in err.message
    assert "AIza" not in err.message


# -- the adapter -----------------------------------------------------------------


@pytest.mark.asyncio
async def test_missing_key_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GEMINI_UNIT_KEY", raising=False)
    adapter = GeminiAdapter(ProviderConfig(name="g", kind="gemini", api_key_env="GEMINI_UNIT_KEY"))
    request = provider_pb2.StreamGenerateRequest(chat=_chat())
    with pytest.raises(SwitchboardError) as exc:
        _ = [e async for e in adapter.generate(request, _meter(), 5.0)]
    assert exc.value.reason == R.ERROR_REASON_UPSTREAM_AUTH
    assert "GEMINI_UNIT_KEY" in exc.value.message
    await adapter.close()


@pytest.mark.asyncio
async def test_gemini_kind_builds_without_base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEMINI_UNIT_KEY", KEY)
    config = parse_config(
        {"providers": [{"name": "g", "kind": "gemini", "api_key_env": "GEMINI_UNIT_KEY"}]}
    )
    adapter = build_adapter(config.providers[0])
    assert isinstance(adapter, GeminiAdapter)
    # The SDK's default endpoint, with the API version pinned (read through the
    # SDK's private client: the public one does not expose its options).
    options = adapter.client._api_client.get_read_only_http_options()
    assert options["base_url"] == "https://generativelanguage.googleapis.com/"
    assert options["api_version"] == "v1beta"
    await adapter.close()
