"""The Bisheng LLM API's view of the registry: servers (providers) and models
by their stable numbers, read and written with the router's admin key (the
access policy has already checked the caller)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from switchboard.registry.v1 import registry_pb2 as pb
from switchboard.registry.v1 import registry_pb2_grpc
from switchboard_common.errors import R, SwitchboardError, from_rpc_error

CALL_TIMEOUT_S = 10.0
T = TypeVar("T")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")


def registry_name(name: str) -> str:
    """The registry name for a Bisheng name (which may be Chinese): itself when
    the registry accepts it, else a stable name derived from it."""
    for candidate in (name, name.replace("/", "-")):
        if _NAME.match(candidate):
            return candidate
    return "bisheng-" + hashlib.sha256(name.encode()).hexdigest()[:12]


class Registry:
    def __init__(
        self, stub: registry_pb2_grpc.RegistryServiceAsyncStub, admin_key: str | None
    ) -> None:
        self.stub = stub
        self.metadata = (("authorization", f"Bearer {admin_key}"),) if admin_key else ()

    async def call(self, method: Callable[..., Awaitable[T]], request: Any) -> T:
        try:
            return await method(request, timeout=CALL_TIMEOUT_S, metadata=self.metadata)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, "registry") from None

    async def providers(self) -> list[pb.Provider]:
        out: list[pb.Provider] = []
        token = ""
        while True:
            page = await self.call(
                self.stub.ListProviders, pb.ListProvidersRequest(page_size=100, page_token=token)
            )
            out.extend(page.providers)
            token = page.next_page_token
            if not token:
                return sorted(out, key=lambda p: p.number)

    async def models(self) -> list[pb.Model]:
        out: list[pb.Model] = []
        token = ""
        while True:
            page = await self.call(
                self.stub.ListModels, pb.ListModelsRequest(page_size=100, page_token=token)
            )
            out.extend(page.models)
            token = page.next_page_token
            if not token:
                return sorted(out, key=lambda m: m.number)

    async def server(self, number: int) -> pb.Provider:
        found = next((p for p in await self.providers() if p.number == number), None)
        if found is None:
            raise SwitchboardError(R.ERROR_REASON_NOT_FOUND, f"no server with id {number}")
        return found

    async def model(self, number: int) -> pb.Model:
        found = next((m for m in await self.models() if m.number == number), None)
        if found is None:
            raise SwitchboardError(R.ERROR_REASON_NOT_FOUND, f"no model with id {number}")
        return found

    async def add_model(self, model: pb.Model, server: str, upstream: str) -> pb.Model:
        """A model and its one deployment, on the server."""
        created = (await self.call(self.stub.CreateModel, pb.CreateModelRequest(model=model))).model
        try:
            await self.call(
                self.stub.CreateDeployment,
                pb.CreateDeploymentRequest(
                    deployment=pb.Deployment(
                        model=created.name, provider=server, upstream_model=upstream
                    )
                ),
            )
        except SwitchboardError:
            await self.call(self.stub.DeleteModel, pb.DeleteModelRequest(name=created.name))
            raise
        return created

    async def remove_model(self, model: pb.Model) -> None:
        """A model and its deployments."""
        for deployment in model.deployments:
            await self.call(
                self.stub.DeleteDeployment, pb.DeleteDeploymentRequest(id=deployment.id)
            )
        await self.call(self.stub.DeleteModel, pb.DeleteModelRequest(name=model.name))

    async def check_removable(self, models: list[pb.Model]) -> None:
        """Before removing any: a default model is not removed (the registry
        would refuse it half way through)."""
        names = {m.name: m.number for m in models}
        used = [
            f"{names[model]} ({pb.ModelUse.Name(use).removeprefix('MODEL_USE_').lower()})"
            for use, model in (await self.defaults()).items()
            if model in names
        ]
        if used:
            raise SwitchboardError(
                R.ERROR_REASON_FAILED_PRECONDITION,
                f"models {', '.join(used)} are default models: set other defaults first",
            )

    async def defaults(self) -> dict[pb.ModelUse.ValueType, str]:
        reply = await self.call(self.stub.ListDefaultModels, pb.ListDefaultModelsRequest())
        return {d.use: d.model for d in reply.defaults}

    async def set_default(self, use: pb.ModelUse.ValueType, model: str) -> None:
        await self.call(self.stub.SetDefaultModel, pb.SetDefaultModelRequest(use=use, model=model))
