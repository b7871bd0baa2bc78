"""The numeric readings of a GPU (switchboard.gpu.v1.GpuDevice's optional
fields): what the sampler fills, alert rules compare and history queries chart.
Named once, so a new reading is added in one place."""

from __future__ import annotations

GPU_METRIC_FIELDS = (
    "utilization_gpu_percent",
    "utilization_memory_percent",
    "memory_used_mib",
    "memory_total_mib",
    "temperature_c",
    "power_w",
    "power_limit_w",
    "sm_clock_mhz",
    "memory_clock_mhz",
    "ecc_uncorrected_errors",
    "last_xid",
)

# What alert rules over model metrics may name (seed 004's): the mean response
# time in seconds and the error rate (a fraction), per model, over a window of
# live traffic (switchboard_gpu.model_alerts evaluates them).
MODEL_METRIC_NAMES = ("response_time", "error_rate")
