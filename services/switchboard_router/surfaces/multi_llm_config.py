"""Seed API 002's admin config routes, written to the registry, which applies
them live (routers follow it within a second) and logs them in its change log:
PUT /config/models/{id} (a model's switch, limits, fallbacks and default
parameters) and PUT /config/load-balancing (the registry's load-balancing
setting: a model group spread by weight, and the breakers' thresholds)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from google.api import httpbody_pb2
from google.protobuf import field_mask_pb2

from switchboard.registry.v1 import registry_pb2, registry_pb2_grpc
from switchboard.router.v1 import multi_llm_pb2
from switchboard_common.errors import R, SwitchboardError, from_rpc_error
from switchboard_router.surfaces import surface
from switchboard_router.surfaces.multi_llm_shapes import answer, error

if TYPE_CHECKING:
    from switchboard_router.service import RouterServicer

Context = grpc.aio.ServicerContext[Any, Any]
NAME = "multi_llm"
CALL_TIMEOUT_S = 10.0
T = TypeVar("T")
STRATEGIES = {
    "weighted_random": registry_pb2.ROUTING_STRATEGY_WEIGHTED_RANDOM,
    "round_robin": registry_pb2.ROUTING_STRATEGY_ROUND_ROBIN,
}
STRATEGY_NAMES = {v: k for k, v in STRATEGIES.items()}


class Config:
    """MultiLlmService's admin RPCs (mixed into MultiLlmServicer)."""

    router: RouterServicer
    registry: registry_pb2_grpc.RegistryServiceAsyncStub
    # The registry's admin RPCs take the admin key, which this router holds.
    admin_metadata: tuple[tuple[str, str], ...]

    async def _registry(self, call: Callable[..., Awaitable[T]], request: Any) -> T:
        try:
            return await call(
                request,
                timeout=CALL_TIMEOUT_S,
                metadata=self.admin_metadata,
            )
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, "registry") from None

    async def UpdateModelConfig(
        self, request: multi_llm_pb2.UpdateModelConfigRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        surface.enter(NAME)
        with surface.rendered(lambda err: error(err, model=request.model_id)):
            patch, paths = _model_patch(request)
            reply = await self._registry(
                self.registry.UpdateModel,
                registry_pb2.UpdateModelRequest(
                    model=patch, update_mask=field_mask_pb2.FieldMask(paths=paths)
                ),
            )
            model = reply.model
            defaults = model.default_parameters
            parameters: dict[str, Any] = {}
            if defaults.HasField("temperature"):
                parameters["default_temperature"] = defaults.temperature
            if defaults.HasField("top_p"):
                parameters["default_top_p"] = defaults.top_p
            if defaults.HasField("max_tokens"):
                parameters["max_tokens"] = defaults.max_tokens
            return answer(
                {
                    "model_id": model.name,
                    "enabled": model.online,
                    "rate_limit": {
                        "requests_per_minute": model.rpm,
                        "tokens_per_minute": model.tpm,
                    },
                    "fallback_models": list(model.fallbacks),
                    "parameters": parameters,
                }
            )

    async def UpdateLoadBalancing(
        self, request: multi_llm_pb2.UpdateLoadBalancingRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        surface.enter(NAME)
        with surface.rendered(error):
            current = await self._registry(
                self.registry.GetLoadBalancing, registry_pb2.GetLoadBalancingRequest()
            )
            lb = _balancing(request, current.load_balancing)
            reply = await self._registry(
                self.registry.SetLoadBalancing,
                registry_pb2.SetLoadBalancingRequest(load_balancing=lb),
            )
            lb = reply.load_balancing
            return answer(
                {
                    "group": lb.group,
                    "strategy": STRATEGY_NAMES.get(lb.strategy, "weighted_random"),
                    "health_check_interval": lb.health_check_interval_s,
                    "failure_threshold": lb.failure_threshold,
                    "recovery_threshold": lb.recovery_threshold,
                    "weights": dict(sorted(lb.weights.items())),
                }
            )


def _model_patch(
    request: multi_llm_pb2.UpdateModelConfigRequest,
) -> tuple[registry_pb2.Model, list[str]]:
    """The registry update the document's body means; priority has no model-level
    counterpart (deployments have priorities) and is accepted without effect."""
    patch = registry_pb2.Model(name=request.model_id)
    paths: list[str] = []
    if request.HasField("enabled"):
        patch.online = request.enabled
        paths.append("online")
    limit = request.rate_limit
    if limit.HasField("requests_per_minute"):
        patch.rpm = limit.requests_per_minute
        paths.append("rpm")
    if limit.HasField("tokens_per_minute"):
        patch.tpm = limit.tokens_per_minute
        paths.append("tpm")
    if request.fallback_models:
        patch.fallbacks.extend(request.fallback_models)
        paths.append("fallbacks")
    given = request.parameters
    defaults = patch.default_parameters
    if given.HasField("default_temperature"):
        defaults.temperature = given.default_temperature
        paths.append("default_parameters.temperature")
    if given.HasField("default_top_p"):
        defaults.top_p = given.default_top_p
        paths.append("default_parameters.top_p")
    if given.HasField("max_tokens"):
        defaults.max_tokens = given.max_tokens
        paths.append("default_parameters.max_tokens")
    if not paths:
        raise SwitchboardError(
            R.ERROR_REASON_INVALID_REQUEST,
            "nothing to change: send enabled, rate_limit, fallback_models or parameters",
        )
    return patch, paths


def _balancing(
    request: multi_llm_pb2.UpdateLoadBalancingRequest, current: registry_pb2.LoadBalancing
) -> registry_pb2.LoadBalancing:
    """The setting with the body's fields over the current ones (the etag makes
    a concurrent change fail rather than be lost)."""
    lb = registry_pb2.LoadBalancing()
    lb.CopyFrom(current)
    if request.strategy:
        if request.strategy not in STRATEGIES:
            raise SwitchboardError(
                R.ERROR_REASON_INVALID_REQUEST,
                f"strategy must be one of {', '.join(STRATEGIES)}",
                param="strategy",
            )
        lb.strategy = STRATEGIES[request.strategy]
    if request.HasField("health_check_interval"):
        lb.health_check_interval_s = request.health_check_interval
    if request.HasField("failure_threshold"):
        lb.failure_threshold = request.failure_threshold
    if request.HasField("recovery_threshold"):
        lb.recovery_threshold = request.recovery_threshold
    if request.weights:
        lb.weights.clear()
        lb.weights.update(request.weights)
    if request.group:
        lb.group = request.group
    return lb
