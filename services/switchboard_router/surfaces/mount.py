"""Serve every seed surface beside RouterService, on the router's gRPC server."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc

from switchboard.router.v1 import vision_chat_pb2, vision_chat_pb2_grpc
from switchboard_router.surfaces.vision_chat import VisionChatServicer

if TYPE_CHECKING:
    from switchboard_router.service import RouterServicer


def mount_surfaces(router: RouterServicer, server: grpc.aio.Server) -> list[str]:
    """Add the surfaces' services; their full names (for health and reflection)."""
    vision_chat_pb2_grpc.add_VisionChatServiceServicer_to_server(VisionChatServicer(router), server)
    return [vision_chat_pb2.DESCRIPTOR.services_by_name["VisionChatService"].full_name]
