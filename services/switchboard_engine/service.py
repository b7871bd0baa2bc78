"""EngineService: the gRPC (and, through the edge, /v1/admin/engines/…) API
over this node's EngineManager.

Every RPC is ACCESS_ADMIN in the proto; the access-policy interceptor
(switchboard_common.policy) enforces it before any handler runs."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from switchboard.engine.v1 import engine_pb2 as pb
from switchboard.engine.v1 import engine_pb2_grpc
from switchboard.registry.v1 import registry_pb2_grpc
from switchboard_common.channels import channel as service_channel
from switchboard_common.errors import R, SwitchboardError
from switchboard_common.logs import log_fields
from switchboard_common.registry_follower import RegistryFollower
from switchboard_common.server import Mounted
from switchboard_common.settings import Settings
from switchboard_engine import logs as engine_logs
from switchboard_engine.feed import EngineFeedServicer
from switchboard_engine.manager import EngineManager
from switchboard_engine.registry_link import RegistryLink
from switchboard_engine.resources import GpuProbe
from switchboard_engine.settings import EngineSettings
from switchboard_gpu.nvml import backend_for

log = logging.getLogger(__name__)
SERVICE = pb.DESCRIPTOR.services_by_name["EngineService"]
Context = grpc.aio.ServicerContext[Any, Any]

DEFAULT_LOG_LINES = 100
MAX_LOG_LINES = 10_000
# How long a starting service waits for the registry to list its engines.
REGISTRY_WAIT_S = 30.0


class EngineServicer(engine_pb2_grpc.EngineServiceServicer):
    def __init__(self, manager: EngineManager) -> None:
        self.manager = manager
        self.draining = asyncio.Event()

    async def _engine(self, name: str) -> pb.Engine:
        if name not in self.manager.slots:  # created through the registry's own API
            await self.manager.refresh(name)
        slot = self.manager.slot(name)
        gpu_memory: list[tuple[str, int]] = []
        if slot.config.gpus and slot.process is not None:
            gpu_memory = (await self.manager.gpus.read()).used_by(slot.process.pid)
        settings = self.manager.settings
        return slot.to_proto(settings.node, settings.advertise_host, gpu_memory)

    async def CreateEngine(
        self, request: pb.CreateEngineRequest, context: Context
    ) -> pb.CreateEngineResponse:
        if not request.HasField("config"):
            raise SwitchboardError(
                R.ERROR_REASON_INVALID_REQUEST, "config is required", param="config"
            )
        model = await self.manager.link.create_engine(request.name, request.config)
        self.manager.upsert(model.name, model.engine)
        return pb.CreateEngineResponse(engine=await self._engine(model.name))

    async def GetEngine(
        self, request: pb.GetEngineRequest, context: Context
    ) -> pb.GetEngineResponse:
        return pb.GetEngineResponse(engine=await self._engine(request.name))

    async def ListEngines(
        self, request: pb.ListEnginesRequest, context: Context
    ) -> pb.ListEnginesResponse:
        await self.manager.refresh()
        names = sorted(self.manager.slots)
        return pb.ListEnginesResponse(
            engines=[await self._engine(n) for n in names if n in self.manager.slots],
            active_models=self.manager.active_count(),
            max_concurrent_models=self.manager.settings.max_concurrent_models,
        )

    async def DeleteEngine(
        self, request: pb.DeleteEngineRequest, context: Context
    ) -> pb.DeleteEngineResponse:
        slot = self.manager.slot(request.name)
        await self.manager.remove(slot.name)
        model = await self.manager.link.get_model(slot.name)
        if model is not None:
            if request.delete_model:
                await self.manager.link.delete_model(model.name)
            elif model.HasField("engine"):
                await self.manager.link.set_engine(model.name, None, model.etag)
        return pb.DeleteEngineResponse()

    async def StartEngine(
        self, request: pb.StartEngineRequest, context: Context
    ) -> pb.StartEngineResponse:
        task = await self.manager.submit(request.name, pb.TASK_KIND_START)
        return pb.StartEngineResponse(task=task)

    async def StopEngine(
        self, request: pb.StopEngineRequest, context: Context
    ) -> pb.StopEngineResponse:
        if request.timeout_s < 0 or request.timeout_s > 3600:
            raise SwitchboardError(
                R.ERROR_REASON_INVALID_REQUEST,
                "timeout_s must be between 0 and 3600",
                param="timeout_s",
            )
        task = await self.manager.submit(
            request.name, pb.TASK_KIND_STOP, force=request.force, timeout_s=request.timeout_s
        )
        return pb.StopEngineResponse(task=task)

    async def RestartEngine(
        self, request: pb.RestartEngineRequest, context: Context
    ) -> pb.RestartEngineResponse:
        task = await self.manager.submit(request.name, pb.TASK_KIND_RESTART)
        return pb.RestartEngineResponse(task=task)

    async def GetTask(self, request: pb.GetTaskRequest, context: Context) -> pb.GetTaskResponse:
        return pb.GetTaskResponse(task=self.manager.tasks.get(request.id))

    async def GetEngineLogs(
        self, request: pb.GetEngineLogsRequest, context: Context
    ) -> AsyncIterator[pb.GetEngineLogsResponse]:
        slot = self.manager.slot(request.name)
        count = min(request.lines or DEFAULT_LOG_LINES, MAX_LOG_LINES)
        parser = engine_logs.Parser(slot.started_at)
        # Subscribed before the tail is read, so no line falls between the two.
        follower = engine_logs.follow(slot.log_path) if request.follow else None
        try:
            if follower is not None:
                first = asyncio.ensure_future(anext(follower))
            lines = await asyncio.to_thread(engine_logs.tail, slot.log_path, count)
            seen_at = _mtime(slot.log_path)
            for line in lines:
                yield pb.GetEngineLogsResponse(line=parser.parse(line, seen_at).to_proto())
            if follower is None:
                return
            pending = first
            while not self.draining.is_set():
                drained = asyncio.ensure_future(self.draining.wait())
                await asyncio.wait({pending, drained}, return_when=asyncio.FIRST_COMPLETED)
                drained.cancel()
                if not pending.done():
                    pending.cancel()
                    return
                line = pending.result()
                yield pb.GetEngineLogsResponse(
                    line=parser.parse(line, dt.datetime.now(dt.UTC)).to_proto()
                )
                pending = asyncio.ensure_future(anext(follower))
        finally:
            if follower is not None:
                await follower.aclose()


def _mtime(path: Any) -> dt.datetime:
    try:
        return dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC)
    except OSError:
        return dt.datetime.now(dt.UTC)


# Worth waiting out: the registry is starting, restarting or slow.
_TRANSIENT = frozenset({R.ERROR_REASON_SERVICE_UNAVAILABLE, R.ERROR_REASON_UPSTREAM_TIMEOUT})


async def _load_engines(manager: EngineManager, wait_s: float) -> bool | None:
    """The registry's engines for this node: True once loaded, False if the
    registry did not answer within wait_s, None if it refused (no admin key)."""
    deadline = asyncio.get_running_loop().time() + wait_s
    while True:
        try:
            models = await manager.link.engine_models()
        except SwitchboardError as err:
            if err.reason not in _TRANSIENT:
                log.warning(
                    "the registry refused to list engines; set SWITCHBOARD_ADMIN_KEY, which "
                    "the engine service needs to read and register engines",
                    extra=log_fields(error=err.message),
                )
                return None
            if asyncio.get_running_loop().time() >= deadline:
                log.error(
                    "registry unreachable; engines not loaded", extra=log_fields(error=err.message)
                )
                return False
            await asyncio.sleep(0.5)
            continue
        for model in models:
            manager.upsert(model.name, model.engine)
        return True


async def setup(
    server: grpc.aio.Server,
    settings: Settings,
    *,
    engine_settings: EngineSettings | None = None,
    registry_wait_s: float = REGISTRY_WAIT_S,
) -> Mounted:
    config = engine_settings or EngineSettings.from_env(settings)
    registry = service_channel(settings.address("registry"), settings.tls)
    gpus = GpuProbe(backend_for(config.gpu_script))
    manager = EngineManager(config, RegistryLink(registry, settings.admin_key, config.node), gpus)
    loaded = await _load_engines(manager, registry_wait_s)
    if loaded:
        await manager.recover_node()
    elif loaded is False:
        # Without the registry nothing is known to be deleted, so nothing is
        # killed: engines are adopted (or cleaned up) once it answers.
        async def later() -> None:
            if await _load_engines(manager, float("inf")):
                await manager.recover_node()

        manager.spawn(later())
    # Seed 004's config (max_concurrent_models, default_model_timeout,
    # log_level) arrives with the snapshot; until then the environment's hold.
    follower = RegistryFollower(
        registry_pb2_grpc.RegistrySnapshotServiceStub(registry),
        lambda snapshot: manager.follow(snapshot.service_settings),
    )
    follower.start()
    servicer = EngineServicer(manager)
    engine_pb2_grpc.add_EngineServiceServicer_to_server(servicer, server)
    engine_pb2_grpc.add_EngineFeedServiceServicer_to_server(
        EngineFeedServicer(
            lambda: list(manager.slots.values()), manager.changes, servicer.draining
        ),
        server,
    )

    async def close() -> None:
        await follower.close()
        await manager.shutdown()
        gpus.close()
        await registry.close()

    feed = pb.DESCRIPTOR.services_by_name["EngineFeedService"].full_name
    return Mounted([SERVICE.full_name, feed], [close], drainers=[servicer.draining.set])
