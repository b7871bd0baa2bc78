"""GpuService: the node's NVML status now and as a stream. History and alerts
need the usage pipeline and the alert rules, which come later; until then they
answer NOT_IMPLEMENTED rather than an empty list that would look like "all quiet"."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from switchboard.gpu.v1 import gpu_pb2, gpu_pb2_grpc
from switchboard_common.errors import R, SwitchboardError
from switchboard_common.server import Mounted
from switchboard_common.settings import Settings
from switchboard_gpu.nvml import NvmlBackend, PynvmlBackend
from switchboard_gpu.sampler import Sampler, SamplerConfig

Context = grpc.aio.ServicerContext[Any, Any]


class GpuServicer(gpu_pb2_grpc.GpuServiceServicer):
    def __init__(self, sampler: Sampler) -> None:
        self._sampler = sampler
        # Set when the server drains, so open watches end instead of holding
        # the server for its whole grace period.
        self.draining = asyncio.Event()

    async def GetGpuStatus(
        self, request: gpu_pb2.GetGpuStatusRequest, context: Context
    ) -> gpu_pb2.GetGpuStatusResponse:
        return gpu_pb2.GetGpuStatusResponse(status=self._sampler.latest)

    async def WatchGpuMetrics(
        self, request: gpu_pb2.WatchGpuMetricsRequest, context: Context
    ) -> AsyncIterator[gpu_pb2.WatchGpuMetricsResponse]:
        # Samples come about every interval_s, with jitter; allowing half a
        # service interval of slack keeps a watcher that asks for the service's
        # own rate from skipping every other sample.
        min_gap_s = request.interval_ms / 1000 - self._sampler.config.interval_s / 2
        with self._sampler.watch() as updates:
            sent_at = time.monotonic()
            yield gpu_pb2.WatchGpuMetricsResponse(metrics_update=self._sampler.latest)
            drained = asyncio.ensure_future(self.draining.wait())
            try:
                while True:
                    update = asyncio.ensure_future(updates.get())
                    await asyncio.wait({update, drained}, return_when=asyncio.FIRST_COMPLETED)
                    if not update.done():
                        update.cancel()
                        return
                    status = update.result()
                    if time.monotonic() - sent_at < min_gap_s:
                        continue
                    sent_at = time.monotonic()
                    yield gpu_pb2.WatchGpuMetricsResponse(metrics_update=status)
            finally:
                drained.cancel()

    async def QueryGpuHistory(
        self, request: gpu_pb2.QueryGpuHistoryRequest, context: Context
    ) -> gpu_pb2.QueryGpuHistoryResponse:
        raise SwitchboardError(
            R.ERROR_REASON_NOT_IMPLEMENTED,
            "GPU history arrives with the usage pipeline (ClickHouse); not available yet",
        )

    async def ListGpuAlerts(
        self, request: gpu_pb2.ListGpuAlertsRequest, context: Context
    ) -> gpu_pb2.ListGpuAlertsResponse:
        raise SwitchboardError(
            R.ERROR_REASON_NOT_IMPLEMENTED,
            "GPU alerts arrive with the alert rules; not available yet",
        )


async def setup(
    server: grpc.aio.Server,
    settings: Settings,
    *,
    backend: NvmlBackend | None = None,
    config: SamplerConfig | None = None,
) -> Mounted:
    """Mount GpuService over the real NVML; tests pass `backend` (e.g. ScriptedNvml)
    and `config` through functools.partial."""
    sampler = Sampler(backend or PynvmlBackend(), config or SamplerConfig.from_env())
    await sampler.start()
    servicer = GpuServicer(sampler)
    gpu_pb2_grpc.add_GpuServiceServicer_to_server(servicer, server)
    name = gpu_pb2.DESCRIPTOR.services_by_name["GpuService"].full_name
    return Mounted([name], [sampler.stop], drainers=[servicer.draining.set])
