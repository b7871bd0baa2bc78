"""GPU health per (node, GPU uuid), for GPU-aware routing.

Three pieces, usable apart:

- `classify_device(device, alerts)`: one GpuDevice's readings plus the alerts
  firing on it → a `Verdict` (condition and reason). The gpu service sets
  `GpuDevice.health` and `health_reason` with it, so what its stream says and
  what a router concludes agree.
- `GpuHealthBoard`: the latest status of every node it is fed (from
  WatchGpuMetrics responses, or GpuSampleEvents read from Kafka), with the
  alerts firing, answering `verdict(hostname, gpu_uuid)`.
- `follow_gpu_health(address, board)`: keeps a board current from one gpu
  service's internal feed (GpuFeedService.WatchGpuFeed), reconnecting with backoff. Run one per gpu
  service (one per GPU node).

Conditions, worst first:
- UNHEALTHY: NVML unavailable on the node, the GPU missing from its node,
  NVML errors reading the device, uncorrected ECC errors, an XID that NVIDIA
  lists as a hardware or driver fault, or a CRITICAL alert firing. Exclude it.
- SATURATED: a WARNING alert firing, or GPU utilisation at or above the
  threshold. Prefer other deployments.
- HEALTHY: none of the above. INFO alerts do not affect routing.
- UNKNOWN: no status from the node yet, or none for `stale_after_s`. Routing
  should treat it like HEALTHY: a monitoring outage must not stop serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import grpc

from switchboard.gpu.v1 import gpu_pb2, gpu_pb2_grpc
from switchboard.registry.v1 import registry_pb2
from switchboard_common.channels import channel as service_channel
from switchboard_common.logs import log_fields
from switchboard_common.tls import TlsFiles

log = logging.getLogger(__name__)

DEFAULT_SATURATED_PERCENT = 95.0
DEFAULT_STALE_AFTER_S = 30.0

# XIDs that mean the GPU or its driver is in trouble (NVIDIA's XID catalogue:
# double-bit ECC, row-remap failure, NVLink, fallen off the bus, contained and
# uncontained ECC, GSP faults), as opposed to ones an application causes
# (13 graphics exception, 31 MMU fault, 43, 45), which say nothing about the GPU.
FATAL_XIDS = frozenset({48, 62, 64, 74, 79, 92, 94, 95, 119, 120})


class Condition(enum.StrEnum):
    HEALTHY = "healthy"
    SATURATED = "saturated"
    UNHEALTHY = "unhealthy"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Verdict:
    condition: Condition
    # Empty when HEALTHY; otherwise one line for a routing decision's reason.
    reason: str = ""
    # The finer GpuHealth value (SATURATED by utilisation vs ALERTING by an alert).
    health: gpu_pb2.GpuHealth.ValueType = gpu_pb2.GPU_HEALTH_UNSPECIFIED


HEALTHY = Verdict(Condition.HEALTHY, "", gpu_pb2.GPU_HEALTH_OK)


def _num(value: float) -> str:
    return f"{value:g}"


def _alert_reason(alert: gpu_pb2.GpuAlert) -> str:
    severity = registry_pb2.Severity.Name(alert.severity).removeprefix("SEVERITY_").lower()
    detail = f": {alert.message}" if alert.message else ""
    return f"alert {alert.rule_name} ({severity}){detail}"


def classify_device(
    device: gpu_pb2.GpuDevice,
    alerts: Iterable[gpu_pb2.GpuAlert] = (),
    *,
    saturated_percent: float = DEFAULT_SATURATED_PERCENT,
) -> Verdict:
    """`alerts` may hold any alerts: only FIRING ones for this device count."""
    firing = [
        a
        for a in alerts
        if a.state == gpu_pb2.ALERT_STATE_FIRING and (not a.gpu_uuid or a.gpu_uuid == device.uuid)
    ]
    unhealthy = gpu_pb2.GPU_HEALTH_UNHEALTHY
    if device.nvml_errors:
        more = len(device.nvml_errors) - 1
        extra = f" (+{more} more)" if more else ""
        return Verdict(
            Condition.UNHEALTHY, f"NVML error: {device.nvml_errors[0]}{extra}", unhealthy
        )
    if device.HasField("ecc_uncorrected_errors") and device.ecc_uncorrected_errors > 0:
        reason = f"ecc_uncorrected_errors {device.ecc_uncorrected_errors}"
        return Verdict(Condition.UNHEALTHY, reason, unhealthy)
    if device.HasField("last_xid") and device.last_xid in FATAL_XIDS:
        return Verdict(Condition.UNHEALTHY, f"XID {device.last_xid}", unhealthy)
    for alert in firing:
        if alert.severity == registry_pb2.SEVERITY_CRITICAL:
            return Verdict(Condition.UNHEALTHY, _alert_reason(alert), unhealthy)
    for alert in firing:
        if alert.severity == registry_pb2.SEVERITY_WARNING:
            return Verdict(Condition.SATURATED, _alert_reason(alert), gpu_pb2.GPU_HEALTH_ALERTING)
    if device.HasField("utilization_gpu_percent"):
        util = device.utilization_gpu_percent
        if util >= saturated_percent:
            return Verdict(
                Condition.SATURATED,
                f"utilization_gpu_percent {_num(util)} >= {_num(saturated_percent)}",
                gpu_pb2.GPU_HEALTH_SATURATED,
            )
    return HEALTHY


def classify(
    node: gpu_pb2.NodeStatus | None,
    gpu_uuid: str,
    alerts: Iterable[gpu_pb2.GpuAlert] = (),
    *,
    saturated_percent: float = DEFAULT_SATURATED_PERCENT,
) -> Verdict:
    """A GPU by uuid within its node's latest status (None: no status)."""
    if node is None:
        return Verdict(Condition.UNKNOWN, "no GPU status from its node yet")
    host = node.hostname
    if node.nvml_state == gpu_pb2.NVML_STATE_UNAVAILABLE:
        return Verdict(
            Condition.UNHEALTHY,
            f"NVML unavailable on {host}: {node.reason}",
            gpu_pb2.GPU_HEALTH_UNHEALTHY,
        )
    for device in node.devices:
        if device.uuid == gpu_uuid:
            return classify_device(device, alerts, saturated_percent=saturated_percent)
    return Verdict(
        Condition.UNHEALTHY, f"GPU {gpu_uuid} not found on {host}", gpu_pb2.GPU_HEALTH_UNHEALTHY
    )


@dataclass
class _Node:
    status: gpu_pb2.NodeStatus
    seen_at: float


class GpuHealthBoard:
    """The latest status per node and the alerts firing, from whatever feeds it.
    Not thread-safe: feed and read it on one event loop."""

    def __init__(
        self,
        *,
        saturated_percent: float = DEFAULT_SATURATED_PERCENT,
        stale_after_s: float = DEFAULT_STALE_AFTER_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.saturated_percent = saturated_percent
        self.stale_after_s = stale_after_s
        self._clock = clock
        self._nodes: dict[str, _Node] = {}
        # hostname → alert_id → the alert, FIRING only.
        self._alerts: dict[str, dict[str, gpu_pb2.GpuAlert]] = {}

    def observe(self, response: gpu_pb2.WatchGpuMetricsResponse) -> None:
        which = response.WhichOneof("event")
        if which == "metrics_update":
            self.observe_status(response.metrics_update)
        elif which == "alert":
            self.observe_alert(response.alert)

    def observe_status(self, status: gpu_pb2.NodeStatus) -> None:
        # Staleness is judged by arrival here, not sample_time: node clocks drift.
        self._nodes[status.hostname] = _Node(status, self._clock())

    def observe_alert(self, alert: gpu_pb2.GpuAlert) -> None:
        firing = self._alerts.setdefault(alert.hostname, {})
        if alert.state == gpu_pb2.ALERT_STATE_FIRING:
            firing[alert.alert_id] = alert
        else:
            firing.pop(alert.alert_id, None)

    def forget_alerts(self, hostname: str) -> None:
        """Before a node's alerts are sent again (a new watch stream sends the
        ones firing right after its first status), so resolutions missed while
        disconnected do not linger."""
        self._alerts.pop(hostname, None)

    def verdict(self, hostname: str, gpu_uuid: str) -> Verdict:
        node = self._nodes.get(hostname)
        if node is None:
            return Verdict(Condition.UNKNOWN, f"no GPU status from {hostname} yet")
        age = self._clock() - node.seen_at
        if age > self.stale_after_s:
            return Verdict(Condition.UNKNOWN, f"no GPU status from {hostname} for {age:.0f}s")
        return classify(
            node.status,
            gpu_uuid,
            self._alerts.get(hostname, {}).values(),
            saturated_percent=self.saturated_percent,
        )

    def verdicts(self) -> dict[tuple[str, str], Verdict]:
        """Every device of every node seen, by (hostname, gpu uuid)."""
        return {
            (host, device.uuid): self.verdict(host, device.uuid)
            for host, node in self._nodes.items()
            for device in node.status.devices
        }


async def follow_gpu_health(
    address: str,
    board: GpuHealthBoard,
    *,
    tls: TlsFiles | None = None,
    interval_ms: int = 0,
    max_backoff_s: float = 5.0,
    rng: random.Random | None = None,
) -> None:
    """Feed `board` from the gpu service at `address` until cancelled."""
    rng = rng or random.Random()  # noqa: S311 - backoff jitter
    backoff = 0.2
    while True:
        async with service_channel(address, tls) as channel:
            call = gpu_pb2_grpc.GpuFeedServiceStub(channel).WatchGpuFeed(
                gpu_pb2.WatchGpuMetricsRequest(interval_ms=interval_ms)
            )
            first = True
            try:
                async for response in call:
                    if first and response.WhichOneof("event") == "metrics_update":
                        board.forget_alerts(response.metrics_update.hostname)
                        first = False
                        backoff = 0.2
                    board.observe(response)
                reason = "stream ended"
            except grpc.aio.AioRpcError as err:
                reason = err.code().name
            finally:
                with contextlib.suppress(Exception):
                    call.cancel()
        delay = rng.uniform(backoff / 2, backoff)
        log.warning(
            "gpu watch interrupted; reconnecting",
            extra=log_fields(address=address, reason=reason, retry_in_s=round(delay, 2)),
        )
        await asyncio.sleep(delay)
        backoff = min(backoff * 2, max_backoff_s)
