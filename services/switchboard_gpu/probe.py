"""`python -m switchboard_gpu.probe`: one sample from the real NVML, printed for
a person, to check the real backend on a machine with a GPU.

Exit status: 0 when device readings were printed, 2 when NVML is unavailable,
3 when NVML works but sees no devices.
"""

from __future__ import annotations

import sys

from switchboard.gpu.v1 import gpu_pb2
from switchboard_common.settings import Settings
from switchboard_gpu.nvml import PynvmlBackend
from switchboard_gpu.sampler import Sampler
from switchboard_gpu.settings import GpuSettings

_EXIT = {gpu_pb2.NVML_STATE_AVAILABLE: 0, gpu_pb2.NVML_STATE_UNAVAILABLE: 2}
_ABSENT = "n/a"


def _num(device: gpu_pb2.GpuDevice, field: str, unit: str, fmt: str = "{:g}") -> str:
    # HasField wants a literal for the type checker; the names here are the proto's own.
    if not device.HasField(field):  # type: ignore[arg-type]
        return _ABSENT
    return fmt.format(getattr(device, field)) + unit


def render(status: gpu_pb2.NodeStatus) -> str:
    state = gpu_pb2.NvmlState.Name(status.nvml_state)
    lines = [f"host {status.hostname}: {state}"]
    if status.reason:
        lines.append(f"  reason: {status.reason}")
    if status.labels:
        lines.append("  labels: " + ", ".join(f"{k}={v}" for k, v in sorted(status.labels.items())))
    if status.driver_version or status.cuda_version:
        lines.append(
            f"  driver {status.driver_version or _ABSENT}, CUDA {status.cuda_version or _ABSENT}"
        )
    for d in status.devices:
        health = gpu_pb2.GpuHealth.Name(d.health).removeprefix("GPU_HEALTH_")
        lines += [
            f"GPU {d.index}: {d.name or _ABSENT} {d.uuid or _ABSENT} [{health}]",
            f"  utilization  gpu {_num(d, 'utilization_gpu_percent', '%')}"
            f"  memory {_num(d, 'utilization_memory_percent', '%')}",
            f"  memory       {_num(d, 'memory_used_mib', ' MiB')}"
            f" / {_num(d, 'memory_total_mib', ' MiB')}",
            f"  temperature  {_num(d, 'temperature_c', ' C')}",
            f"  power        {_num(d, 'power_w', ' W', '{:.1f}')}"
            f" / limit {_num(d, 'power_limit_w', ' W', '{:.1f}')}",
            f"  clocks       sm {_num(d, 'sm_clock_mhz', ' MHz')}"
            f"  memory {_num(d, 'memory_clock_mhz', ' MHz')}",
            f"  ecc uncorrected {_num(d, 'ecc_uncorrected_errors', '')}"
            f"  last xid {_num(d, 'last_xid', '')}",
        ]
        if d.health_reason:
            lines.append(f"  health       {d.health_reason}")
        lines += [f"  nvml error   {error}" for error in d.nvml_errors]
        for p in d.processes:
            used = f"{p.used_memory_mib} MiB" if p.HasField("used_memory_mib") else _ABSENT
            lines.append(f"  process {p.pid} {p.name or '?'} {used}")
    return "\n".join(lines)


def main() -> int:
    sampler = Sampler(PynvmlBackend(), GpuSettings.from_env(Settings.from_env()).sampler)
    try:
        status = sampler.sample(processes=True)
    finally:
        sampler.close()
    print(render(status))
    return _EXIT.get(status.nvml_state, 3)


if __name__ == "__main__":
    sys.exit(main())
