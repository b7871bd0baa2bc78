"""Seed API 004's system routes: GET /api/system/status (version, uptime,
model counts by state from the engine service, and the node's CPU, memory,
disk and GPUs from the gpu service, which samples them) and GET
/api/system/gpu (each GPU with its node, driver, memory, power and processes).

The router reaches one gpu service (SWITCHBOARD_GPU_ADDR): on several nodes
that is the one it is pointed at; "nodes" lists what it reports."""

from __future__ import annotations

import asyncio
import importlib.metadata
import time
from collections import Counter
from typing import Any

import grpc
from google.api import httpbody_pb2

from switchboard.engine.v1 import engine_pb2 as epb
from switchboard.gpu.v1 import gpu_pb2, gpu_pb2_grpc
from switchboard.router.v1 import inference_manager_pb2 as pb
from switchboard_common.errors import SwitchboardError
from switchboard_router.surfaces import inference_manager_bodies as bodies
from switchboard_router.surfaces.inference_manager_models import Models, rendered_as
from switchboard_router.surfaces.inference_manager_shapes import answer, timestamp

Context = grpc.aio.ServicerContext[Any, Any]
STARTED = time.monotonic()


def _version() -> str:
    try:
        return importlib.metadata.version("switchboard")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _gpu(device: gpu_pb2.GpuDevice, node: gpu_pb2.NodeStatus, *, detail: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": device.index,
        "node": node.hostname,
        "uuid": device.uuid,
        "name": device.name,
        "utilization": device.utilization_gpu_percent,
        "memory_used": device.memory_used_mib,
        "memory_total": device.memory_total_mib,
        "temperature": device.temperature_c,
    }
    if detail:
        out.update(
            {
                "driver_version": node.driver_version,
                "cuda_version": node.cuda_version,
                "memory_free": max(0, device.memory_total_mib - device.memory_used_mib),
                "power_usage": device.power_w,
                "power_limit": device.power_limit_w,
                "processes": [
                    {"pid": p.pid, "name": p.name, "memory_usage": p.used_memory_mib}
                    for p in device.processes
                ],
            }
        )
    return out


def _node(node: gpu_pb2.NodeStatus) -> dict[str, Any]:
    host = node.host
    return {
        "hostname": node.hostname,
        "cpu_percent": round(host.cpu_percent, 1),
        "cpu_count": host.cpu_count,
        "memory_percent": round(host.memory_percent, 1),
        "memory_used": host.memory_used_mib,
        "memory_total": host.memory_total_mib,
        "disk_percent": round(host.disk_percent, 1),
        "load_average": round(host.load_average_1m, 2),
        "gpu_state": {
            gpu_pb2.NVML_STATE_AVAILABLE: "available",
            gpu_pb2.NVML_STATE_NO_DEVICES: "no_devices",
        }.get(node.nvml_state, "unavailable"),
        "sampled_at": timestamp(node.sample_time.ToDatetime()),
    }


class System(Models):
    """InferenceManagerService's system RPCs, over the model RPCs' service calls."""

    gpus: gpu_pb2_grpc.GpuServiceAsyncStub

    async def _node_status(self) -> gpu_pb2.NodeStatus | None:
        try:
            reply = await self._call("gpu", self.gpus.GetGpuStatus, gpu_pb2.GetGpuStatusRequest())
        except SwitchboardError:
            return None
        status: gpu_pb2.NodeStatus = reply.status
        return status

    async def GetSystemStatus(
        self, request: pb.GetSystemStatusRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        with rendered_as():
            node, engines = await asyncio.gather(
                self._node_status(),
                self._call("engine", self.engines.ListEngines, epb.ListEnginesRequest()),
            )
            states = Counter(bodies.STATUSES.get(e.state, "unknown") for e in engines.engines)
            models = {"total": len(engines.engines)} | {
                s: states[s] for s in ("running", "stopped", "error", "created", "starting")
            }
            host = node.host if node is not None else gpu_pb2.HostMetrics()
            degraded = node is None or states["error"] > 0
            return answer(
                {
                    "status": "degraded" if degraded else "healthy",
                    "version": _version(),
                    "uptime": int(time.monotonic() - STARTED),
                    "models": models,
                    "resources": {
                        "cpu_percent": round(host.cpu_percent, 1),
                        "memory_percent": round(host.memory_percent, 1),
                        "disk_percent": round(host.disk_percent, 1),
                    },
                    "nodes": [_node(node)] if node is not None else [],
                    "gpu": [_gpu(d, node, detail=False) for d in node.devices] if node else [],
                }
            )

    async def GetSystemGpu(
        self, request: pb.GetSystemGpuRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        with rendered_as():
            reply = await self._call("gpu", self.gpus.GetGpuStatus, gpu_pb2.GetGpuStatusRequest())
            node = reply.status
            return answer({"gpus": [_gpu(d, node, detail=True) for d in node.devices]})
