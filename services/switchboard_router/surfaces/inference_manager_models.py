"""Seed API 004's model management (/api/models): list, create, get, update,
delete, start, stop, restart and logs, each a call or two to the engine
service (the model's engine on its node) and the registry (the model's
display fields), made with the admin key this router holds. The RPCs are
ACCESS_ADMIN: the policy interceptor has let only the admin in."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.api import httpbody_pb2
from google.protobuf import field_mask_pb2, json_format, struct_pb2

from switchboard.engine.v1 import engine_pb2 as epb
from switchboard.engine.v1 import engine_pb2_grpc
from switchboard.registry.v1 import engine_config_pb2 as cfg
from switchboard.registry.v1 import registry_pb2, registry_pb2_grpc
from switchboard.router.v1 import inference_manager_pb2 as pb
from switchboard.usage.v1 import usage_pb2, usage_pb2_grpc
from switchboard_common.errors import R, SwitchboardError, from_rpc_error
from switchboard_router.surfaces import inference_manager_bodies as bodies
from switchboard_router.surfaces import surface
from switchboard_router.surfaces.inference_manager_shapes import (
    ValidationFailed,
    answer,
    error,
    event,
    page_of,
    timestamp,
)

Context = grpc.aio.ServicerContext[Any, Any]
NAME = "inference_manager"
CALL_TIMEOUT_S = 30.0
T = TypeVar("T")
_ACTIVE = (epb.ENGINE_STATE_STARTING, epb.ENGINE_STATE_RUNNING, epb.ENGINE_STATE_STOPPING)
_LEVELS = {
    epb.LOG_LEVEL_DEBUG: "DEBUG",
    epb.LOG_LEVEL_INFO: "INFO",
    epb.LOG_LEVEL_WARNING: "WARNING",
    epb.LOG_LEVEL_ERROR: "ERROR",
}
MAX_LOG_LINES = 10_000


def body_of(struct: struct_pb2.Struct) -> dict[str, Any]:
    return json_format.MessageToDict(struct) if struct.fields else {}


def rendered_as(model_id: str = "") -> Any:
    surface.enter(NAME)
    return surface.rendered(lambda err: error(err, model_id=model_id))


class Models:
    """InferenceManagerService's model RPCs (mixed into its servicer)."""

    engines: engine_pb2_grpc.EngineServiceAsyncStub
    registry: registry_pb2_grpc.RegistryServiceAsyncStub
    usage: usage_pb2_grpc.UsageServiceAsyncStub
    admin_metadata: tuple[tuple[str, str], ...]

    async def _call(self, service: str, call: Callable[..., Awaitable[T]], request: Any) -> T:
        try:
            return await call(request, timeout=CALL_TIMEOUT_S, metadata=self.admin_metadata)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, service) from None

    async def _engine(self, name: str) -> epb.Engine:
        try:
            reply = await self._call(
                "engine", self.engines.GetEngine, epb.GetEngineRequest(name=name)
            )
        except SwitchboardError as err:
            if err.reason == R.ERROR_REASON_NOT_FOUND:
                raise SwitchboardError(
                    R.ERROR_REASON_MODEL_NOT_FOUND, f"model {name[:128]!r} does not exist"
                ) from None
            raise
        return reply.engine

    async def _model(self, name: str) -> registry_pb2.Model | None:
        try:
            reply = await self._call(
                "registry", self.registry.GetModel, registry_pb2.GetModelRequest(name=name)
            )
        except SwitchboardError as err:
            if err.reason in (R.ERROR_REASON_NOT_FOUND, R.ERROR_REASON_MODEL_NOT_FOUND):
                return None
            raise
        return reply.model

    async def _performance(self, name: str) -> usage_pb2.ModelPerformance | None:
        reply = await self._call(
            "usage",
            self.usage.GetUsagePerformance,
            usage_pb2.GetUsagePerformanceRequest(window="1h", model=name),
        )
        return reply.by_model.get(name)

    async def ListManagedModels(
        self, request: pb.ListManagedModelsRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        with rendered_as():
            if request.status and request.status not in bodies.STATUSES.values():
                raise ValidationFailed("status", "status must be running, stopped or error")
            if request.framework and request.framework not in bodies.FRAMEWORKS:
                raise ValidationFailed("framework", "framework must be llama.cpp or vllm")
            reply = await self._call("engine", self.engines.ListEngines, epb.ListEnginesRequest())
            engines = [
                e
                for e in reply.engines
                if (not request.status or bodies.STATUSES.get(e.state) == request.status)
                and (
                    not request.framework
                    or bodies.FRAMEWORK_NAMES.get(e.config.framework) == request.framework
                )
            ]
            models = await asyncio.gather(*(self._model(e.name) for e in engines))
            items = [bodies.rendered(e, m) for e, m in zip(engines, models, strict=True)]
            return answer(page_of(items, request.page, request.size))

    async def CreateManagedModel(
        self, request: pb.CreateManagedModelRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        body = body_of(request.body)
        with rendered_as(str(body.get("name", ""))[:128]):
            bodies.checked_create(body)
            name = bodies.name_of(body)
            config, defaults = bodies.engine_config(body)
            if await self._model(name) is not None:
                raise SwitchboardError(
                    R.ERROR_REASON_ALREADY_EXISTS, f"model {name!r} already exists", param="name"
                )
            await self._call(
                "engine",
                self.engines.CreateEngine,
                epb.CreateEngineRequest(name=name, config=config),
            )
            await self._patch(name, body, defaults)
            await context.send_initial_metadata((("x-switchboard-http-status", "201"),))
            return answer(
                {"id": name, "name": name, "status": "created", "message": "模型创建成功"}
            )

    async def _patch(
        self, name: str, body: dict[str, Any], defaults: registry_pb2.DefaultParameters
    ) -> None:
        patch = registry_pb2.Model(name=name)
        paths = bodies.model_fields(body, patch)
        if defaults.ListFields():
            patch.default_parameters.CopyFrom(defaults)
            paths += [f"default_parameters.{f.name}" for f, _ in defaults.ListFields()]
        if paths:
            await self._call(
                "registry",
                self.registry.UpdateModel,
                registry_pb2.UpdateModelRequest(
                    model=patch, update_mask=field_mask_pb2.FieldMask(paths=paths)
                ),
            )

    async def GetManagedModel(
        self, request: pb.GetManagedModelRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        with rendered_as(request.model_id):
            engine = await self._engine(request.model_id)
            model, performance = await asyncio.gather(
                self._model(engine.name), self._performance(engine.name)
            )
            return answer(bodies.rendered(engine, model, performance, detail=True))

    async def UpdateManagedModel(
        self, request: pb.UpdateManagedModelRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        with rendered_as(request.model_id):
            body = body_of(request.body)
            bodies.checked_update(body)
            engine = await self._engine(request.model_id)
            config, defaults = bodies.engine_config(body, engine.config)
            if config != engine.config:
                # The engine service takes it from the registry at the next start.
                patch = registry_pb2.Model(name=engine.name, engine=config)
                await self._call(
                    "registry",
                    self.registry.UpdateModel,
                    registry_pb2.UpdateModelRequest(
                        model=patch, update_mask=field_mask_pb2.FieldMask(paths=["engine"])
                    ),
                )
            await self._patch(engine.name, body, defaults)
            engine = await self._engine(engine.name)
            model, performance = await asyncio.gather(
                self._model(engine.name), self._performance(engine.name)
            )
            return answer(bodies.rendered(engine, model, performance, detail=True))

    async def DeleteManagedModel(
        self, request: pb.DeleteManagedModelRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        with rendered_as(request.model_id):
            engine = await self._engine(request.model_id)
            if engine.state in _ACTIVE:
                # Refused rather than stopped behind the caller's back: traffic
                # may still be on it. POST .../stop first.
                raise SwitchboardError(
                    R.ERROR_REASON_CONFLICT,
                    f"model {engine.name!r} is {bodies.STATUSES[engine.state]}: stop it first",
                )
            await self._call(
                "engine",
                self.engines.DeleteEngine,
                epb.DeleteEngineRequest(name=engine.name, delete_model=True),
            )
            return answer({"message": "模型删除成功"})

    async def StartManagedModel(
        self, request: pb.StartManagedModelRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        with rendered_as(request.model_id):
            force, timeout = _action(body_of(request.body), most=3600)
            engine = await self._engine(request.model_id)
            if timeout and timeout != engine.config.start_timeout_s:
                config = cfg.EngineConfig()
                config.CopyFrom(engine.config)
                config.start_timeout_s = timeout
                await self._call(
                    "registry",
                    self.registry.UpdateModel,
                    registry_pb2.UpdateModelRequest(
                        model=registry_pb2.Model(name=engine.name, engine=config),
                        update_mask=field_mask_pb2.FieldMask(paths=["engine"]),
                    ),
                )
            if force and engine.state in _ACTIVE:
                # force: start afresh even if it runs.
                task = (
                    await self._call(
                        "engine",
                        self.engines.RestartEngine,
                        epb.RestartEngineRequest(name=engine.name),
                    )
                ).task
            else:
                task = (
                    await self._call(
                        "engine", self.engines.StartEngine, epb.StartEngineRequest(name=engine.name)
                    )
                ).task
            return answer({"message": "模型启动中", "task_id": task.id})

    async def StopManagedModel(
        self, request: pb.StopManagedModelRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        with rendered_as(request.model_id):
            force, timeout = _action(body_of(request.body), most=3600)
            engine = await self._engine(request.model_id)
            reply = await self._call(
                "engine",
                self.engines.StopEngine,
                epb.StopEngineRequest(name=engine.name, force=force, timeout_s=timeout),
            )
            return answer({"message": "模型停止中", "task_id": reply.task.id})

    async def RestartManagedModel(
        self, request: pb.RestartManagedModelRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        with rendered_as(request.model_id):
            _action(body_of(request.body), most=3600)
            engine = await self._engine(request.model_id)
            reply = await self._call(
                "engine", self.engines.RestartEngine, epb.RestartEngineRequest(name=engine.name)
            )
            return answer({"message": "模型重启中", "task_id": reply.task.id})

    async def GetManagedModelLogs(
        self, request: pb.GetManagedModelLogsRequest, context: Context
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        with rendered_as(request.model_id):
            if request.lines < 0 or request.lines > MAX_LOG_LINES:
                raise ValidationFailed("lines", f"lines must be between 1 and {MAX_LOG_LINES}")
            engine = await self._engine(request.model_id)
            stream = self.engines.GetEngineLogs(
                epb.GetEngineLogsRequest(
                    name=engine.name, lines=request.lines or 100, follow=request.follow
                ),
                metadata=self.admin_metadata,
            )
            try:
                if not request.follow:
                    lines = [_line(r.line) async for r in stream]
                    yield answer({"logs": lines})
                    return
                # Following: one server-sent event per line until the client goes away.
                async for reply in stream:
                    yield event(_line(reply.line))
            except grpc.aio.AioRpcError as exc:
                raise from_rpc_error(exc, "engine") from None
            finally:
                stream.cancel()


def _line(line: epb.LogLine) -> dict[str, str]:
    return {
        "timestamp": timestamp(line.time.ToDatetime()),
        "level": _LEVELS.get(line.level, "INFO"),
        "message": line.message,
    }


def _action(body: dict[str, Any], *, most: float) -> tuple[bool, float]:
    """The optional {force, timeout} of start, stop and restart."""
    for key in body:
        if key not in ("force", "timeout"):
            raise ValidationFailed(key, f"unknown field {key}")
    force = body.get("force", False)
    if not isinstance(force, bool):
        raise ValidationFailed("force", "force must be true or false")
    timeout = body.get("timeout", 0)
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not 0 <= timeout <= most
    ):
        raise ValidationFailed("timeout", f"timeout must be a number of seconds, 0 to {most:g}")
    return force, float(timeout)
