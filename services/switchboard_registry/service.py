"""RegistryService, read-only over the config file. Writes (and storage in a
database) are not built yet and answer NOT_IMPLEMENTED."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc

from switchboard.registry.v1 import registry_pb2 as pb
from switchboard.registry.v1 import registry_pb2_grpc
from switchboard_common.config import load_config
from switchboard_common.errors import R, SwitchboardError
from switchboard_common.server import Mounted
from switchboard_common.settings import Settings
from switchboard_common.unimplemented import fill_unimplemented
from switchboard_registry.snapshot import from_config

SERVICE = pb.DESCRIPTOR.services_by_name["RegistryService"]
Context = grpc.aio.ServicerContext[Any, Any]


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    def __init__(self, snapshot: pb.Snapshot) -> None:
        self.snapshot = snapshot
        self.draining = asyncio.Event()

    async def GetSnapshot(
        self, request: pb.GetSnapshotRequest, context: Context
    ) -> pb.GetSnapshotResponse:
        return pb.GetSnapshotResponse(snapshot=self.snapshot)

    async def WatchSnapshot(
        self, request: pb.WatchSnapshotRequest, context: Context
    ) -> AsyncIterator[pb.WatchSnapshotResponse]:
        if request.known_version != self.snapshot.version:
            yield pb.WatchSnapshotResponse(version=self.snapshot.version, snapshot=self.snapshot)
        # Nothing changes the config at run time yet: hold the stream open so
        # watchers need not reconnect, until they leave or the server drains.
        await self.draining.wait()

    async def ListModels(
        self, request: pb.ListModelsRequest, context: Context
    ) -> pb.ListModelsResponse:
        models = [
            m
            for m in self.snapshot.models
            if (request.status != pb.ONLINE_FILTER_ONLINE or m.online)
            and (request.status != pb.ONLINE_FILTER_OFFLINE or not m.online)
            and (not request.kind or m.kind == request.kind)
            and (not request.tag or request.tag in m.tags)
            and (not request.provider or any(d.provider == request.provider for d in m.deployments))
        ]
        return pb.ListModelsResponse(models=models, total_size=len(models))

    async def GetModel(self, request: pb.GetModelRequest, context: Context) -> pb.GetModelResponse:
        for m in self.snapshot.models:
            if request.name == m.name or request.name in m.aliases:
                return pb.GetModelResponse(model=m)
        raise SwitchboardError(
            R.ERROR_REASON_NOT_FOUND, f"no model named {request.name!r}", param="name"
        )

    async def ListProviders(
        self, request: pb.ListProvidersRequest, context: Context
    ) -> pb.ListProvidersResponse:
        providers = [
            p for p in self.snapshot.providers if not request.kind or p.kind == request.kind
        ]
        return pb.ListProvidersResponse(providers=providers, total_size=len(providers))

    async def GetProvider(
        self, request: pb.GetProviderRequest, context: Context
    ) -> pb.GetProviderResponse:
        for p in self.snapshot.providers:
            if p.name == request.name:
                return pb.GetProviderResponse(provider=p)
        raise SwitchboardError(
            R.ERROR_REASON_NOT_FOUND, f"no provider named {request.name!r}", param="name"
        )


fill_unimplemented(
    RegistryServicer,
    SERVICE,
    "the registry is read-only over the config file until its database lands",
)


async def setup(server: grpc.aio.Server, settings: Settings) -> Mounted:
    # fill_unimplemented supplied the abstract methods, which mypy cannot see.
    snapshot = from_config(load_config(settings.config_path))
    servicer = RegistryServicer(snapshot)  # type: ignore[abstract]
    registry_pb2_grpc.add_RegistryServiceServicer_to_server(servicer, server)
    return Mounted([SERVICE.full_name], drainers=[servicer.draining.set])
