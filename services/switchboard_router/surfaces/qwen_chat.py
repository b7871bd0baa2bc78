"""Seed API 001 (the Qwen / DashScope chat API) at /api/llm/chat.

Answers are the {code, message, data} envelope, with HTTP status equal to code;
a stream is data: {"content", "finish_reason"} events, usage on the last one,
then data: [DONE]. The document's own checks come first (a chat model, a
non-empty message list, temperature in [0, 2), top_p in (0, 1]); then
RouterService does the work as for /v1.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
from google.api import httpbody_pb2

from switchboard.common.v1 import openai_pb2
from switchboard.router.v1 import qwen_chat_pb2, qwen_chat_pb2_grpc, router_pb2
from switchboard_common.errors import SwitchboardError
from switchboard_router.surfaces import llm_models, qwen_shapes, surface

if TYPE_CHECKING:
    from switchboard_router.service import RouterServicer

Context = grpc.aio.ServicerContext[Any, Any]
NAME = "qwen_chat"
ROLES = frozenset({"system", "user", "assistant"})


class QwenChatServicer(qwen_chat_pb2_grpc.QwenChatServiceServicer):
    def __init__(self, router: RouterServicer) -> None:
        self.router = router

    def _check(self, params: openai_pb2.ChatCompletionParams, context: Context) -> None:
        """The document's rules (the access policy checked the key first: 401 first)."""
        # The model itself (known, a chat model, allowed) is RouterService's
        # check; its errors read INVALID_MODEL here.
        if not params.model:
            raise qwen_shapes.bad("model", qwen_shapes.INVALID_MODEL)
        if not params.messages:
            raise qwen_shapes.bad("messages", qwen_shapes.EMPTY_MESSAGES)
        for i, message in enumerate(params.messages):
            if message.role not in ROLES or message.content.WhichOneof("kind") != "string_value":
                raise qwen_shapes.bad(f"messages[{i}]", qwen_shapes.BAD_MESSAGES)
        if params.HasField("temperature") and not 0 <= params.temperature < 2:
            raise qwen_shapes.bad("temperature", "temperature 的范围是 [0, 2)")
        if params.HasField("top_p") and not 0 < params.top_p <= 1:
            raise qwen_shapes.bad("top_p", "top_p 的范围是 (0, 1.0]")

    async def QwenChat(
        self, request: qwen_chat_pb2.QwenChatRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        surface.enter(NAME)
        with surface.rendered(qwen_shapes.error):
            params = request.params
            self._check(params, context)
            answer = await self.router.CreateChatCompletion(
                router_pb2.CreateChatCompletionRequest(params=params), context
            )
            choice = answer.choices[0] if answer.choices else openai_pb2.ChatCompletionChoice()
            return qwen_shapes.envelope(
                {
                    "content": choice.message.content,
                    "finish_reason": choice.finish_reason or "stop",
                    "usage": qwen_shapes.usage(answer.usage),
                }
            )

    async def StreamQwenChat(
        self, request: qwen_chat_pb2.StreamQwenChatRequest, context: Context
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        surface.enter(NAME)
        started = False
        with surface.rendered(qwen_shapes.error):
            params = request.params
            self._check(params, context)
            # Usage rides on the last event whether or not the client asks.
            params.stream_options.include_usage = True
            try:
                async for body in self._events(params, context):
                    started = True
                    yield body
            except SwitchboardError as err:
                if not started:
                    raise
                # The status line is out: the error becomes the last event.
                yield qwen_shapes.event(qwen_shapes.error(err)[1])
                return
        yield qwen_shapes.DONE

    async def _events(
        self, params: openai_pb2.ChatCompletionParams, context: Context
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        """One event per content chunk, each held back until the next arrives so
        that the last one can carry finish_reason and usage, as the document shows."""
        held: dict[str, Any] | None = None
        finish: str | None = None
        usage = openai_pb2.Usage()
        async for response in self.router.StreamChatCompletion(
            router_pb2.StreamChatCompletionRequest(params=params), context
        ):
            chunk = response.chunk
            if chunk.HasField("usage"):
                usage = chunk.usage
            for choice in chunk.choices[:1]:
                if choice.HasField("finish_reason"):
                    finish = choice.finish_reason
                content = choice.delta.content
                if not content:
                    continue
                if held is not None:
                    yield qwen_shapes.event(held)
                held = {"content": content, "finish_reason": None}
        last = held or {"content": ""}
        last["finish_reason"] = finish or "stop"
        last["usage"] = qwen_shapes.usage(usage)
        yield qwen_shapes.event(last)

    async def ListLlmModels(
        self, request: qwen_chat_pb2.ListLlmModelsRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        return await llm_models.list_llm_models(self.router, context)
