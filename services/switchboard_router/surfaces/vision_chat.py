"""Seed API 003 (the vision chat service) at /api/v1: OpenAI's chat shapes with
an optional "model" (absent, the registry's active model for the use serves),
a picture-recognition route, and errors as {"detail": "..."}.

RouterService does the work; this module fills in the active model and renders
errors: 503 when no model can serve, 500 when the model call failed, and the
router's own status for the client's mistakes (400, 401, 403, 413, 429).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
from google.api import httpbody_pb2

from switchboard.common.v1 import openai_pb2
from switchboard.router.v1 import router_pb2, vision_chat_pb2, vision_chat_pb2_grpc
from switchboard_common.config import ModelUse
from switchboard_common.errors import R, SwitchboardError
from switchboard_router import vision
from switchboard_router.surfaces import surface

if TYPE_CHECKING:
    from switchboard_router.service import RouterServicer

Context = grpc.aio.ServicerContext[Any, Any]
NAME = "vision_chat"

# "没有可用的模型服务": nothing can serve the call.
_UNAVAILABLE = frozenset(
    {
        R.ERROR_REASON_NO_HEALTHY_DEPLOYMENT,
        R.ERROR_REASON_SERVICE_UNAVAILABLE,
        R.ERROR_REASON_MODEL_NOT_FOUND,
    }
)
# "模型服务调用失败": the call was made and failed.
_FAILED = frozenset(
    {
        R.ERROR_REASON_UPSTREAM_ERROR,
        R.ERROR_REASON_UPSTREAM_AUTH,
        R.ERROR_REASON_UPSTREAM_TIMEOUT,
        R.ERROR_REASON_UPSTREAM_INVALID_REQUEST,
        R.ERROR_REASON_INTERNAL,
        R.ERROR_REASON_NOT_IMPLEMENTED,
    }
)


def error(err: SwitchboardError) -> tuple[int, dict[str, Any]]:
    if err.reason in _UNAVAILABLE:
        status = 503
    elif err.reason in _FAILED:
        status = 500
    else:
        status = err.http_status
    return status, {"detail": err.message}


class VisionChatServicer(vision_chat_pb2_grpc.VisionChatServiceServicer):
    def __init__(self, router: RouterServicer) -> None:
        self.router = router

    def _active(self, context: Context, requested: str, use: ModelUse) -> str:
        """The model to call: the one asked for, else the active one for the use.
        The access policy checked the key first, as on every route (401 first)."""
        if requested:
            return requested
        active = self.router.catalog.active_model(use)
        if active is None:
            raise SwitchboardError(
                R.ERROR_REASON_NO_HEALTHY_DEPLOYMENT,
                f"No {use} model is active: name one in 'model', or activate one "
                f"(switchboard models activate <model> --use {use}).",
            )
        return active

    async def CreateVisionChat(
        self, request: vision_chat_pb2.CreateVisionChatRequest, context: Context
    ) -> openai_pb2.ChatCompletion:
        surface.enter(NAME)
        with surface.rendered(error):
            params = request.params
            params.model = self._active(context, params.model, "chat")
            return await self.router.CreateChatCompletion(
                router_pb2.CreateChatCompletionRequest(params=params), context
            )

    async def StreamVisionChatSse(
        self, request: vision_chat_pb2.StreamVisionChatSseRequest, context: Context
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        surface.enter(NAME)
        with surface.rendered(error):
            params = request.params
            params.model = self._active(context, params.model, "chat")
            async for body in self.router.StreamChatCompletionSse(
                router_pb2.StreamChatCompletionSseRequest(params=params), context
            ):
                yield body

    async def RecognizeImage(
        self, request: vision_chat_pb2.RecognizeImageRequest, context: Context
    ) -> vision_chat_pb2.RecognizeImageResponse:
        surface.enter(NAME)
        with surface.rendered(error):
            picture = vision.read_request(
                router_pb2.CreateVisionCompletionRequest(form=request.form)
            )
            answer = await self.router.CreateVisionCompletion(
                router_pb2.CreateVisionCompletionRequest(
                    image=picture.data,
                    image_type=picture.mime,
                    model=picture.model or self._vision_model(),
                ),
                context,
            )
            return vision_chat_pb2.RecognizeImageResponse(
                recognition_id=answer.recognition_id, objects=answer.objects
            )

    def _vision_model(self) -> str:
        """The active vision model; without one, the first vision-capable chat
        model (as /v1/vision/completions does); without any, nothing can serve."""
        try:
            return self.router.catalog.default_vision_model()
        except SwitchboardError as err:
            raise SwitchboardError(R.ERROR_REASON_NO_HEALTHY_DEPLOYMENT, err.message) from None

    async def ListVisionChatModels(
        self, request: vision_chat_pb2.ListVisionChatModelsRequest, context: Context
    ) -> vision_chat_pb2.ListVisionChatModelsResponse:
        surface.enter(NAME)
        with surface.rendered(error):
            listed = await self.router.ListModels(router_pb2.ListModelsRequest(), context)
            return vision_chat_pb2.ListVisionChatModelsResponse(object="list", data=listed.data)
