"""Anthropic Messages answers and stream events as the `openai` kind's shapes.

A stream keeps the `openai` kind's sequence: a role chunk, one chunk per
text or tool-call delta, a finish chunk, then a usage-only chunk. The role
chunk waits for the first content so that an upstream failure before any
output (Anthropic can send an `error` event right after `message_start`)
leaves the router free to try another deployment. Thinking blocks are the
model's reasoning, not its answer, and are left out.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator, AsyncIterable
from typing import Any

from anthropic import types

from switchboard.common.v1 import openai_pb2
from switchboard.provider.v1 import provider_pb2
from switchboard_common.errors import R, SwitchboardError
from switchboard_provider.meter import UsageMeter

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def finish_reason(reason: str | None) -> str:
    return FINISH_REASONS.get(reason or "", "stop")


class Tokens:
    """Anthropic's usage, which counts cache reads and writes apart from
    `input_tokens`; OpenAI's prompt_tokens include both."""

    def __init__(self) -> None:
        self.input = self.output = self.cache_read = self.cache_write = 0

    def update(self, usage: types.Usage | types.MessageDeltaUsage) -> None:
        # message_delta's counts are cumulative; its input counts may be absent.
        self.input = usage.input_tokens or self.input
        self.output = usage.output_tokens or self.output
        self.cache_read = usage.cache_read_input_tokens or self.cache_read
        self.cache_write = usage.cache_creation_input_tokens or self.cache_write

    def openai(self) -> openai_pb2.Usage:
        prompt = self.input + self.cache_read + self.cache_write
        out = openai_pb2.Usage(
            prompt_tokens=prompt, completion_tokens=self.output, total_tokens=prompt + self.output
        )
        out.prompt_tokens_details.cached_tokens = self.cache_read
        out.completion_tokens_details.reasoning_tokens = 0
        return out

    def report(self, meter: UsageMeter) -> openai_pb2.Usage:
        total = self.openai()
        meter.report(total, cache_write_tokens=self.cache_write)
        return total


def _arguments(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def chat_completion(message: types.Message, meter: UsageMeter) -> openai_pb2.ChatCompletion:
    """The one object of a non-streamed answer; reports it to `meter`."""
    meter.set_provider_request_id(message._request_id)
    out = openai_pb2.ChatCompletion(
        id=message.id, object="chat.completion", created=int(time.time()), model=message.model
    )
    choice = out.choices.add(index=0, finish_reason=finish_reason(message.stop_reason))
    choice.message.role = "assistant"
    text = "".join(b.text for b in message.content if isinstance(b, types.TextBlock))
    meter.add_output_text(text)
    for block in message.content:
        if isinstance(block, types.ToolUseBlock):
            call = choice.message.tool_calls.add(id=block.id, type="function")
            call.function.name = block.name
            call.function.arguments = _arguments(block.input)
            meter.add_output_text(call.function.arguments)
    # OpenAI's content is null when the model answered only with tool calls.
    if text or not choice.message.tool_calls:
        choice.message.content = text
    tokens = Tokens()
    tokens.update(message.usage)
    out.usage.CopyFrom(tokens.report(meter))
    return out


class _Chunks:
    """Chunks of one streamed answer: one id, created time and model."""

    def __init__(self, message: types.Message) -> None:
        self.id = message.id
        self.model = message.model
        self.created = int(time.time())

    def chunk(self) -> provider_pb2.StreamGenerateResponse:
        return provider_pb2.StreamGenerateResponse(
            chat_chunk=openai_pb2.ChatCompletionChunk(
                id=self.id, object="chat.completion.chunk", created=self.created, model=self.model
            )
        )

    def delta(self, **fields: str) -> tuple[provider_pb2.StreamGenerateResponse, Any]:
        event = self.chunk()
        choice = event.chat_chunk.choices.add(index=0)
        choice.delta.SetInParent()
        for name, value in fields.items():
            setattr(choice.delta, name, value)
        return event, choice


async def stream_events(
    events: AsyncIterable[types.RawMessageStreamEvent], meter: UsageMeter
) -> AsyncGenerator[provider_pb2.StreamGenerateResponse, None]:
    chunks: _Chunks | None = None
    tokens = Tokens()
    started = False
    reason = "stop"
    # Anthropic numbers content blocks; OpenAI numbers tool calls alone.
    tool_index: dict[int, int] = {}
    stopped = False
    async for event in events:
        if isinstance(event, types.RawMessageStopEvent):
            stopped = True
            continue
        if isinstance(event, types.RawMessageStartEvent):
            chunks = _Chunks(event.message)
            tokens.update(event.message.usage)
            continue
        if chunks is None:
            continue
        if isinstance(event, types.RawMessageDeltaEvent):
            reason = finish_reason(event.delta.stop_reason)
            tokens.update(event.usage)
            continue
        out: provider_pb2.StreamGenerateResponse | None = None
        if isinstance(event, types.RawContentBlockStartEvent) and isinstance(
            event.content_block, types.ToolUseBlock
        ):
            block = event.content_block
            index = tool_index[event.index] = len(tool_index)
            out, choice = chunks.delta()
            call = choice.delta.tool_calls.add(index=index, id=block.id, type="function")
            call.function.name = block.name
            call.function.arguments = ""
            meter.first_token()
        elif isinstance(event, types.RawContentBlockDeltaEvent):
            delta = event.delta
            if isinstance(delta, types.TextDelta) and delta.text:
                out, _ = chunks.delta(content=delta.text)
                meter.add_output_text(delta.text)
            elif isinstance(delta, types.InputJSONDelta) and event.index in tool_index:
                out, choice = chunks.delta()
                call = choice.delta.tool_calls.add(index=tool_index[event.index])
                call.function.arguments = delta.partial_json
                meter.add_output_text(delta.partial_json)
        if out is None:
            continue
        if not started:
            started = True
            yield chunks.delta(role="assistant", content="")[0]
        yield out
    if chunks is None or not stopped:
        # A clean end of the HTTP body without message_stop: a cut answer.
        raise SwitchboardError(
            R.ERROR_REASON_UPSTREAM_ERROR, "the Anthropic stream ended before message_stop"
        )
    if not started:
        yield chunks.delta(role="assistant", content="")[0]
    finish, choice = chunks.delta()
    choice.finish_reason = reason
    yield finish
    last = chunks.chunk()
    last.chat_chunk.usage.CopyFrom(tokens.report(meter))
    yield last
