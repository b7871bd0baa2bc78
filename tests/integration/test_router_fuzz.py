"""Property-based: random messages against the router's gRPC API (the internal
callers' way in, which skips the edge's checks), with real in-process services
and the mock provider.

Whatever the message, the router answers OK or one of the statuses a client's
mistake deserves, each with a google.rpc.Status carrying an ErrorInfo; never
INTERNAL or UNKNOWN. A refused call leaves no usage record. The messages hold
google.protobuf.Values of every kind, of no kind at all (what protobufjs sends
for a misspelt field), and typed content parts, empty ones included. Also: the
router holds client keys only as digests.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import logging
import math
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
import pytest_asyncio
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2, status_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from switchboard.common.v1 import openai_pb2
from switchboard.router.v1 import router_pb2, router_pb2_grpc
from switchboard_common.errors import SwitchboardError
from switchboard_common.keys import KeyTable
from switchboard_common.logs import request_id_var
from switchboard_router.service import RouterServicer
from switchboard_router.validation import validate_chat, validate_completion, validate_embedding
from tests.support.inprocess import services

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

FULL_KEY = "sk-fuzz-full-0123456789abcdef"
LIMITED_KEY = "sk-fuzz-limited-0123456789abcdef"
CONFIG = {
    "providers": [{"name": "mock", "kind": "mock"}],
    "models": [
        {
            "name": "mock-chat",
            "aliases": ["mc"],
            "deployments": [{"provider": "mock", "model": "mock-echo"}],
        },
        {
            "name": "mock-embed",
            "kind": "embedding",
            "deployments": [{"provider": "mock", "model": "mock-embed"}],
        },
        {"name": "secret-chat", "deployments": [{"provider": "mock", "model": "mock-echo"}]},
    ],
    "keys": [
        {"name": "fuzz-full", "key_env": "FUZZ_FULL_KEY"},
        {
            "name": "fuzz-limited",
            "key_env": "FUZZ_LIMITED_KEY",
            "models": ["mock-chat", "mock-embed"],
        },
    ],
}
# What a caller's mistake may get. INTERNAL and UNKNOWN never; UNAVAILABLE would
# mean the mock provider failed, which it does not.
CLIENT_ERRORS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
CALL_TIMEOUT_S = 10.0


@pytest_asyncio.fixture
async def router(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    monkeypatch.setenv("FUZZ_FULL_KEY", FULL_KEY)
    monkeypatch.setenv("FUZZ_LIMITED_KEY", LIMITED_KEY)
    async with services(CONFIG, tmp_path, monkeypatch) as running:
        yield running.address("router")


class UsageLog(logging.Handler):
    """The request ids of the usage records the router logs (in this process)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.request_ids: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.request_ids.append(request_id_var.get())


@pytest.fixture
def usage_log() -> Iterator[UsageLog]:
    logger = logging.getLogger("switchboard.usage")
    handler, level = UsageLog(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


# -- strategies --------------------------------------------------------------------

TEXT = st.text(max_size=16)
# Keys that try to steer an upstream, among ordinary ones.
KEYS = st.sampled_from(["type", "text", "url", "base_url", "apiKey", "extra-headers", "a"]) | TEXT
DOUBLES = st.floats(allow_nan=True, allow_infinity=True)
INT32 = st.integers(-(2**31), 2**31 - 1)
MODELS = st.sampled_from(["mock-chat", "mc", "mock-embed", "secret-chat", "MOCK-CHAT", ""]) | TEXT
METADATA_KEYS = st.sampled_from([None, FULL_KEY, LIMITED_KEY, "sk-wrong", "' OR 1=1 --"])


def _json_value(depth: int) -> st.SearchStrategy[struct_pb2.Value]:
    def build(kind: str, payload: Any) -> struct_pb2.Value:
        value = struct_pb2.Value()
        if kind == "null":
            value.null_value = struct_pb2.NULL_VALUE
        elif kind == "bool":
            value.bool_value = payload
        elif kind == "number":
            value.number_value = payload
        elif kind == "string":
            value.string_value = payload
        elif kind == "unset":
            # A Value with no kind: what protobufjs sends for {string_value: ...}.
            pass
        elif kind == "list":
            value.list_value.values.extend(payload)
        else:
            for key, item in payload.items():
                value.struct_value.fields[key].CopyFrom(item)
        return value

    scalars: st.SearchStrategy[tuple[str, Any]] = (
        st.just(("null", None))
        | st.just(("unset", None))
        | st.tuples(st.just("bool"), st.booleans())
        | st.tuples(st.just("number"), DOUBLES)
        | st.tuples(st.just("string"), TEXT)
    )
    if depth > 0:
        inner = _json_value(depth - 1)
        scalars = (
            scalars
            | st.tuples(st.just("list"), st.lists(inner, max_size=3))
            | st.tuples(st.just("struct"), st.dictionaries(KEYS, inner, max_size=3))
        )
    return scalars.map(lambda pair: build(*pair))


VALUES = _json_value(3)
# Content that is sometimes OpenAI's shape: a string, or text / image parts.
PARTS = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "image_url", "video"]), "text": TEXT}
).map(lambda d: {**d, "image_url": {"url": "https://x.test/a.png"}})


def _content() -> st.SearchStrategy[struct_pb2.Value]:
    def part_value(parts: list[dict[str, Any]]) -> struct_pb2.Value:
        value = struct_pb2.Value()
        for part in parts:
            value.list_value.values.add().struct_value.update(part)
        return value

    return (
        TEXT.map(lambda text: struct_pb2.Value(string_value=text))
        | st.lists(PARTS, min_size=1, max_size=2).map(part_value)
        | VALUES
    )


@st.composite
def _typed_part(draw: st.DrawFn) -> openai_pb2.ContentPart:
    """A typed content part, sometimes empty or incomplete."""
    kind = draw(
        st.sampled_from(["text", "image_url", "input_audio", "file", "tool_result", "refusal", ""])
    )
    part = openai_pb2.ContentPart()
    if kind in ("text", "refusal"):
        setattr(part, kind, draw(TEXT))
    elif kind == "image_url":
        part.image_url.url = draw(st.sampled_from(["https://x.test/a.png", "file:///x", ""]))
    elif kind == "input_audio":
        part.input_audio.data = draw(st.binary(max_size=8))
        part.input_audio.format = draw(st.sampled_from(["wav", "mp3", "ogg", ""]))
    elif kind == "file":
        part.file.file_id = draw(st.sampled_from(["", "file-1"]))
        part.file.data = draw(st.binary(max_size=8))
        part.file.mime_type = draw(st.sampled_from(["", "application/pdf"]))
    elif kind == "tool_result":
        part.tool_result.tool_call_id = draw(st.sampled_from(["", "call_1"]))
        part.tool_result.text = draw(TEXT)
    return part


def _set_content(draw: st.DrawFn, msg: openai_pb2.ChatMessage) -> None:
    """The deprecated Value, typed text or typed parts; now and then two at once."""
    form = draw(st.sampled_from(["value", "value", "text", "parts", "both"]))
    if form in ("value", "both"):
        msg.content.CopyFrom(draw(_content()))
    if form in ("text", "both"):
        msg.content_text = draw(TEXT)
    elif form == "parts":
        msg.content_parts.parts.extend(draw(st.lists(_typed_part(), max_size=3)))


@st.composite
def chat_params(draw: st.DrawFn) -> openai_pb2.ChatCompletionParams:
    params = openai_pb2.ChatCompletionParams(model=draw(MODELS))
    for _ in range(draw(st.integers(0, 3))):
        msg = params.messages.add(
            role=draw(st.sampled_from(["user", "system", "assistant", "tool", "root", ""]))
        )
        if draw(st.integers(0, 4)):
            _set_content(draw, msg)
    scalars: dict[str, st.SearchStrategy[Any]] = {
        "temperature": DOUBLES,
        "top_p": DOUBLES,
        "n": INT32,
        "max_tokens": INT32,
        "max_completion_tokens": INT32,
        "presence_penalty": DOUBLES,
        "frequency_penalty": DOUBLES,
        "top_logprobs": INT32,
        "seed": st.integers(-(2**63), 2**63 - 1),
        "user": TEXT,
        "reasoning_effort": TEXT,
    }
    for name, strategy in scalars.items():
        if draw(st.integers(0, 2)) == 0:
            setattr(params, name, draw(strategy))
    for name in ("stop", "tool_choice"):
        if draw(st.integers(0, 3)) == 0:
            getattr(params, name).CopyFrom(draw(VALUES))
    for name in ("response_format", "prediction", "audio"):
        if draw(st.integers(0, 3)) == 0:
            for key, value in draw(st.dictionaries(KEYS, VALUES, max_size=3)).items():
                getattr(params, name).fields[key].CopyFrom(value)
    if draw(st.integers(0, 3)) == 0:
        params.metadata.update(draw(st.dictionaries(KEYS, TEXT, max_size=3)))
    if draw(st.integers(0, 3)) == 0:
        params.logit_bias.update(draw(st.dictionaries(TEXT, DOUBLES, max_size=3)))
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):
        tool = params.tools.add(type=draw(st.sampled_from(["function", "shell"])))
        tool.function.name = draw(st.sampled_from(["lookup", "rm -rf", ""]) | TEXT)
        for key, value in draw(st.dictionaries(KEYS, VALUES, max_size=2)).items():
            tool.function.parameters.fields[key].CopyFrom(value)
    params.stream_options.include_usage = draw(st.booleans())
    return params


@st.composite
def completion_params(draw: st.DrawFn) -> openai_pb2.CompletionParams:
    params = openai_pb2.CompletionParams(model=draw(MODELS))
    if draw(st.integers(0, 4)):
        params.prompt.CopyFrom(draw(_content()))
    for name, strategy in (
        ("max_tokens", INT32),
        ("n", INT32),
        ("logprobs", INT32),
        ("best_of", INT32),
        ("temperature", DOUBLES),
    ):
        if draw(st.integers(0, 2)) == 0:
            setattr(params, name, draw(strategy))
    if draw(st.integers(0, 3)) == 0:
        params.stop.CopyFrom(draw(VALUES))
    return params


@st.composite
def embedding_params(draw: st.DrawFn) -> openai_pb2.EmbeddingParams:
    params = openai_pb2.EmbeddingParams(model=draw(MODELS))
    if draw(st.integers(0, 4)):
        params.input.CopyFrom(draw(_content()))
    params.encoding_format = draw(st.sampled_from(["", "float", "base64", "int8"]))
    if draw(st.booleans()):
        params.dimensions = draw(st.integers(-5, 70_000))
    return params


# -- calls -------------------------------------------------------------------------

Call = tuple[str, Any, Callable[[Any], None] | None]


def _calls() -> st.SearchStrategy[Call]:
    def of(method: str, make: Any, validate: Callable[[Any], None]) -> Any:
        return lambda params: (method, make(params=params), validate)

    chat, completion = chat_params(), completion_params()
    return st.one_of(
        chat.map(of("CreateChatCompletion", router_pb2.CreateChatCompletionRequest, validate_chat)),
        chat.map(of("StreamChatCompletion", router_pb2.StreamChatCompletionRequest, validate_chat)),
        chat.map(
            of("StreamChatCompletionSse", router_pb2.StreamChatCompletionSseRequest, validate_chat)
        ),
        completion.map(
            of("CreateCompletion", router_pb2.CreateCompletionRequest, validate_completion)
        ),
        completion.map(
            of("StreamCompletion", router_pb2.StreamCompletionRequest, validate_completion)
        ),
        embedding_params().map(
            of("CreateEmbedding", router_pb2.CreateEmbeddingRequest, validate_embedding)
        ),
        MODELS.map(lambda m: ("GetModel", router_pb2.GetModelRequest(model=m), None)),
        st.just(("ListModels", router_pb2.ListModelsRequest(), None)),
    )


def _error_info(err: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    """The ErrorInfo of a failed call (sync or asyncio), which every Switchboard
    error carries."""
    trailing = getattr(err, "trailing_metadata", None)
    assert trailing is not None, err
    for key, value in trailing() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return info
    raise AssertionError(f"no ErrorInfo on {err}")


def _code(err: grpc.RpcError) -> grpc.StatusCode:
    # A failed call's exception is also its grpc.Call.
    return cast(grpc.Call, err).code()


def _invoke(
    stub: router_pb2_grpc.RouterServiceStub, call: Call, key: str | None, request_id: str
) -> None:
    """Make the call (a stream is read to its end); raises grpc.RpcError."""
    method, request, _ = call
    metadata = [("x-request-id", request_id)]
    if key is not None:
        metadata.append(("authorization", f"Bearer {key}"))
    rpc = getattr(stub, method)
    if method.startswith("Stream"):
        for _ in rpc(request, metadata=metadata, timeout=CALL_TIMEOUT_S):
            pass
    else:
        rpc(request, metadata=metadata, timeout=CALL_TIMEOUT_S)


def _params_are_valid(call: Call) -> bool:
    _, request, validate = call
    if validate is None:
        return True
    try:
        validate(request.params)
    except SwitchboardError:
        return False
    return True


async def test_fuzz_router_grpc_api(router: str, usage_log: UsageLog) -> None:
    refused: list[str] = []
    codes: dict[str, int] = {}

    def run() -> None:
        with grpc.insecure_channel(router) as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)

            @settings(max_examples=200, deadline=None, derandomize=True, database=None)
            @given(call=_calls(), key=METADATA_KEYS)
            def one(call: Call, key: str | None) -> None:
                request_id = uuid.uuid4().hex
                failure: grpc.RpcError | None = None
                try:
                    _invoke(stub, call, key, request_id)
                except grpc.RpcError as err:
                    failure = err
                code = grpc.StatusCode.OK if failure is None else _code(failure)
                codes[code.name] = codes.get(code.name, 0) + 1
                if failure is None:
                    assert key in (FULL_KEY, LIMITED_KEY)
                    assert _params_are_valid(call), call
                    return
                assert code in CLIENT_ERRORS, (code, failure, call)
                assert _error_info(failure).domain == "switchboard"
                refused.append(request_id)

            one()

    await asyncio.to_thread(run)
    # Each kind of answer came up (the strategies reach past validation).
    assert {"OK", "INVALID_ARGUMENT", "UNAUTHENTICATED", "NOT_FOUND"} <= set(codes), codes
    assert not set(refused) & set(usage_log.request_ids)


async def test_refused_calls_leave_no_usage_record(router: str, usage_log: UsageLog) -> None:
    """What the fuzz checks by request id, on known cases: the one call served
    is the one usage record."""
    refusals = [
        (_chat(metadata={"api_key": "x"}), FULL_KEY),
        (_chat(temperature=math.nan), FULL_KEY),
        (_chat(model="secret-chat"), LIMITED_KEY),
        (_chat(), "sk-wrong"),
        (_chat(model="MOCK-CHAT"), FULL_KEY),
    ]

    def run() -> str:
        with grpc.insecure_channel(router) as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)
            for params, key in refusals:
                request = router_pb2.CreateChatCompletionRequest(params=params)
                with pytest.raises(grpc.RpcError) as info:
                    _invoke(stub, ("CreateChatCompletion", request, None), key, uuid.uuid4().hex)
                assert _code(info.value) in CLIENT_ERRORS
            served = uuid.uuid4().hex
            request = router_pb2.CreateChatCompletionRequest(params=_chat())
            _invoke(stub, ("CreateChatCompletion", request, None), FULL_KEY, served)
            return served

    served = await asyncio.to_thread(run)
    assert usage_log.request_ids == [served]


def _chat(model: str = "mock-chat", **fields: Any) -> openai_pb2.ChatCompletionParams:
    params = openai_pb2.ChatCompletionParams(model=model, **fields)
    params.messages.add(role="user").content.string_value = "hi"
    return params


async def _refused(
    router: str, params: openai_pb2.ChatCompletionParams
) -> pytest.ExceptionInfo[grpc.aio.AioRpcError]:
    async with grpc.aio.insecure_channel(router) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.CreateChatCompletion(
                router_pb2.CreateChatCompletionRequest(params=params),
                metadata=[("authorization", f"Bearer {FULL_KEY}")],
            )
    return info


@pytest.mark.parametrize(
    ("params", "param"),
    [
        pytest.param(_chat(temperature=math.inf), "temperature", id="temperature-inf"),
        pytest.param(_chat(presence_penalty=math.nan), "presence_penalty", id="penalty-nan"),
        pytest.param(_chat(metadata={"base_url": "x"}), "metadata.base_url", id="metadata-key"),
        pytest.param(_chat(logit_bias={"1": math.inf}), "logit_bias", id="logit-bias-inf"),
    ],
)
async def test_values_json_cannot_carry_are_invalid_argument(
    router: str, params: openai_pb2.ChatCompletionParams, param: str
) -> None:
    """gRPC callers can send what JSON cannot (NaN, infinities): refused, never a
    crash in the JSON rendering further on."""
    info = await _refused(router, params)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _error_info(info.value).reason == "INVALID_REQUEST"
    # The OpenAI error the edge would answer with names the field.
    (body,) = [v for k, v in info.value.trailing_metadata() or () if k == "x-switchboard-error"]
    assert json.loads(body)["error"]["param"] == param


async def test_non_finite_numbers_inside_content_are_invalid_argument(router: str) -> None:
    params = _chat()
    part = params.messages[0].content
    part.list_value.values.add().struct_value.update({"type": "text", "text": "x"})
    part.list_value.values[0].struct_value.fields["weight"].number_value = math.nan
    info = await _refused(router, params)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def _kindless(where: str) -> openai_pb2.ChatCompletionParams:
    params = _chat()
    if where == "content":
        params.messages[0].content.Clear()
        params.messages[0].content.SetInParent()
    elif where == "part":
        part = params.messages[0].content.list_value.values.add().struct_value
        part.fields["type"].string_value = "text"
        part.fields["text"].SetInParent()
    elif where == "tool":
        tool = params.tools.add(type="function")
        tool.function.name = "lookup"
        tool.function.parameters.fields["type"].SetInParent()
    else:
        getattr(params, where).SetInParent()
    return params


def _wrong_kind(**values: struct_pb2.Value) -> openai_pb2.ChatCompletionParams:
    params = _chat()
    for name, value in values.items():
        target = params.messages[0].content if name == "content" else getattr(params, name)
        target.CopyFrom(value)
    return params


@pytest.mark.parametrize(
    ("params", "param"),
    [
        pytest.param(_kindless("content"), "messages[0].content", id="content-kindless"),
        pytest.param(_kindless("part"), "messages[0].content[0].text", id="part-kindless"),
        pytest.param(_kindless("stop"), "stop", id="stop-kindless"),
        pytest.param(_kindless("tool_choice"), "tool_choice", id="tool-choice-kindless"),
        pytest.param(_kindless("tool"), "tools[0].function.parameters.type", id="tool-kindless"),
        pytest.param(
            _wrong_kind(content=struct_pb2.Value(number_value=1)),
            "messages[0].content",
            id="content-number",
        ),
        pytest.param(
            _wrong_kind(content=struct_pb2.Value(bool_value=True)),
            "messages[0].content",
            id="content-bool",
        ),
        pytest.param(_wrong_kind(stop=struct_pb2.Value(number_value=3)), "stop", id="stop-number"),
    ],
)
async def test_kindless_and_wrong_kind_values_are_invalid_argument(
    router: str, usage_log: UsageLog, params: openai_pb2.ChatCompletionParams, param: str
) -> None:
    """Refused as the edge refuses them, the ErrorInfo naming the field, before
    any upstream attempt (every attempt leaves a usage record)."""
    info = await _refused(router, params)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    error = _error_info(info.value)
    assert (error.reason, error.metadata["param"]) == ("INVALID_REQUEST", param)
    assert usage_log.request_ids == []


async def test_typed_content_is_served(router: str, usage_log: UsageLog) -> None:
    params = openai_pb2.ChatCompletionParams(model="mock-chat")
    params.messages.add(role="user", content_text="typed hello")
    parts = params.messages.add(role="user").content_parts.parts
    parts.add(text="in parts")
    async with grpc.aio.insecure_channel(router) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        answer = await stub.CreateChatCompletion(
            router_pb2.CreateChatCompletionRequest(params=params),
            metadata=[("authorization", f"Bearer {FULL_KEY}")],
        )
    # The mock provider echoes the last user message: it read the typed parts.
    assert answer.choices[0].message.content == "[mock] in parts"
    # Both messages' words were counted as the prompt.
    assert answer.usage.prompt_tokens == 4
    assert len(usage_log.request_ids) == 1


def _reachable(root: object) -> Iterator[object]:
    """Every object reachable from `root` through references, short of modules,
    classes and functions (which lead to the whole interpreter)."""
    seen: set[int] = set()
    stack = [root]
    skip = (type, type(gc), type(_reachable), type(len))
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, skip):
            continue
        seen.add(id(obj))
        yield obj
        stack.extend(gc.get_referents(obj))


async def test_router_holds_client_keys_only_as_digests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The router's key table and catalog, as built from the registry's
    snapshot, hold SHA-256 digests: no object reachable from them contains a
    client key's plaintext."""
    secret = "sk-digest-only-" + uuid.uuid4().hex
    monkeypatch.setenv("DIGEST_ONLY_KEY", secret)
    config = {**CONFIG, "keys": [{"name": "digest-only", "key_env": "DIGEST_ONLY_KEY"}]}
    servicers: list[RouterServicer] = []
    tables: list[KeyTable] = []
    reconfigure = RouterServicer.reconfigure
    replace = KeyTable.replace

    def capture(self: RouterServicer, config: Any, version: int) -> None:
        servicers.append(self)
        reconfigure(self, config, version)

    def capture_keys(self: KeyTable, config: Any) -> None:
        tables.append(self)
        replace(self, config)

    monkeypatch.setattr(RouterServicer, "reconfigure", capture)
    monkeypatch.setattr(KeyTable, "replace", capture_keys)
    async with services(config, tmp_path, monkeypatch):
        servicer = servicers[-1]
        assert [k.name for k in servicer.catalog.config.keys or []] == ["digest-only"]
        held = [*_reachable(tables[-1]), *_reachable(servicer.catalog)]
        texts = [o for o in held if isinstance(o, str | bytes)]
        del servicer, servicers[:], tables[:], held
    assert [t for t in texts if (secret in t if isinstance(t, str) else secret.encode() in t)] == []
    # The walk does reach what the router compares presented keys with.
    assert hashlib.sha256(secret.encode()).digest() in texts
