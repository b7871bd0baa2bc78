"""OpenAI's Responses API, served natively by an openai-kind upstream that has
it (OpenAI itself, vLLM, and others): provider option `responses: native`.

A /v1/responses call through the router carries its own request beside the
canonical chat params (StreamGenerateRequest.native). For such an upstream,
this sends that request to its POST /responses, so what the chat mapping cannot
express (reasoning items and their encrypted content, the upstream's own item
ids) survives. Each upstream event goes back as it came, beside the canonical
chunk made from it, so the router's accounting, cut-short counting and fallback
see the one shape they know.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator
from typing import Any

import httpx2
import openai

from switchboard.common.v1 import openai_pb2
from switchboard.provider.v1 import provider_pb2
from switchboard_common.config import ProviderConfig
from switchboard_common.errors import R, SwitchboardError
from switchboard_common.logs import redact
from switchboard_provider.meter import UsageMeter

OPTION = "responses"
NATIVE = "native"
PATH = "/responses"
# Events that carry the response object; the last one ends the stream.
_FINAL = ("response.completed", "response.incomplete")


def serves(config: ProviderConfig, request: provider_pb2.StreamGenerateRequest) -> bool:
    """Whether this upstream answers the request in the Responses API's own form."""
    return (
        request.HasField("chat")
        and request.native.api == provider_pb2.NATIVE_API_OPENAI_RESPONSES
        and config.options.get(OPTION) == NATIVE
    )


def _body(request: provider_pb2.StreamGenerateRequest) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(request.native.body)
    body["model"] = request.target.upstream_model
    body["stream"] = request.stream
    return body


def _compact(payload: Any) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


def usage(d: dict[str, Any]) -> openai_pb2.Usage:
    """The Responses usage object in the canonical (chat) usage shape."""
    out = openai_pb2.Usage(
        prompt_tokens=d.get("input_tokens") or 0,
        completion_tokens=d.get("output_tokens") or 0,
        total_tokens=d.get("total_tokens") or 0,
    )
    cached = (d.get("input_tokens_details") or {}).get("cached_tokens") or 0
    reasoning = (d.get("output_tokens_details") or {}).get("reasoning_tokens") or 0
    if cached:
        out.prompt_tokens_details.cached_tokens = cached
    if reasoning:
        out.completion_tokens_details.reasoning_tokens = reasoning
    return out


def _finish(response: dict[str, Any], calls: int) -> str:
    if response.get("status") == "incomplete":
        reason = (response.get("incomplete_details") or {}).get("reason")
        return "length" if reason == "max_output_tokens" else "content_filter"
    return "tool_calls" if calls else "stop"


def _failure(response: dict[str, Any], provider: str) -> SwitchboardError:
    error = response.get("error") or {}
    message = str(error.get("message") or response.get("message") or "the response failed")
    return SwitchboardError(
        R.ERROR_REASON_UPSTREAM_ERROR,
        f"provider {provider!r} failed the response: {redact(message)}",
    )


def completion(response: dict[str, Any]) -> openai_pb2.ChatCompletion:
    """A whole response object as the canonical chat answer."""
    out = openai_pb2.ChatCompletion(
        id=str(response.get("id") or ""),
        object="chat.completion",
        created=int(response.get("created_at") or time.time()),
        model=str(response.get("model") or ""),
    )
    choice = out.choices.add(index=0)
    choice.message.role = "assistant"
    texts: list[str] = []
    for item in response.get("output") or []:
        if item.get("type") == "message":
            texts += [p.get("text", "") for p in item.get("content") or [] if "text" in p]
        elif item.get("type") == "function_call":
            call = choice.message.tool_calls.add(id=item.get("call_id") or "", type="function")
            call.function.name = item.get("name") or ""
            call.function.arguments = item.get("arguments") or ""
    if texts or not choice.message.tool_calls:
        choice.message.content = "".join(texts)
    choice.finish_reason = _finish(response, len(choice.message.tool_calls))
    if response.get("usage"):
        out.usage.CopyFrom(usage(response["usage"]))
    return out


class _Chunks:
    """Canonical chunks from the typed events of one streamed response."""

    def __init__(self) -> None:
        self.id = ""
        self.created = int(time.time())
        # Tool-call index per function_call item id, in the order they start.
        self.calls: dict[str, int] = {}

    def _chunk(self) -> openai_pb2.ChatCompletionChunk:
        return openai_pb2.ChatCompletionChunk(
            id=self.id, object="chat.completion.chunk", created=self.created
        )

    def of(self, event: dict[str, Any]) -> openai_pb2.ChatCompletionChunk:
        kind = event.get("type")
        chunk = self._chunk()
        if kind == "response.created":
            self.id = str((event.get("response") or {}).get("id") or "")
            chunk.id = self.id
            chunk.choices.add(index=0).delta.role = "assistant"
        elif kind == "response.output_text.delta":
            chunk.choices.add(index=0).delta.content = str(event.get("delta") or "")
        elif kind == "response.output_item.added":
            item = event.get("item") or {}
            if item.get("type") == "function_call":
                index = self.calls.setdefault(str(item.get("id")), len(self.calls))
                call = chunk.choices.add(index=0).delta.tool_calls.add(index=index, type="function")
                call.id = str(item.get("call_id") or "")
                call.function.name = str(item.get("name") or "")
                call.function.arguments = str(item.get("arguments") or "")
        elif kind == "response.function_call_arguments.delta":
            known = self.calls.get(str(event.get("item_id")))
            if known is not None:
                call = chunk.choices.add(index=0).delta.tool_calls.add(index=known)
                call.function.arguments = str(event.get("delta") or "")
        elif kind in _FINAL:
            response = event.get("response") or {}
            chunk.choices.add(index=0).finish_reason = _finish(response, len(self.calls))
            if response.get("usage"):
                chunk.usage.CopyFrom(usage(response["usage"]))
        return chunk


async def generate(
    client: openai.AsyncOpenAI,
    config: ProviderConfig,
    request: provider_pb2.StreamGenerateRequest,
    meter: UsageMeter,
    limit: openai.Timeout,
) -> AsyncGenerator[provider_pb2.StreamGenerateResponse, None]:
    """The upstream's answer (events when streaming, else its one response
    object), each as it came and as canonical chat. openai.APIError is the
    caller's to map, as for every other call through the client."""
    body = _body(request)
    if not request.stream:
        reply = await client.post(
            PATH, cast_to=httpx2.Response, body=body, options={"timeout": limit}
        )
        meter.set_provider_request_id(reply.headers.get("x-request-id"))
        data = reply.json()
        if data.get("status") == "failed" or not isinstance(data.get("output"), list):
            raise _failure(data, config.name)
        answer = completion(data)
        for whole in answer.choices:
            meter.add_output_text(whole.message.content)
        if data.get("usage"):
            meter.report(answer.usage)
        yield provider_pb2.StreamGenerateResponse(chat_completion=answer, native=_compact(data))
        return
    stream = await client.post(
        PATH,
        cast_to=object,
        body=body,
        options={"timeout": limit},
        stream=True,
        stream_cls=openai.AsyncStream[object],
    )
    meter.set_provider_request_id(stream.response.headers.get("x-request-id"))
    chunks = _Chunks()
    async with stream:
        async for event in stream:
            if not isinstance(event, dict):
                continue
            kind = event.get("type")
            if kind == "error":
                raise _failure(event, config.name)
            if kind == "response.failed":
                raise _failure(event.get("response") or {}, config.name)
            chunk = chunks.of(event)
            for choice in chunk.choices:
                meter.add_output_text(choice.delta.content)
                if choice.delta.tool_calls:
                    meter.first_token()
            if chunk.HasField("usage"):
                meter.report(chunk.usage)
            yield provider_pb2.StreamGenerateResponse(chat_chunk=chunk, native=_compact(event))
            if kind in _FINAL:
                return
