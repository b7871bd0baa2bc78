"""Anthropic's Messages API at /v1/messages, over any provider kind.

A thin mapping: the request becomes ChatCompletionParams (anthropic_shapes),
RouterService admits, routes, retries and accounts it as for /v1/chat/completions,
and its answer or chunks come back as a message object or as Anthropic's SSE
events. Errors leave as {"type": "error", "error": {...}} with Anthropic's statuses.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
from google.api import httpbody_pb2

from switchboard.common.v1 import openai_pb2
from switchboard.provider.v1 import provider_pb2
from switchboard.router.v1 import anthropic_messages_pb2, anthropic_messages_pb2_grpc, router_pb2
from switchboard.usage.v1 import usage_pb2
from switchboard_common.errors import SwitchboardError
from switchboard_common.policy import current_caller
from switchboard_provider.adapters.base import prompt_text
from switchboard_provider.meter import estimate_tokens
from switchboard_router.surfaces import anthropic_shapes as shapes
from switchboard_router.surfaces import surface

if TYPE_CHECKING:
    from switchboard_router.service import RouterServicer

Context = grpc.aio.ServicerContext[Any, Any]
NAME = "anthropic_messages"


@dataclass
class _Blocks:
    """The content blocks of a streamed message as chunks open and close them:
    text deltas go to an open text block, each tool call gets its own block."""

    model: str
    records: list[usage_pb2.UsageRecord]
    index: int = -1
    open_kind: str | None = None
    # Chunk tool-call index -> its content block index.
    tools: dict[int, int] = field(default_factory=dict)
    finish: str = "stop"
    usage: openai_pb2.Usage = field(default_factory=openai_pb2.Usage)

    def _close(self) -> list[httpbody_pb2.HttpBody]:
        if self.open_kind is None:
            return []
        self.open_kind = None
        return [
            surface.sse_event(
                "content_block_stop", {"type": "content_block_stop", "index": self.index}
            )
        ]

    def _open(self, kind: str, block: dict[str, Any]) -> list[httpbody_pb2.HttpBody]:
        events = self._close()
        self.index += 1
        self.open_kind = kind
        events.append(
            surface.sse_event(
                "content_block_start",
                {"type": "content_block_start", "index": self.index, "content_block": block},
            )
        )
        return events

    def _delta(self, delta: dict[str, Any]) -> httpbody_pb2.HttpBody:
        return surface.sse_event(
            "content_block_delta",
            {"type": "content_block_delta", "index": self.index, "delta": delta},
        )

    def chunk(self, chunk: openai_pb2.ChatCompletionChunk) -> list[httpbody_pb2.HttpBody]:
        events: list[httpbody_pb2.HttpBody] = []
        if chunk.HasField("usage"):
            self.usage = chunk.usage
        for choice in chunk.choices[:1]:
            if choice.HasField("finish_reason"):
                self.finish = choice.finish_reason
            text = choice.delta.content
            if text:
                if self.open_kind != "text":
                    events += self._open("text", {"type": "text", "text": ""})
                events.append(self._delta({"type": "text_delta", "text": text}))
            for call in choice.delta.tool_calls:
                if call.index not in self.tools:
                    block = {
                        "type": "tool_use",
                        "id": call.id,
                        "name": call.function.name,
                        "input": {},
                    }
                    events += self._open("tool_use", block)
                    self.tools[call.index] = self.index
                elif self.tools[call.index] != self.index:
                    # Interleaved tool calls do not occur in any upstream's stream;
                    # Anthropic's events cannot express them.
                    continue
                if call.function.arguments:
                    events.append(
                        self._delta(
                            {"type": "input_json_delta", "partial_json": call.function.arguments}
                        )
                    )
        return events

    def end(self) -> list[httpbody_pb2.HttpBody]:
        events = self._close()
        usage = shapes.usage(self.usage, self.records)
        events.append(
            surface.sse_event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {
                        "stop_reason": shapes.STOP_REASONS.get(self.finish, "end_turn"),
                        "stop_sequence": None,
                    },
                    "usage": usage,
                },
            )
        )
        events.append(surface.sse_event("message_stop", {"type": "message_stop"}))
        return events


class AnthropicMessagesServicer(anthropic_messages_pb2_grpc.AnthropicMessagesServiceServicer):
    def __init__(self, router: RouterServicer) -> None:
        self.router = router

    async def CreateMessage(
        self, request: anthropic_messages_pb2.CreateMessageRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        surface.enter(NAME)
        records = surface.watch_usage()
        with surface.rendered(shapes.error):
            params = shapes.chat_params(surface.read_json(request.body))
            answer = await self.router.CreateChatCompletion(
                router_pb2.CreateChatCompletionRequest(params=params), context
            )
            return surface.json_body(shapes.message(answer, params.model, records))

    async def StreamMessage(
        self, request: anthropic_messages_pb2.StreamMessageRequest, context: Context
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        surface.enter(NAME)
        records = surface.watch_usage()
        started = False
        with surface.rendered(shapes.error):
            params = shapes.chat_params(surface.read_json(request.body))
            # Usage rides on the last chunk whether or not the client asks.
            params.stream_options.include_usage = True
            blocks = _Blocks(params.model, records)
            try:
                async for response in self.router.StreamChatCompletion(
                    router_pb2.StreamChatCompletionRequest(params=params), context
                ):
                    if not started:
                        started = True
                        yield self._start(params.model)
                        yield surface.sse_event("ping", {"type": "ping"})
                    for event in blocks.chunk(response.chunk):
                        yield event
            except SwitchboardError as err:
                if not started:
                    raise
                # The status line is out: the error becomes the last event.
                yield surface.sse_event("error", shapes.error_event(err))
                return
            if not started:
                yield self._start(params.model)
            for event in blocks.end():
                yield event

    @staticmethod
    def _start(model: str) -> httpbody_pb2.HttpBody:
        message: dict[str, Any] = {
            "id": shapes.message_id(),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            # Known at the end (message_delta carries them): upstreams report
            # usage on their last chunk.
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return surface.sse_event("message_start", {"type": "message_start", "message": message})

    async def CountMessageTokens(
        self, request: anthropic_messages_pb2.CountMessageTokensRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        surface.enter(NAME)
        with surface.rendered(shapes.error):
            params = shapes.chat_params(surface.read_json(request.body), counting=True)
            # The model must exist and be this key's, as for a real call.
            self.router.catalog.resolve(params.model, current_caller().key)
            # The provider meter's estimate for upstreams that report no usage.
            text = prompt_text(provider_pb2.StreamGenerateRequest(chat=params))
            return surface.json_body({"input_tokens": estimate_tokens(text)})
