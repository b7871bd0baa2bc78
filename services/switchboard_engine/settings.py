"""The engine service's settings (SWITCHBOARD_ENGINE_* in the README)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

from switchboard_common import env as values
from switchboard_common.settings import Settings


# Counts and durations: none may be negative; a bad one names its variable.
def _float(name: str, default: float) -> float:
    return values.number(os.environ, name, default, minimum=0)


def _int(name: str, default: int) -> int:
    return values.integer(os.environ, name, default, minimum=0)


def _path(name: str) -> Path | None:
    raw = values.text(os.environ, name)
    return Path(raw) if raw else None


@dataclass(frozen=True)
class EngineSettings:
    home: Path
    # This node's name: engines whose config names another node are not ours.
    node: str
    # Where engines listen, and the host in their deployments' base URL.
    bind_host: str
    advertise_host: str
    max_concurrent_models: int = 4
    start_timeout_s: float = 120.0
    stop_timeout_s: float = 10.0
    health_interval_s: float = 1.0
    health_timeout_s: float = 2.0
    start_poll_s: float = 0.2
    # Consecutive failed health checks of a live process before it is restarted.
    unhealthy_after: int = 5
    restart_limit: int = 3
    # Running this long after a restart starts a new count against restart_limit.
    stable_after_s: float = 300.0
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    # Scripted GPU readings instead of NVML (SWITCHBOARD_GPU_SCRIPT), as the gpu service's.
    gpu_script: Path | None = None
    # The engines' binaries where not the installed ones (SWITCHBOARD_LLAMA_SERVER,
    # SWITCHBOARD_VLLM_BIN).
    llama_server: Path | None = None
    vllm_bin: Path | None = None

    def backoff_s(self, attempt: int) -> float:
        return float(min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1)))

    @classmethod
    def from_env(cls, settings: Settings) -> EngineSettings:
        bind = os.environ.get("SWITCHBOARD_ENGINE_BIND_HOST") or "127.0.0.1"
        return cls(
            home=settings.home,
            node=os.environ.get("SWITCHBOARD_NODE_NAME") or socket.gethostname(),
            bind_host=bind,
            advertise_host=os.environ.get("SWITCHBOARD_ENGINE_ADVERTISE_HOST") or bind,
            max_concurrent_models=_int("SWITCHBOARD_ENGINE_MAX_MODELS", 4),
            start_timeout_s=_float("SWITCHBOARD_ENGINE_START_TIMEOUT_S", 120.0),
            stop_timeout_s=_float("SWITCHBOARD_ENGINE_STOP_TIMEOUT_S", 10.0),
            health_interval_s=_float("SWITCHBOARD_ENGINE_HEALTH_INTERVAL_S", 1.0),
            restart_limit=_int("SWITCHBOARD_ENGINE_RESTART_LIMIT", 3),
            backoff_base_s=_float("SWITCHBOARD_ENGINE_BACKOFF_S", 0.5),
            gpu_script=_path("SWITCHBOARD_GPU_SCRIPT"),
            llama_server=_path("SWITCHBOARD_LLAMA_SERVER"),
            vllm_bin=_path("SWITCHBOARD_VLLM_BIN"),
        )
