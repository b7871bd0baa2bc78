"""ProviderService: picks the adapter for a target and guarantees the contract's
last event, one UsageRecord per attempt, whatever the upstream does."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from switchboard.common.v1 import openai_pb2
from switchboard.provider.v1 import provider_pb2, provider_pb2_grpc
from switchboard.usage.v1 import usage_pb2
from switchboard_common import tracing
from switchboard_common.config import ProviderConfig, SwitchboardConfig
from switchboard_common.deadlines import remaining
from switchboard_common.errors import R, SwitchboardError
from switchboard_common.logs import log_fields
from switchboard_common.registry_follower import follow_registry
from switchboard_common.registry_snapshot import config_from_snapshot
from switchboard_common.server import Mounted
from switchboard_common.settings import Settings
from switchboard_provider.adapters.base import Adapter, prompt_text
from switchboard_provider.adapters.mock import MockAdapter
from switchboard_provider.adapters.openai_compat import OpenAIAdapter
from switchboard_provider.media import MediaRpcs
from switchboard_provider.meter import UsageMeter

log = logging.getLogger(__name__)
Context = grpc.aio.ServicerContext[Any, Any]

# An upper bound for any single upstream attempt, whatever the caller allows.
MAX_ATTEMPT_S = 600.0
# How long a call may wait for a registry version its router has already seen.
CATCH_UP_S = 2.0


def encode_base64(embeddings: openai_pb2.EmbeddingList) -> None:
    """Return vectors the way OpenAI does for encoding_format=base64 (little-endian
    float32), whatever the adapter produced; upstreams that did it already pass."""
    for item in embeddings.data:
        if item.embedding.HasField("list_value"):
            values = [v.number_value for v in item.embedding.list_value.values]
            item.embedding.string_value = base64.b64encode(
                struct.pack(f"<{len(values)}f", *values)
            ).decode()


def build_adapter(config: ProviderConfig) -> Adapter:
    if config.kind == "openai":
        return OpenAIAdapter(config)
    if config.kind == "mock":
        return MockAdapter(config)
    if config.kind == "gemini":
        # Imported on demand: google-genai is a heavy import that stacks
        # without a gemini provider need not pay for.
        from switchboard_provider.adapters.gemini import GeminiAdapter

        return GeminiAdapter(config)
    if config.kind == "anthropic":
        from switchboard_provider.adapters.anthropic.adapter import AnthropicAdapter

        return AnthropicAdapter(config)
    raise SwitchboardError(
        R.ERROR_REASON_NOT_IMPLEMENTED,
        f"provider {config.name!r}: kind {config.kind!r} is not supported yet",
    )


class ProviderServicer(MediaRpcs, provider_pb2_grpc.ProviderServiceServicer):
    def __init__(self, config: SwitchboardConfig, version: int = 0) -> None:
        self._configs: dict[str, ProviderConfig] = {}
        self._adapters: dict[str, Adapter] = {}
        # Adapters replaced by a registry change; calls in flight may still use them.
        self._retired: list[Adapter] = []
        self._version = version
        self._updated = asyncio.Condition()
        self._notifying: set[asyncio.Task[None]] = set()
        self.reconfigure(config, version)

    def reconfigure(self, config: SwitchboardConfig, version: int) -> None:
        configs = {p.name: p for p in config.providers}
        for name in list(self._adapters):
            if configs.get(name) != self._configs.get(name):
                self._retired.append(self._adapters.pop(name))
        self._configs = configs
        self._version = version
        # Keep a reference: the loop holds tasks only weakly.
        task = asyncio.get_running_loop().create_task(self._notify())
        self._notifying.add(task)
        task.add_done_callback(self._notifying.discard)

    async def _notify(self) -> None:
        async with self._updated:
            self._updated.notify_all()

    async def _config(self, target: provider_pb2.Target) -> ProviderConfig:
        """The target's provider; a router that saw a newer registry version
        (a provider created a moment ago) gets a short wait for it to arrive."""
        if self._version < target.config_version:
            async with self._updated:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._updated.wait_for(lambda: self._version >= target.config_version),
                        CATCH_UP_S,
                    )
        config = self._configs.get(target.provider)
        if config is None:
            raise SwitchboardError(
                R.ERROR_REASON_INVALID_REQUEST,
                f"unknown provider {target.provider!r}",
                param="provider",
            )
        return config

    def adapter(self, config: ProviderConfig) -> Adapter:
        adapter = self._adapters.get(config.name)
        if adapter is None:
            adapter = self._adapters[config.name] = build_adapter(config)
        return adapter

    async def StreamGenerate(
        self, request: provider_pb2.StreamGenerateRequest, context: Context
    ) -> AsyncIterator[provider_pb2.StreamGenerateResponse]:
        operation = (
            usage_pb2.OPERATION_CHAT if request.HasField("chat") else usage_pb2.OPERATION_COMPLETION
        )
        meter = UsageMeter(request, operation)
        meter.prompt_text = prompt_text(request)
        config = await self._config(request.target)
        adapter = self.adapter(config)
        timeout_s = remaining(context, MAX_ATTEMPT_S)
        first_s = (
            (config.first_token_timeout_s or config.timeout_s) if request.stream else timeout_s
        )
        idle_s = config.idle_timeout_s or config.timeout_s
        produced = False
        span = _upstream_span(config, request)
        failure: BaseException | None = None
        events = adapter.generate(request, meter, timeout_s)
        # Each wait is bounded on its own, never across a yield: the caller
        # (gRPC's task, or the router's own when the provider is embedded)
        # runs its code between events, and a timeout must not cancel that.
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                wait_s = idle_s if produced else first_s
                left_s = deadline - time.monotonic()
                try:
                    async with asyncio.timeout(min(wait_s, left_s)):
                        event = await anext(events)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    if left_s <= wait_s:
                        what = f"did not finish within {timeout_s:.1f}s"
                    else:
                        silent = "sent nothing more" if produced else "sent no first token"
                        what = f"{silent} within {wait_s:g}s"
                    raise SwitchboardError(
                        R.ERROR_REASON_UPSTREAM_TIMEOUT,
                        f"provider {request.target.provider!r} {what}",
                    ) from None
                if not produced:
                    _response_model(span, event)
                produced = True
                yield event
        except SwitchboardError as err:
            failure = err
            yield self._usage(meter, produced, err)
            raise
        except asyncio.CancelledError:
            # The caller left; nobody can receive the record on this stream, so
            # it goes to the log. The router accounts the cancelled attempt.
            record = meter.finish(usage_pb2.USAGE_STATUS_CANCELLED)
            log.info("attempt cancelled", extra=log_fields(event_id=record.event_id))
            raise
        finally:
            # Closing the adapter's generator closes the upstream request now,
            # not whenever the garbage collector gets to it.
            await events.aclose()
            _finish_upstream(span, meter.record, failure)
        yield provider_pb2.StreamGenerateResponse(usage=meter.finish(usage_pb2.USAGE_STATUS_OK))

    async def Generate(
        self, request: provider_pb2.GenerateRequest, context: Context
    ) -> provider_pb2.GenerateResponse:
        # The same attempt as StreamGenerate's, collected into one reply.
        streamed = provider_pb2.StreamGenerateRequest(
            request_id=request.request_id, attempt=request.attempt, target=request.target
        )
        kind = request.WhichOneof("params")
        if kind is not None:
            getattr(streamed, kind).CopyFrom(getattr(request, kind))
        if request.HasField("native"):
            streamed.native.CopyFrom(request.native)
        response = provider_pb2.GenerateResponse()
        try:
            async for event in self.StreamGenerate(streamed, context):
                answer = event.WhichOneof("event")
                if answer == "usage":
                    response.usage.CopyFrom(event.usage)
                elif answer in ("chat_completion", "completion"):
                    getattr(response, answer).CopyFrom(getattr(event, answer))
                    response.native = event.native
        except SwitchboardError as err:
            if not response.HasField("usage"):
                raise  # failed before the upstream was asked: nothing to account
            response.ClearField("answer")
            response.error.CopyFrom(err.to_status())
        return response

    @staticmethod
    def _usage(
        meter: UsageMeter, produced: bool, err: SwitchboardError
    ) -> provider_pb2.StreamGenerateResponse:
        status = usage_pb2.USAGE_STATUS_PARTIAL if produced else usage_pb2.USAGE_STATUS_ERROR
        return provider_pb2.StreamGenerateResponse(usage=meter.finish(status, err))

    async def CreateEmbedding(
        self, request: provider_pb2.CreateEmbeddingRequest, context: Context
    ) -> provider_pb2.CreateEmbeddingResponse:
        adapter = self.adapter(await self._config(request.target))
        meter = UsageMeter(
            provider_pb2.StreamGenerateRequest(
                request_id=request.request_id, attempt=request.attempt, target=request.target
            ),
            usage_pb2.OPERATION_EMBEDDING,
        )
        embeddings = await adapter.embed(request, remaining(context, MAX_ATTEMPT_S))
        if request.params.encoding_format == "base64":
            encode_base64(embeddings)
        if embeddings.HasField("usage"):
            meter.record.prompt_tokens = embeddings.usage.prompt_tokens
            meter.record.total_tokens = embeddings.usage.total_tokens
            meter.report_embedding()
        return provider_pb2.CreateEmbeddingResponse(
            embeddings=embeddings, usage=meter.finish(usage_pb2.USAGE_STATUS_OK)
        )

    async def close(self) -> None:
        for adapter in [*self._adapters.values(), *self._retired]:
            await adapter.close()


def _upstream_span(
    config: ProviderConfig, request: provider_pb2.StreamGenerateRequest
) -> tracing.Span:
    """The upstream call's span (GenAI client span: "{operation} {model}")."""
    name = "chat" if request.HasField("chat") else "text_completion"
    model = request.target.upstream_model
    return tracing.start(
        f"{name} {model}",
        tracing.SpanKind.CLIENT,
        attributes={
            tracing.OPERATION: name,
            tracing.PROVIDER: config.kind,
            tracing.REQUEST_MODEL: model,
            tracing.REQUEST_ID: request.request_id,
            "switchboard.provider": config.name,
        },
    )


def _response_model(span: tracing.Span, event: provider_pb2.StreamGenerateResponse) -> None:
    if not span.is_recording():
        return
    kind = event.WhichOneof("event")
    model = getattr(getattr(event, kind), "model", "") if kind and kind != "usage" else ""
    if model:
        span.set_attribute(tracing.RESPONSE_MODEL, model)


def _finish_upstream(
    span: tracing.Span, record: usage_pb2.UsageRecord, failure: BaseException | None
) -> None:
    if span.is_recording():
        span.set_attributes(
            {
                tracing.INPUT_TOKENS: record.prompt_tokens,
                tracing.OUTPUT_TOKENS: record.completion_tokens,
            }
        )
    tracing.end(span, failure)


async def setup(server: grpc.aio.Server, settings: Settings) -> Mounted:
    servicer = ProviderServicer(SwitchboardConfig())
    follower = await follow_registry(
        settings,
        lambda snapshot: servicer.reconfigure(config_from_snapshot(snapshot), snapshot.version),
    )
    provider_pb2_grpc.add_ProviderServiceServicer_to_server(servicer, server)
    name = provider_pb2.DESCRIPTOR.services_by_name["ProviderService"].full_name
    return Mounted([name], [follower.close, servicer.close], ready=follower.fresh)
