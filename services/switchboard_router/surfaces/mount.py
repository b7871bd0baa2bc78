"""Serve every seed surface beside RouterService, on the router's gRPC server."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import grpc

from switchboard.engine.v1 import engine_pb2_grpc
from switchboard.gpu.v1 import gpu_pb2_grpc
from switchboard.registry.v1 import registry_pb2_grpc
from switchboard.router.v1 import (
    anthropic_messages_pb2,
    anthropic_messages_pb2_grpc,
    bisheng_pb2,
    bisheng_pb2_grpc,
    inference_manager_pb2,
    inference_manager_pb2_grpc,
    multi_llm_pb2,
    multi_llm_pb2_grpc,
    qwen_chat_pb2,
    qwen_chat_pb2_grpc,
    responses_pb2,
    responses_pb2_grpc,
    vision_chat_pb2,
    vision_chat_pb2_grpc,
)
from switchboard.usage.v1 import usage_pb2_grpc
from switchboard_common.channels import channel as service_channel
from switchboard_common.errors import SwitchboardError
from switchboard_common.settings import Settings
from switchboard_router.probes import Prober
from switchboard_router.surfaces import (
    anthropic_shapes,
    bisheng_shapes,
    inference_manager_shapes,
    llm_models,
    multi_llm_shapes,
    qwen_shapes,
    surface,
    vision_chat,
)
from switchboard_router.surfaces.anthropic_messages import AnthropicMessagesServicer
from switchboard_router.surfaces.bisheng import BishengServicer
from switchboard_router.surfaces.inference_manager import InferenceManagerServicer
from switchboard_router.surfaces.multi_llm import MultiLlmServicer
from switchboard_router.surfaces.qwen_chat import QwenChatServicer
from switchboard_router.surfaces.response_store import open_store
from switchboard_router.surfaces.responses import ResponsesServicer
from switchboard_router.surfaces.vision_chat import VisionChatServicer

if TYPE_CHECKING:
    from switchboard_router.service import RouterServicer


_INFERENCE_MANAGER = inference_manager_pb2.DESCRIPTOR.services_by_name[
    "InferenceManagerService"
].full_name
_BISHENG = bisheng_pb2.DESCRIPTOR.services_by_name["BishengService"].full_name

# How each surface renders an error, for the access policy's refusals (401, 403)
# as well as the handlers' own: by full method first, then by service.
_BY_SERVICE: dict[str, surface.Render] = {
    vision_chat_pb2.DESCRIPTOR.services_by_name["VisionChatService"].full_name: vision_chat.error,
    qwen_chat_pb2.DESCRIPTOR.services_by_name["QwenChatService"].full_name: qwen_shapes.error,
    multi_llm_pb2.DESCRIPTOR.services_by_name["MultiLlmService"].full_name: multi_llm_shapes.error,
    anthropic_messages_pb2.DESCRIPTOR.services_by_name[
        "AnthropicMessagesService"
    ].full_name: anthropic_shapes.error,
    _INFERENCE_MANAGER: inference_manager_shapes.error,
    _BISHENG: bisheng_shapes.error,
}
_BY_METHOD: dict[str, surface.Render] = {
    # One body for seeds 001 and 002, whose error shapes differ: the shared one.
    "/switchboard.router.v1.QwenChatService/ListLlmModels": llm_models.error,
}


def refusal(method: str, err: SwitchboardError) -> SwitchboardError:
    """The access policy's refusal of `method`, in its surface's shape."""
    render = _BY_METHOD.get(method) or _BY_SERVICE.get(method.strip("/").split("/")[0])
    return surface.SurfaceError(err, *render(err)) if render else err


def mount_surfaces(
    router: RouterServicer, server: grpc.aio.Server, settings: Settings
) -> tuple[list[str], Callable[[], Awaitable[None]]]:
    """Add the surfaces' services: their full names (for health and reflection),
    and what closes what they opened."""
    registry = service_channel(settings.address("registry"), settings.tls)
    usage = service_channel(settings.address("usage"), settings.tls)
    engine = service_channel(settings.address("engine"), settings.tls)
    gpu = service_channel(settings.address("gpu"), settings.tls)
    # Active health checks, for seed API 002's status (off until its setting has an interval).
    prober = Prober(router)
    prober.start()
    vision_chat_pb2_grpc.add_VisionChatServiceServicer_to_server(VisionChatServicer(router), server)
    qwen_chat_pb2_grpc.add_QwenChatServiceServicer_to_server(QwenChatServicer(router), server)
    multi_llm_pb2_grpc.add_MultiLlmServiceServicer_to_server(
        MultiLlmServicer(
            router,
            registry_pb2_grpc.RegistryServiceStub(registry),
            prober,
            usage_pb2_grpc.UsageServiceStub(usage),
            settings.admin_key,
        ),
        server,
    )
    # The agent APIs (Anthropic Messages, OpenAI Responses) at /v1.
    anthropic_messages_pb2_grpc.add_AnthropicMessagesServiceServicer_to_server(
        AnthropicMessagesServicer(router), server
    )
    store = open_store(settings.redis_url, settings.home)
    responses_pb2_grpc.add_ResponsesServiceServicer_to_server(
        ResponsesServicer(router, store), server
    )
    inference_manager_pb2_grpc.add_InferenceManagerServiceServicer_to_server(
        InferenceManagerServicer(
            router,
            engine_pb2_grpc.EngineServiceStub(engine),
            gpu_pb2_grpc.GpuServiceStub(gpu),
            registry_pb2_grpc.RegistryServiceStub(registry),
            usage_pb2_grpc.UsageServiceStub(usage),
            settings.admin_key,
        ),
        server,
    )
    # The Bisheng LLM API (seed 000).
    bisheng_pb2_grpc.add_BishengServiceServicer_to_server(
        BishengServicer(
            router, registry_pb2_grpc.RegistryServiceStub(registry), settings.admin_key
        ),
        server,
    )
    names = [
        vision_chat_pb2.DESCRIPTOR.services_by_name["VisionChatService"].full_name,
        qwen_chat_pb2.DESCRIPTOR.services_by_name["QwenChatService"].full_name,
        multi_llm_pb2.DESCRIPTOR.services_by_name["MultiLlmService"].full_name,
        anthropic_messages_pb2.DESCRIPTOR.services_by_name["AnthropicMessagesService"].full_name,
        responses_pb2.DESCRIPTOR.services_by_name["ResponsesService"].full_name,
        _INFERENCE_MANAGER,
        _BISHENG,
    ]

    async def close() -> None:
        await prober.close()
        await registry.close()
        await usage.close()
        await store.close()
        await engine.close()
        await gpu.close()

    return names, close
