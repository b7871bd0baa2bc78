"""Serve every seed surface beside RouterService, on the router's gRPC server."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import grpc

from switchboard.registry.v1 import registry_pb2_grpc
from switchboard.router.v1 import (
    multi_llm_pb2,
    multi_llm_pb2_grpc,
    qwen_chat_pb2,
    qwen_chat_pb2_grpc,
    vision_chat_pb2,
    vision_chat_pb2_grpc,
)
from switchboard_common.channels import channel as service_channel
from switchboard_common.settings import Settings
from switchboard_router.probes import Prober
from switchboard_router.surfaces.multi_llm import MultiLlmServicer
from switchboard_router.surfaces.qwen_chat import QwenChatServicer
from switchboard_router.surfaces.vision_chat import VisionChatServicer

if TYPE_CHECKING:
    from switchboard_router.service import RouterServicer


def mount_surfaces(
    router: RouterServicer, server: grpc.aio.Server, settings: Settings
) -> tuple[list[str], Callable[[], Awaitable[None]]]:
    """Add the surfaces' services: their full names (for health and reflection),
    and what closes what they opened."""
    registry = service_channel(settings.address("registry"), settings.tls)
    # Active health checks, for seed API 002's status (off until its setting has an interval).
    prober = Prober(router)
    prober.start()
    vision_chat_pb2_grpc.add_VisionChatServiceServicer_to_server(VisionChatServicer(router), server)
    qwen_chat_pb2_grpc.add_QwenChatServiceServicer_to_server(QwenChatServicer(router), server)
    multi_llm_pb2_grpc.add_MultiLlmServiceServicer_to_server(
        MultiLlmServicer(router, registry_pb2_grpc.RegistryServiceStub(registry), prober), server
    )
    names = [
        vision_chat_pb2.DESCRIPTOR.services_by_name["VisionChatService"].full_name,
        qwen_chat_pb2.DESCRIPTOR.services_by_name["QwenChatService"].full_name,
        multi_llm_pb2.DESCRIPTOR.services_by_name["MultiLlmService"].full_name,
    ]

    async def close() -> None:
        await prober.close()
        await registry.close()

    return names, close
