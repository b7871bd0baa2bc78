"""The node's CPU, memory and disk, read with psutil beside each GPU sample
(seed 004's system status shows them per node)."""

from __future__ import annotations

import os
from pathlib import Path

import psutil

from switchboard.gpu.v1 import gpu_pb2

MIB = 1024 * 1024


def disk_path(home: Path) -> Path:
    """The filesystem that holds Switchboard's state (models, logs, data):
    SWITCHBOARD_HOME's, or its nearest existing parent's."""
    while not home.exists() and home != home.parent:
        home = home.parent
    return home.resolve()


def read(path: Path) -> gpu_pb2.HostMetrics:
    """One reading; cpu_percent covers the time since the previous call (the
    first call after start reads 0)."""
    memory = psutil.virtual_memory()
    disk = psutil.disk_usage(str(path))
    return gpu_pb2.HostMetrics(
        cpu_percent=psutil.cpu_percent(interval=None),
        cpu_count=psutil.cpu_count() or 0,
        memory_percent=memory.percent,
        memory_used_mib=(memory.total - memory.available) // MIB,
        memory_total_mib=memory.total // MIB,
        disk_percent=disk.percent,
        disk_used_mib=disk.used // MIB,
        disk_total_mib=disk.total // MIB,
        load_average_1m=os.getloadavg()[0],
    )
