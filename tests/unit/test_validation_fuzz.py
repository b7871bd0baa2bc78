"""Property-based: the router's validation on arbitrary bodies.

Whatever JSON the transcoder could hand over (and whatever a gRPC caller can
build, NaN and infinities included), validation either accepts the request or
raises SwitchboardError with a 400 (or 413) that names a short field; never
another exception, which the services would answer as a 500. What it accepts,
the provider can render as JSON.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from google.protobuf import json_format, message, struct_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from switchboard.common.v1 import openai_pb2
from switchboard_common.errors import R, SwitchboardError
from switchboard_router.validation import (
    FORBIDDEN_KEY,
    validate_chat,
    validate_completion,
    validate_embedding,
)

FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None)

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
KEYS = st.sampled_from(["type", "text", "image_url", "url", "base_url", "apiKey", "a"]) | st.text(
    max_size=8
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=16,
)
CHAT_FIELDS = sorted(openai_pb2.ChatCompletionParams.DESCRIPTOR.fields_by_name)
COMPLETION_FIELDS = sorted(openai_pb2.CompletionParams.DESCRIPTOR.fields_by_name)
EMBEDDING_FIELDS = sorted(openai_pb2.EmbeddingParams.DESCRIPTOR.fields_by_name)
REFUSALS = {R.ERROR_REASON_INVALID_REQUEST, R.ERROR_REASON_REQUEST_TOO_LARGE}


def _bodies(fields: list[str], base: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """A valid body with some fields replaced by random JSON."""
    return st.dictionaries(st.sampled_from(fields), JSON, max_size=4).map(
        lambda changes: {**base, **changes}
    )


def _refusal(call: Callable[[], None]) -> SwitchboardError | None:
    try:
        call()
    except SwitchboardError as err:
        return err
    return None


def _check(validate: Callable[[Any], None], params: message.Message) -> None:
    err = _refusal(lambda: validate(params))
    if err is None:
        # Accepted: what the provider does with it (proto3 JSON) must work.
        json_format.MessageToDict(params, preserving_proto_field_name=True)
        return
    assert err.reason in REFUSALS, err
    assert err.http_status in (400, 413)
    assert err.message
    assert len(err.message) < 600
    assert err.param is None or len(err.param) <= 200


def _parsed(body: dict[str, Any], kind: type[message.Message]) -> message.Message | None:
    """The body as the transcoder would hand it over; None when it could not."""
    try:
        return json_format.ParseDict(body, kind(), ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError, AttributeError):
        return None


@FUZZ
@given(_bodies(CHAT_FIELDS, {"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
def test_chat_validation_only_refuses_cleanly(body: dict[str, Any]) -> None:
    params = _parsed(body, openai_pb2.ChatCompletionParams)
    if params is not None:
        _check(validate_chat, params)


@FUZZ
@given(
    _bodies(
        ["role", "content", "name", "tool_call_id", "tool_calls", "refusal"],
        {"role": "user", "content": "hi"},
    )
)
def test_chat_message_validation_only_refuses_cleanly(message_body: dict[str, Any]) -> None:
    params = _parsed({"model": "m", "messages": [message_body]}, openai_pb2.ChatCompletionParams)
    if params is not None:
        _check(validate_chat, params)


@FUZZ
@given(_bodies(COMPLETION_FIELDS, {"model": "m", "prompt": "hi"}))
def test_completion_validation_only_refuses_cleanly(body: dict[str, Any]) -> None:
    params = _parsed(body, openai_pb2.CompletionParams)
    if params is not None:
        _check(validate_completion, params)


@FUZZ
@given(_bodies(EMBEDDING_FIELDS, {"model": "m", "input": "hi"}))
def test_embedding_validation_only_refuses_cleanly(body: dict[str, Any]) -> None:
    params = _parsed(body, openai_pb2.EmbeddingParams)
    if params is not None:
        _check(validate_embedding, params)


NUMBERS = st.floats(allow_nan=True, allow_infinity=True)


@FUZZ
@given(
    temperature=st.none() | NUMBERS,
    penalty=st.none() | NUMBERS,
    bias=st.dictionaries(st.text(max_size=4), NUMBERS, max_size=2),
    weight=NUMBERS,
    stop=NUMBERS,
)
def test_numbers_json_cannot_carry_are_refused_not_crashed(
    temperature: float | None,
    penalty: float | None,
    bias: dict[str, float],
    weight: float,
    stop: float,
) -> None:
    """What a gRPC caller can send and JSON cannot (NaN, infinities)."""
    params = openai_pb2.ChatCompletionParams(model="m")
    part = params.messages.add(role="user").content.list_value.values.add().struct_value
    part.update({"type": "text", "text": "hi"})
    part.fields["weight"].number_value = weight
    params.stop.list_value.values.add().number_value = stop
    if temperature is not None:
        params.temperature = temperature
    if penalty is not None:
        params.presence_penalty = penalty
    params.logit_bias.update(bias)
    _check(validate_chat, params)
    finite = [weight, stop, *bias.values(), *(v for v in (temperature, penalty) if v is not None)]
    if not all(math.isfinite(v) for v in finite):
        assert _refusal(lambda: validate_chat(params)) is not None, "non-finite accepted"


def _spellings() -> st.SearchStrategy[str]:
    words = st.sampled_from(
        [("base", "url"), ("api", "base"), ("api", "key"), ("extra", "headers"), ("extra", "query")]
    )
    return st.tuples(words, st.sampled_from(["_", "-", ""]), st.booleans()).map(
        lambda t: (t[0][0] + t[1] + t[0][1]).upper() if t[2] else t[0][0] + t[1] + t[0][1]
    )


@FUZZ
@given(key=_spellings(), where=st.sampled_from(["metadata", "part", "schema", "format", "deep"]))
def test_forbidden_keys_are_refused_wherever_they_are(key: str, where: str) -> None:
    assert FORBIDDEN_KEY.match(key)
    params = openai_pb2.ChatCompletionParams(model="m")
    content = params.messages.add(role="user").content
    content.string_value = "hi"
    if where == "metadata":
        params.metadata[key] = "x"
    elif where == "part":
        part = content.list_value.values.add().struct_value
        part.update({"type": "text", "text": "hi", key: "http://attacker.test"})
    elif where == "schema":
        tool = params.tools.add(type="function")
        tool.function.name = "f"
        tool.function.parameters.update({"type": "object", "properties": {key: {}}})
    elif where == "format":
        params.response_format.update({"type": "text", key: 1})
    else:
        nested: dict[str, Any] = {key: 1}
        for _ in range(10):
            nested = {"a": [nested]}
        params.tool_choice.struct_value.update(nested)
    err = _refusal(lambda: validate_chat(params))
    assert err is not None, f"{key} in {where} was accepted"
    assert err.reason == R.ERROR_REASON_INVALID_REQUEST
    assert err.param is not None
    assert err.param.endswith(key)
    assert "cannot be set by clients" in err.message


@FUZZ
@given(value=JSON)
def test_prompt_and_input_shapes(value: Any) -> None:
    """Only OpenAI's shapes pass: a string, or a non-empty array of strings, of
    token ids (non-negative integers), or of non-empty token-id arrays."""
    proto = struct_pb2.Value()
    json_format.ParseDict(value, proto)
    err = _refusal(
        lambda: validate_completion(openai_pb2.CompletionParams(model="m", prompt=proto))
    )
    # (A forbidden key inside is refused as such: prompt.base_url.)
    assert err is None or (err.param or "").startswith("prompt"), err
    accepted = err is None

    def tokens(v: Any) -> bool:
        return (
            isinstance(v, list)
            and bool(v)
            and all(
                isinstance(t, int | float)
                and not isinstance(t, bool)
                and float(t).is_integer()
                and 0 <= t < 2**32
                for t in v
            )
        )

    expected = isinstance(value, str) or (
        isinstance(value, list)
        and bool(value)
        and (
            all(isinstance(v, str) for v in value) or tokens(value) or all(tokens(v) for v in value)
        )
    )
    assert accepted == expected, value
