"""The engine service's side of the registry: engine configs live on their
models (Model.engine), and a running engine is one deployment of its model,
through a provider of its own (kind openai, base URL the engine's port).

These are the registry's admin RPCs, called with the admin key."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from switchboard.registry.v1 import engine_config_pb2 as cfg
from switchboard.registry.v1 import registry_pb2 as pb
from switchboard.registry.v1 import registry_pb2_grpc
from switchboard_common.errors import R, SwitchboardError, from_rpc_error

T = TypeVar("T")
TIMEOUT_S = 10.0
# Generation on a CPU engine can be slow; the router's attempt timeout is this.
PROVIDER_TIMEOUT_S = 600.0


def _bounded(name: str) -> str:
    """A registry name (at most 128 characters) that stays unique when cut."""
    if len(name) <= 120:
        return name
    return f"{name[:110]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


class RegistryLink:
    def __init__(self, channel: grpc.aio.Channel, admin_key: str | None, node: str) -> None:
        self._stub = registry_pb2_grpc.RegistryServiceStub(channel)
        self._metadata = (("authorization", f"Bearer {admin_key}"),) if admin_key else ()
        self.node = node

    def provider_name(self, model: str) -> str:
        return _bounded(f"engine.{self.node}.{model}")

    def deployment_id(self, model: str) -> str:
        return _bounded(f"engine:{self.node}:{model}")

    async def _call(self, call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await call()
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, "registry") from None

    async def engine_models(self) -> list[pb.Model]:
        """Models whose engine this node runs: its own name, or none given."""
        found: list[pb.Model] = []
        token = ""
        while True:
            reply = await self._call(
                lambda token=token: self._stub.ListModels(  # type: ignore[misc]
                    pb.ListModelsRequest(page_size=500, page_token=token),
                    metadata=self._metadata,
                    timeout=TIMEOUT_S,
                )
            )
            found += [m for m in reply.models if self.runs_here(m)]
            token = reply.next_page_token
            if not token:
                return found

    def runs_here(self, model: pb.Model) -> bool:
        return model.HasField("engine") and model.engine.node in ("", self.node)

    async def get_model(self, name: str) -> pb.Model | None:
        try:
            reply = await self._call(
                lambda: self._stub.GetModel(
                    pb.GetModelRequest(name=name), metadata=self._metadata, timeout=TIMEOUT_S
                )
            )
        except SwitchboardError as err:
            if err.reason == R.ERROR_REASON_NOT_FOUND:
                return None
            raise
        return reply.model

    async def create_engine(self, name: str, config: cfg.EngineConfig) -> pb.Model:
        """The model with its engine: created, or given the engine if it has none."""
        current = await self.get_model(name)
        if current is None:
            created = await self._call(
                lambda: self._stub.CreateModel(
                    pb.CreateModelRequest(model=pb.Model(name=name, engine=config)),
                    metadata=self._metadata,
                    timeout=TIMEOUT_S,
                )
            )
            return created.model
        if current.HasField("engine"):
            raise SwitchboardError(
                R.ERROR_REASON_ALREADY_EXISTS,
                f"model {name!r} already has an engine; delete it first",
                param="name",
            )
        return await self.set_engine(current.name, config, current.etag)

    async def set_engine(self, name: str, config: cfg.EngineConfig | None, etag: str) -> pb.Model:
        patch = pb.Model(name=name, etag=etag)
        if config is not None:
            patch.engine.CopyFrom(config)
        request = pb.UpdateModelRequest(model=patch)
        request.update_mask.paths.append("engine")
        reply = await self._call(
            lambda: self._stub.UpdateModel(request, metadata=self._metadata, timeout=TIMEOUT_S)
        )
        return reply.model

    async def delete_model(self, name: str) -> None:
        await self._call(
            lambda: self._stub.DeleteModel(
                pb.DeleteModelRequest(name=name), metadata=self._metadata, timeout=TIMEOUT_S
            )
        )

    async def register(self, model: str, base_url: str, gpu_uuid: str) -> str:
        """Route `model` to the engine at base_url: its provider and deployment,
        created or pointed at the new port. Returns the deployment id."""
        provider = pb.Provider(
            name=self.provider_name(model),
            kind=pb.PROVIDER_KIND_OPENAI,
            base_url=base_url,
            timeout_s=PROVIDER_TIMEOUT_S,
        )
        try:
            await self._call(
                lambda: self._stub.CreateProvider(
                    pb.CreateProviderRequest(provider=provider),
                    metadata=self._metadata,
                    timeout=TIMEOUT_S,
                )
            )
        except SwitchboardError as err:
            if err.reason != R.ERROR_REASON_ALREADY_EXISTS:
                raise
            update = pb.UpdateProviderRequest(provider=provider)
            update.update_mask.paths.extend(["base_url", "kind", "timeout_s"])
            await self._call(
                lambda: self._stub.UpdateProvider(
                    update, metadata=self._metadata, timeout=TIMEOUT_S
                )
            )
        deployment = pb.Deployment(
            id=self.deployment_id(model),
            model=model,
            provider=provider.name,
            upstream_model=model,
            enabled=True,
            gpu_node=self.node if gpu_uuid else "",
            gpu_uuid=gpu_uuid,
        )
        try:
            await self._call(
                lambda: self._stub.CreateDeployment(
                    pb.CreateDeploymentRequest(deployment=deployment),
                    metadata=self._metadata,
                    timeout=TIMEOUT_S,
                )
            )
        except SwitchboardError as err:
            if err.reason != R.ERROR_REASON_ALREADY_EXISTS:
                raise
        return deployment.id

    async def withdraw(self, model: str) -> None:
        """No deployment routes to this node's engine for `model` any more."""
        for call in (
            lambda: self._stub.DeleteDeployment(
                pb.DeleteDeploymentRequest(id=self.deployment_id(model)),
                metadata=self._metadata,
                timeout=TIMEOUT_S,
            ),
            lambda: self._stub.DeleteProvider(
                pb.DeleteProviderRequest(name=self.provider_name(model)),
                metadata=self._metadata,
                timeout=TIMEOUT_S,
            ),
        ):
            try:
                await self._call(call)
            except SwitchboardError as err:
                if err.reason != R.ERROR_REASON_NOT_FOUND:
                    raise
