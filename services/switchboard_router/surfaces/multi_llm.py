"""Seed API 002 (the multi-model LLM API) at /api/llm and /api/v1/llm: text
generation with cost, unary and streamed. Its model list, status, health,
statistics and config routes are in multi_llm_ops.py.

Shapes (answers, events, errors) are in multi_llm_shapes.py.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

import grpc
from google.api import httpbody_pb2

from switchboard.common.v1 import openai_pb2
from switchboard.registry.v1 import registry_pb2_grpc
from switchboard.router.v1 import multi_llm_pb2, multi_llm_pb2_grpc, router_pb2
from switchboard.usage.v1 import usage_pb2, usage_pb2_grpc
from switchboard_common.errors import SwitchboardError
from switchboard_common.pricing import price
from switchboard_router.probes import Prober
from switchboard_router.surfaces import multi_llm_config, multi_llm_ops, surface
from switchboard_router.surfaces.multi_llm_shapes import DONE, answer, error, event

if TYPE_CHECKING:
    from switchboard_router.service import RouterServicer

Context = grpc.aio.ServicerContext[Any, Any]
NAME = "multi_llm"
NANOS = 1e9


class _Served:
    """The caller's context, noting the deployment that served the call (the
    router says so in the initial metadata) to price the answer with its pricing."""

    def __init__(self, context: Context) -> None:
        self._context = context
        self.model = ""
        self.deployment = ""

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    async def send_initial_metadata(self, metadata: Sequence[tuple[str, str]]) -> None:
        for key, value in metadata:
            if key == "x-switchboard-model":
                self.model = value
            elif key == "x-switchboard-deployment":
                self.deployment = value
        await self._context.send_initial_metadata(metadata)


def _params(
    request: multi_llm_pb2.GenerateRequest | multi_llm_pb2.StreamGenerateRequest,
) -> openai_pb2.ChatCompletionParams:
    params = openai_pb2.ChatCompletionParams(model=request.model, messages=request.messages)
    given = request.parameters
    if given.HasField("temperature"):
        params.temperature = given.temperature
    if given.HasField("max_tokens"):
        params.max_tokens = given.max_tokens
    if given.HasField("top_p"):
        params.top_p = given.top_p
    return params


class MultiLlmServicer(
    multi_llm_ops.Operations, multi_llm_config.Config, multi_llm_pb2_grpc.MultiLlmServiceServicer
):
    def __init__(
        self,
        router: RouterServicer,
        registry: registry_pb2_grpc.RegistryServiceAsyncStub,
        prober: Prober,
        usage: usage_pb2_grpc.UsageServiceAsyncStub,
        admin_key: str | None,
    ) -> None:
        self.router = router
        self.usage = usage
        self.registry = registry
        self.prober = prober
        self.admin_metadata = (("authorization", f"Bearer {admin_key}"),) if admin_key else ()

    def _cost(self, deployment_id: str, model: str, usage: openai_pb2.Usage) -> dict[str, float]:
        """What the ledger charges for the attempt that answered: the same
        pricing (the deployment's, else the model's) and the same arithmetic."""
        pricing = None
        found = self.router.catalog.find(model)
        if found is not None:
            deployment = next(
                (d for d in found.deployments if d.resolved_id(found.name) == deployment_id), None
            )
            pricing = (deployment.pricing if deployment else None) or found.pricing
        record = usage_pb2.UsageRecord(
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cached_tokens=usage.prompt_tokens_details.cached_tokens,
        )
        event = price(record, pricing)
        return {
            "input_cost": event.input_cost_nanos / NANOS,
            "output_cost": event.output_cost_nanos / NANOS,
            "total_cost": event.total_cost_nanos / NANOS,
        }

    async def Generate(
        self, request: multi_llm_pb2.GenerateRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        surface.enter(NAME)
        with surface.rendered(functools.partial(error, model=request.model)):
            served = _Served(context)
            result = await self.router.CreateChatCompletion(
                router_pb2.CreateChatCompletionRequest(params=_params(request)),
                served,  # type: ignore[arg-type]  # forwards every other attribute
            )
            usage = result.usage
            return answer(
                {
                    "id": result.id,
                    "model": request.model,
                    "choices": [
                        {
                            "index": c.index,
                            "message": {"role": c.message.role, "content": c.message.content},
                            "finish_reason": c.finish_reason,
                        }
                        for c in result.choices
                    ],
                    "usage": {
                        "prompt_tokens": usage.prompt_tokens,
                        "completion_tokens": usage.completion_tokens,
                        "total_tokens": usage.total_tokens,
                    },
                    "cost": self._cost(served.deployment, served.model, usage),
                }
            )

    async def StreamGenerate(
        self, request: multi_llm_pb2.StreamGenerateRequest, context: Context
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        surface.enter(NAME)
        render = functools.partial(error, model=request.model)
        started = False
        with surface.rendered(render):
            try:
                async for response in self.router.StreamChatCompletion(
                    router_pb2.StreamChatCompletionRequest(params=_params(request)), context
                ):
                    chunk = response.chunk
                    for choice in chunk.choices[:1]:
                        if choice.delta.content:
                            started = True
                            yield event(
                                {
                                    "id": chunk.id,
                                    "choices": [{"delta": {"content": choice.delta.content}}],
                                }
                            )
            except SwitchboardError as err:
                if not started:
                    raise
                # The status line is out: the error becomes the last event.
                yield event(render(err)[1])
                return
        yield DONE
