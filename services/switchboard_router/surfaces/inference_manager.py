"""Seed API 004 (the inference manager) at /api and /api/v1: inference on a
model (generate, chat/completions, embeddings) through RouterService's own
handlers, so each call takes the one pipeline (admission, attempts, the
ledger, counted once with surface "inference_manager"). Its model management
is in inference_manager_models.py, its shapes in inference_manager_shapes.py.

Both generate and chat switch on the body's "stream" as the document does:
one RPC answers either one JSON body or server-sent events (HttpBody streams
pass through the edge byte for byte)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
from google.api import httpbody_pb2
from google.protobuf import json_format

from switchboard.common.v1 import openai_pb2
from switchboard.engine.v1 import engine_pb2_grpc
from switchboard.gpu.v1 import gpu_pb2_grpc
from switchboard.registry.v1 import registry_pb2_grpc
from switchboard.router.v1 import inference_manager_pb2 as pb
from switchboard.router.v1 import inference_manager_pb2_grpc, router_pb2
from switchboard.usage.v1 import usage_pb2_grpc
from switchboard_common import accounts, tokens
from switchboard_common.errors import R, SwitchboardError
from switchboard_common.values import to_python
from switchboard_router.surfaces import surface
from switchboard_router.surfaces.inference_manager_alerts import Alerts
from switchboard_router.surfaces.inference_manager_config import Config
from switchboard_router.surfaces.inference_manager_models import NAME, body_of
from switchboard_router.surfaces.inference_manager_monitoring import Monitoring
from switchboard_router.surfaces.inference_manager_shapes import (
    DONE,
    ValidationFailed,
    answer,
    error,
    event,
)

if TYPE_CHECKING:
    from switchboard_router.service import RouterServicer

Context = grpc.aio.ServicerContext[Any, Any]
# What each route takes besides the document's fields: the OpenAI params it maps to.
_GENERATE = {"prompt", "max_tokens", "temperature", "top_p", "top_k", "stop", "stream", "seed"}
_CHAT = {"messages", "max_tokens", "temperature", "top_p", "top_k", "stop", "stream", "seed"}
_EMBED = {"input", "encoding_format", "dimensions"}


def _params(body: dict[str, Any], known: set[str], message: Any, model_id: str) -> bool:
    """Fill message (OpenAI params) from the body; whether it asks to stream."""
    for key in body:
        if key not in known:
            raise ValidationFailed(key, f"unknown field {key}")
    stream = body.pop("stream", False)
    if not isinstance(stream, bool):
        raise ValidationFailed("stream", "stream must be true or false")
    try:
        json_format.ParseDict(body, message)
    except json_format.ParseError as exc:
        field = next((k for k in body if repr(k) in str(exc) or f'"{k}"' in str(exc)), "body")
        raise ValidationFailed(field, f"invalid {field}: {exc}") from None
    message.model = model_id
    return stream


def _usage(usage: openai_pb2.Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


class InferenceManagerServicer(
    Alerts, Config, Monitoring, inference_manager_pb2_grpc.InferenceManagerServiceServicer
):
    def __init__(
        self,
        router: RouterServicer,
        engines: engine_pb2_grpc.EngineServiceAsyncStub,
        gpus: gpu_pb2_grpc.GpuServiceAsyncStub,
        registry: registry_pb2_grpc.RegistryServiceAsyncStub,
        usage: usage_pb2_grpc.UsageServiceAsyncStub,
        admin_key: str | None,
    ) -> None:
        self.router = router
        self.engines = engines
        self.gpus = gpus
        self.registry = registry
        self.usage = usage
        self.admin_key = admin_key
        self.admin_metadata = (("authorization", f"Bearer {admin_key}"),) if admin_key else ()

    async def IssueToken(
        self, request: pb.IssueTokenRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        surface.enter(NAME)
        with surface.rendered(error):
            body = body_of(request.body)
            for field in ("username", "password"):
                if not isinstance(body.get(field), str) or not body[field]:
                    raise ValidationFailed(field, f"{field} is required")
            path = self.router.settings.accounts_file
            if path is None or not self.admin_key:
                raise SwitchboardError(
                    R.ERROR_REASON_NOT_IMPLEMENTED,
                    "token login is off: set SWITCHBOARD_ACCOUNTS_FILE and SWITCHBOARD_ADMIN_KEY",
                )
            # Read per call: the admin edits the file, and scrypt is CPU work
            # best kept off the event loop.
            table = await asyncio.to_thread(accounts.load, path)
            account = await asyncio.to_thread(
                accounts.authenticate, table, body["username"], body["password"]
            )
            if account is None:
                raise SwitchboardError(
                    R.ERROR_REASON_INVALID_API_KEY, "Invalid username or password."
                )
            admin = account.role == accounts.ADMIN_ROLE
            claims = tokens.Claims(account.username, admin, "" if admin else account.role)
            return answer(
                {
                    "access_token": tokens.issue(self.admin_key, claims),
                    "token_type": "bearer",
                    "expires_in": tokens.DEFAULT_TTL_S,
                }
            )

    async def GenerateText(
        self, request: pb.GenerateTextRequest, context: Context
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        surface.enter(NAME)
        render = _render(request.model_id)
        started = False
        with surface.rendered(render):
            params = openai_pb2.CompletionParams()
            if _params(body_of(request.body), _GENERATE, params, request.model_id):
                try:
                    async for response in self.router.StreamCompletion(
                        router_pb2.StreamCompletionRequest(params=params), context
                    ):
                        for choice in response.chunk.choices:
                            started = True
                            yield event(
                                {
                                    "id": response.chunk.id,
                                    "choices": [{"text": choice.text, "index": choice.index}],
                                }
                            )
                except SwitchboardError as err:
                    if not started:
                        raise
                    yield event(render(err)[1])
                    return
                yield DONE
                return
            result = await self.router.CreateCompletion(
                router_pb2.CreateCompletionRequest(params=params), context
            )
            yield answer(
                {
                    "id": result.id,
                    "model": request.model_id,
                    "choices": [
                        {"text": c.text, "finish_reason": c.finish_reason, "index": c.index}
                        for c in result.choices
                    ],
                    "usage": _usage(result.usage),
                    "created": result.created,
                }
            )

    async def CompleteChat(
        self, request: pb.CompleteChatRequest, context: Context
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        surface.enter(NAME)
        render = _render(request.model_id)
        started = False
        with surface.rendered(render):
            params = openai_pb2.ChatCompletionParams()
            if _params(body_of(request.body), _CHAT, params, request.model_id):
                try:
                    async for response in self.router.StreamChatCompletion(
                        router_pb2.StreamChatCompletionRequest(params=params), context
                    ):
                        chunk = response.chunk
                        for choice in chunk.choices:
                            started = True
                            delta: dict[str, str] = {}
                            if choice.delta.role:
                                delta["role"] = choice.delta.role
                            if choice.delta.content:
                                delta["content"] = choice.delta.content
                            out: dict[str, Any] = {"delta": delta, "index": choice.index}
                            if choice.HasField("finish_reason"):
                                out["finish_reason"] = choice.finish_reason
                            yield event({"id": chunk.id, "choices": [out]})
                except SwitchboardError as err:
                    if not started:
                        raise
                    yield event(render(err)[1])
                    return
                yield DONE
                return
            result = await self.router.CreateChatCompletion(
                router_pb2.CreateChatCompletionRequest(params=params), context
            )
            yield answer(
                {
                    "id": result.id,
                    "model": request.model_id,
                    "choices": [
                        {
                            "message": {"role": c.message.role, "content": c.message.content},
                            "finish_reason": c.finish_reason,
                            "index": c.index,
                        }
                        for c in result.choices
                    ],
                    "usage": _usage(result.usage),
                }
            )

    async def EmbedText(
        self, request: pb.EmbedTextRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        surface.enter(NAME)
        with surface.rendered(_render(request.model_id)):
            params = openai_pb2.EmbeddingParams()
            _params(body_of(request.body), _EMBED, params, request.model_id)
            result = await self.router.CreateEmbedding(
                router_pb2.CreateEmbeddingRequest(params=params), context
            )
            return answer(
                {
                    "data": [
                        {"embedding": to_python(e.embedding), "index": e.index} for e in result.data
                    ],
                    "model": request.model_id,
                    "usage": {
                        "prompt_tokens": result.usage.prompt_tokens,
                        "total_tokens": result.usage.total_tokens,
                    },
                }
            )


def _render(model_id: str) -> surface.Render:
    return lambda err: error(err, model_id=model_id)
