"""The Bisheng LLM API (seed 000) at /api/v1/llm, /api/v2/assistant and
/health: its model servers (registry providers) and their models, the
default-model configs (bisheng_defaults.py), the workbench's speech
recognition and synthesis (bisheng_audio.py), and its OpenAI-compatible chat
endpoint, whose "model" names a Switchboard model (absent: the assistant
default) and which pseudo-streams models that cannot stream (RouterService).

Answers and errors are in Bisheng's envelope {status_code, status_message, data}."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
from google.api import httpbody_pb2
from google.protobuf import field_mask_pb2

from switchboard.common.v1 import openai_pb2
from switchboard.registry.v1 import registry_pb2 as pb
from switchboard.registry.v1 import registry_pb2_grpc
from switchboard.router.v1 import bisheng_pb2, bisheng_pb2_grpc, router_pb2
from switchboard_common.errors import R, SwitchboardError
from switchboard_router.default_models import model_for_use
from switchboard_router.surfaces import bisheng_defaults, surface
from switchboard_router.surfaces.bisheng_audio import WorkbenchSpeech, url_key
from switchboard_router.surfaces.bisheng_registry import Registry, registry_name
from switchboard_router.surfaces.bisheng_shapes import (
    NAME,
    answer,
    error,
    integer,
    model_from,
    provider_from,
    served_by,
    server_info,
)

if TYPE_CHECKING:
    from switchboard_router.service import RouterServicer

Context = grpc.aio.ServicerContext[Any, Any]


class BishengServicer(WorkbenchSpeech, bisheng_pb2_grpc.BishengServiceServicer):
    def __init__(
        self,
        router: RouterServicer,
        registry: registry_pb2_grpc.RegistryServiceAsyncStub,
        admin_key: str | None,
    ) -> None:
        self.router = router
        self.registry = Registry(registry, admin_key)
        self._url_key = url_key(admin_key)

    async def _server(self, server: pb.Provider) -> dict[str, Any]:
        return server_info(server, served_by(await self.registry.models(), server))

    async def ListBishengServers(
        self, request: bisheng_pb2.ListBishengServersRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        surface.enter(NAME)
        with surface.rendered(error):
            models = await self.registry.models()
            servers = await self.registry.providers()
            return answer([server_info(s, served_by(models, s)) for s in servers])

    async def GetBishengServer(
        self, request: bisheng_pb2.GetBishengServerRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        surface.enter(NAME)
        with surface.rendered(error):
            if not request.server_id:
                raise SwitchboardError(
                    R.ERROR_REASON_INVALID_REQUEST, "server_id is required", param="server_id"
                )
            return answer(await self._server(await self.registry.server(request.server_id)))

    async def CreateBishengServer(
        self, request: bisheng_pb2.CreateBishengServerRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        surface.enter(NAME)
        with surface.rendered(error):
            body = surface.read_json(request.body)
            name = str(body.get("name") or "")
            provider = provider_from(body, registry_name(name))
            entries = _models(body)
            created = (
                await self.registry.call(
                    self.registry.stub.CreateProvider, pb.CreateProviderRequest(provider=provider)
                )
            ).provider
            added: list[pb.Model] = []
            try:
                for index, entry in enumerate(entries):
                    model, upstream = model_from(entry, index)
                    added.append(await self.registry.add_model(model, created.name, upstream))
            except SwitchboardError:
                # All or nothing, as Bisheng's one transaction.
                for model in added:
                    await self.registry.remove_model(await self._fresh(model.name))
                await self.registry.call(
                    self.registry.stub.DeleteProvider, pb.DeleteProviderRequest(name=created.name)
                )
                raise
            return answer(await self._server(created))

    async def _fresh(self, name: str) -> pb.Model:
        reply = await self.registry.call(self.registry.stub.GetModel, pb.GetModelRequest(name=name))
        return reply.model

    async def UpdateBishengServer(
        self, request: bisheng_pb2.UpdateBishengServerRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        surface.enter(NAME)
        with surface.rendered(error):
            body = surface.read_json(request.body)
            current = await self.registry.server(integer(body, "id"))
            patch = provider_from(body, current.name)
            mine = {m.number: m for m in served_by(await self.registry.models(), current)}
            # Everything is checked before anything is written.
            added: list[tuple[pb.Model, str]] = []
            changed: list[pb.Model] = []
            for index, entry in enumerate(_models(body)):
                model, upstream = model_from(entry, index)
                number = entry.get("id")
                if number is None:
                    added.append((model, upstream))
                    continue
                if number not in mine:
                    raise SwitchboardError(
                        R.ERROR_REASON_INVALID_REQUEST,
                        f"models[{index}].id: server {current.number} has no model {number}",
                        param=f"models[{index}].id",
                    )
                model.name = mine.pop(number).name
                changed.append(model)
            # Bisheng's update replaces the server's model list: the rest go.
            await self.registry.check_removable(list(mine.values()))
            await self.registry.call(
                self.registry.stub.UpdateProvider,
                pb.UpdateProviderRequest(
                    provider=patch,
                    update_mask=field_mask_pb2.FieldMask(
                        paths=["base_url", "api_key_env", "options"]
                    ),
                ),
            )
            for model in changed:
                await self.registry.call(
                    self.registry.stub.UpdateModel,
                    pb.UpdateModelRequest(
                        model=model,
                        update_mask=field_mask_pb2.FieldMask(
                            paths=["display_name", "description", "online"]
                        ),
                    ),
                )
            for model in mine.values():
                await self.registry.remove_model(model)
            for model, upstream in added:
                await self.registry.add_model(model, current.name, upstream)
            return answer(await self._server(await self.registry.server(current.number)))

    async def DeleteBishengServer(
        self, request: bisheng_pb2.DeleteBishengServerRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        surface.enter(NAME)
        with surface.rendered(error):
            body = surface.read_json(request.body)
            server = await self.registry.server(integer(body, "server_id"))
            models = served_by(await self.registry.models(), server)
            await self.registry.check_removable(
                [m for m in models if all(d.provider == server.name for d in m.deployments)]
            )
            for model in models:
                if all(d.provider == server.name for d in model.deployments):
                    await self.registry.remove_model(model)
                else:
                    # Served elsewhere too: only this server's deployments go.
                    for deployment in model.deployments:
                        if deployment.provider == server.name:
                            await self.registry.call(
                                self.registry.stub.DeleteDeployment,
                                pb.DeleteDeploymentRequest(id=deployment.id),
                            )
            await self.registry.call(
                self.registry.stub.DeleteProvider, pb.DeleteProviderRequest(name=server.name)
            )
            return answer(None)

    async def SetBishengModelOnline(
        self, request: bisheng_pb2.SetBishengModelOnlineRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        surface.enter(NAME)
        with surface.rendered(error):
            body = surface.read_json(request.body)
            model = await self.registry.model(integer(body, "model_id"))
            online = body.get("online")
            if not isinstance(online, bool):
                raise SwitchboardError(
                    R.ERROR_REASON_INVALID_REQUEST, "online must be true or false", param="online"
                )
            await self.registry.call(
                self.registry.stub.UpdateModel,
                pb.UpdateModelRequest(
                    model=pb.Model(name=model.name, online=online),
                    update_mask=field_mask_pb2.FieldMask(paths=["online"]),
                ),
            )
            servers = await self.registry.providers()
            server = next(
                (s for s in servers if any(d.provider == s.name for d in model.deployments)),
                pb.Provider(),
            )
            fresh = await self._fresh(model.name)
            return answer(server_info(server, [fresh])["models"][0])

    async def GetBishengUseConfig(
        self, request: bisheng_pb2.GetBishengUseConfigRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        surface.enter(NAME)
        with surface.rendered(error):
            return answer(await bisheng_defaults.read_config(self.registry, request.use))

    async def UpdateBishengUseConfig(
        self, request: bisheng_pb2.UpdateBishengUseConfigRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        surface.enter(NAME)
        with surface.rendered(error):
            body = surface.read_json(request.body)
            return answer(await bisheng_defaults.write_config(self.registry, request.use, body))

    async def ListBishengAssistantModels(
        self, request: bisheng_pb2.ListBishengAssistantModelsRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        surface.enter(NAME)
        with surface.rendered(error):
            return answer(await bisheng_defaults.assistant_models(self.registry))

    def _model(self, requested: str) -> str:
        return requested or model_for_use(self.router.catalog, "assistant", "chat")

    async def CreateBishengChat(
        self, request: bisheng_pb2.CreateBishengChatRequest, context: Context
    ) -> openai_pb2.ChatCompletion:
        surface.enter(NAME)
        with surface.rendered(error):
            params = request.params
            params.model = self._model(params.model)
            return await self.router.CreateChatCompletion(
                router_pb2.CreateChatCompletionRequest(params=params), context
            )

    async def StreamBishengChatSse(
        self, request: bisheng_pb2.StreamBishengChatSseRequest, context: Context
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        surface.enter(NAME)
        with surface.rendered(error):
            params = request.params
            params.model = self._model(params.model)
            async for body in self.router.StreamChatCompletionSse(
                router_pb2.StreamChatCompletionSseRequest(params=params), context
            ):
                yield body

    async def CreateBishengAsr(
        self, request: bisheng_pb2.CreateBishengAsrRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        surface.enter(NAME)
        with surface.rendered(error):
            return answer(await self._transcribe(request.form, context))

    async def CreateBishengTts(
        self, request: bisheng_pb2.CreateBishengTtsRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        surface.enter(NAME)
        with surface.rendered(error):
            return answer(await self._speak(surface.read_json(request.body), context))

    async def GetBishengTtsAudio(
        self, request: bisheng_pb2.GetBishengTtsAudioRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        surface.enter(NAME)
        with surface.rendered(error):
            return await self._audio(request)

    async def GetBishengHealth(
        self, request: bisheng_pb2.GetBishengHealthRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        surface.enter(NAME)
        return surface.json_body({"status": "OK"})


def _models(body: dict[str, Any]) -> list[Any]:
    entries = body.get("models") or []
    if not isinstance(entries, list):
        raise SwitchboardError(
            R.ERROR_REASON_INVALID_REQUEST, "models must be a list", param="models"
        )
    return entries
