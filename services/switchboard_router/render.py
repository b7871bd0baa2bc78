"""OpenAI-exact JSON for streamed chunks, and the SSE framing around it.

Streams bypass the transcoder's JSON printer (they are HttpBody bytes), so this
is where their shape is decided: compact JSON, the field order OpenAI uses,
and explicit nulls where OpenAI sends them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from google.api import httpbody_pb2
from google.protobuf import json_format

from switchboard.common.v1 import openai_pb2
from switchboard_common.errors import SwitchboardError
from switchboard_common.logs import log_fields

log = logging.getLogger(__name__)
C = TypeVar("C")

DONE = b"data: [DONE]\n\n"
CONTENT_TYPE = "text/event-stream"


def sse(payload: dict[str, Any]) -> bytes:
    return (
        b"data: "
        + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        + b"\n\n"
    )


def error_event(err: SwitchboardError) -> bytes:
    return sse(err.openai_body())


def usage_dict(usage: openai_pb2.Usage) -> dict[str, Any]:
    out: dict[str, Any] = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }
    if usage.HasField("prompt_tokens_details"):
        out["prompt_tokens_details"] = json_format.MessageToDict(
            usage.prompt_tokens_details,
            preserving_proto_field_name=True,
            always_print_fields_with_no_presence=True,
        )
    if usage.HasField("completion_tokens_details"):
        out["completion_tokens_details"] = json_format.MessageToDict(
            usage.completion_tokens_details,
            preserving_proto_field_name=True,
            always_print_fields_with_no_presence=True,
        )
    return out


def _delta(delta: openai_pb2.ChatCompletionDelta) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if delta.HasField("role"):
        out["role"] = delta.role
    if delta.HasField("content"):
        out["content"] = delta.content
    if delta.HasField("refusal"):
        out["refusal"] = delta.refusal
    if delta.tool_calls:
        calls = []
        for call in delta.tool_calls:
            item: dict[str, Any] = {"index": call.index}
            if call.HasField("id"):
                item["id"] = call.id
            if call.HasField("type"):
                item["type"] = call.type
            if call.HasField("function"):
                fn: dict[str, Any] = {}
                if call.function.HasField("name"):
                    fn["name"] = call.function.name
                if call.function.HasField("arguments"):
                    fn["arguments"] = call.function.arguments
                item["function"] = fn
            calls.append(item)
        out["tool_calls"] = calls
    return out


def _logprobs(choice: Any) -> Any:
    if not choice.HasField("logprobs"):
        return None
    return _integral_bytes(json_format.MessageToDict(choice.logprobs))


def _integral_bytes(value: Any) -> Any:
    """A Struct stores every number as a double; OpenAI's logprob `bytes` are
    integers, so turn them back (104.0 -> 104) wherever they appear."""
    if isinstance(value, dict):
        return {
            k: [int(b) for b in v] if k == "bytes" and isinstance(v, list) else _integral_bytes(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_integral_bytes(v) for v in value]
    return value


def chat_chunk(
    chunk: openai_pb2.ChatCompletionChunk, model: str, include_usage: bool
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": chunk.id,
        "object": "chat.completion.chunk",
        "created": chunk.created,
        "model": model,
    }
    if chunk.service_tier:
        out["service_tier"] = chunk.service_tier
    out["system_fingerprint"] = chunk.system_fingerprint or None
    out["choices"] = [
        {
            "index": c.index,
            "delta": _delta(c.delta),
            "logprobs": _logprobs(c),
            "finish_reason": c.finish_reason if c.HasField("finish_reason") else None,
        }
        for c in chunk.choices
    ]
    if include_usage:
        out["usage"] = usage_dict(chunk.usage) if chunk.HasField("usage") else None
    return out


def completion_chunk(
    chunk: openai_pb2.Completion, model: str, include_usage: bool
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": chunk.id,
        "object": "text_completion",
        "created": chunk.created,
        "model": model,
        "system_fingerprint": chunk.system_fingerprint or None,
        "choices": [
            {
                "text": c.text,
                "index": c.index,
                "logprobs": _logprobs(c),
                "finish_reason": c.finish_reason if c.HasField("finish_reason") else None,
            }
            for c in chunk.choices
        ],
    }
    if include_usage:
        out["usage"] = usage_dict(chunk.usage) if chunk.HasField("usage") else None
    return out


def is_usage_only(chunk: openai_pb2.ChatCompletionChunk | openai_pb2.Completion) -> bool:
    """The extra final chunk OpenAI sends for include_usage: no choices, only usage."""
    return not chunk.choices and chunk.HasField("usage")


async def sse_bodies(
    chunks: AsyncIterator[tuple[C, dict[str, Any]]],
    on_start: Callable[[C], Awaitable[None]],
) -> AsyncIterator[httpbody_pb2.HttpBody]:
    """Frame chunks as OpenAI server-sent events; `on_start` runs before the
    first byte, with what the first chunk came with. Errors before the first
    byte propagate (the edge answers with the right HTTP status); after it,
    they become an error event, since the status line is already sent."""
    started = False
    try:
        async for source, payload in chunks:
            if not started:
                await on_start(source)
                started = True
            yield httpbody_pb2.HttpBody(content_type=CONTENT_TYPE, data=sse(payload))
    except SwitchboardError as err:
        if not started:
            raise
        log.warning("stream failed after it started", extra=log_fields(reason=err.reason_name))
        yield httpbody_pb2.HttpBody(content_type=CONTENT_TYPE, data=error_event(err))
        return
    yield httpbody_pb2.HttpBody(content_type=CONTENT_TYPE, data=DONE)
