"""Process settings from the environment (CONTRACT.md's table and the
SWITCHBOARD_* extras documented in the README)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from switchboard_common import env as values
from switchboard_common import heap
from switchboard_common.env import SettingsError
from switchboard_common.tls import TlsFiles

SERVICE_PORTS = {
    "router": 50051,
    "registry": 50052,
    "provider": 50053,
    "usage": 50054,
    "gpu": 50055,
    "engine": 50056,
}
# The gpu service's WebSocket monitor (seed 004's /ws/monitor).
MONITOR_PORT = 50057
# Each service also serves Prometheus metrics on its gRPC port + 1000 unless overridden.
METRICS_PORT_OFFSET = 1000


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from exc


@dataclass(frozen=True)
class Settings:
    home: Path
    config_path: Path
    edge_port: int
    ports: dict[str, int]
    host: str
    kafka_bootstrap: str
    clickhouse_url: str
    registry_database_url: str
    redis_url: str | None
    admin_key: str | None = field(repr=False)
    log_level: str
    # Seconds between NOT_SERVING and refusing new calls, for balancers to notice.
    drain_delay_s: float = 0.0
    metrics_host: str = "127.0.0.1"
    # Mutual TLS between services; None means plaintext.
    tls: TlsFiles | None = None
    # How long a service's start waits for the registry's first snapshot.
    registry_wait_s: float = 30.0
    # SWITCHBOARD_<SERVICE>_ADDR: where a service is reached, when not host:port.
    address_overrides: dict[str, str] = field(default_factory=dict)
    # SWITCHBOARD_<SERVICE>_METRICS_PORT where set; else the gRPC port + 1000.
    metrics_port_overrides: dict[str, int] = field(default_factory=dict)
    # The gpu service's WebSocket monitor: its port, and where it is reached
    # when not beside the gpu service (SWITCHBOARD_GPU_MONITOR_ADDR).
    gpu_monitor_port: int = MONITOR_PORT
    gpu_monitor_addr: str | None = None
    # SWITCHBOARD_GC_GEN0: the young generation's threshold once serving (heap.py).
    gc_gen0: int = heap.DEFAULT_GEN0

    @classmethod
    def from_env(cls) -> Settings:
        home = Path(os.environ.get("SWITCHBOARD_HOME") or ".switchboard").absolute()
        router_port = _int("SWITCHBOARD_GRPC_PORT", SERVICE_PORTS["router"])
        ports = {
            name: _int(f"SWITCHBOARD_{name.upper()}_PORT", default)
            for name, default in SERVICE_PORTS.items()
            if name != "router"
        }
        ports["router"] = router_port
        return cls(
            home=home,
            config_path=Path(os.environ.get("SWITCHBOARD_CONFIG") or "config/switchboard.yaml"),
            edge_port=_int("SWITCHBOARD_EDGE_PORT", 8080),
            ports=ports,
            host=os.environ.get("SWITCHBOARD_HOST") or "127.0.0.1",
            kafka_bootstrap=os.environ.get("KAFKA_BOOTSTRAP") or "127.0.0.1:9092",
            clickhouse_url=os.environ.get("CLICKHOUSE_URL") or f"chdb://{home}/clickhouse",
            # Empty means the SQLite file under home (see registry_url).
            registry_database_url=os.environ.get("REGISTRY_DATABASE_URL") or "",
            redis_url=os.environ.get("REDIS_URL") or None,
            admin_key=os.environ.get("SWITCHBOARD_ADMIN_KEY") or None,
            log_level=(os.environ.get("SWITCHBOARD_LOG_LEVEL") or "INFO").upper(),
            drain_delay_s=values.number(os.environ, "SWITCHBOARD_DRAIN_DELAY_S", 0.0, minimum=0),
            metrics_host=os.environ.get("SWITCHBOARD_METRICS_HOST") or "127.0.0.1",
            tls=TlsFiles.from_env(),
            registry_wait_s=values.number(os.environ, "SWITCHBOARD_REGISTRY_WAIT_S", 30.0, above=0),
            address_overrides={
                name: address
                for name in SERVICE_PORTS
                if (address := values.text(os.environ, f"SWITCHBOARD_{name.upper()}_ADDR"))
            },
            metrics_port_overrides={
                name: _int(f"SWITCHBOARD_{name.upper()}_METRICS_PORT", 0)
                for name in SERVICE_PORTS
                if os.environ.get(f"SWITCHBOARD_{name.upper()}_METRICS_PORT")
            },
            gpu_monitor_port=_int("SWITCHBOARD_GPU_MONITOR_PORT", MONITOR_PORT),
            gpu_monitor_addr=values.text(os.environ, "SWITCHBOARD_GPU_MONITOR_ADDR") or None,
            gc_gen0=values.integer(os.environ, "SWITCHBOARD_GC_GEN0", heap.DEFAULT_GEN0, minimum=0),
        )

    def registry_url(self) -> str:
        return self.registry_database_url or f"sqlite:///{self.home}/registry/registry.db"

    def address(self, service: str) -> str:
        """Where `service` listens, overridable as SWITCHBOARD_<SERVICE>_ADDR (host:port)."""
        override = self.address_overrides.get(service)
        return override or f"{self.host}:{self.ports[service]}"

    def monitor_address(self) -> str:
        """Where the gpu service's WebSocket monitor (seed 004's /ws/monitor)
        listens: beside the gpu service, on SWITCHBOARD_GPU_MONITOR_PORT (50057),
        overridable as SWITCHBOARD_GPU_MONITOR_ADDR (host:port)."""
        if self.gpu_monitor_addr:
            return self.gpu_monitor_addr
        return f"{self.address('gpu').rpartition(':')[0]}:{self.monitor_port()}"

    def monitor_port(self) -> int:
        return self.gpu_monitor_port

    def metrics_port(self, service: str) -> int:
        """Prometheus for `service`: SWITCHBOARD_<SERVICE>_METRICS_PORT, else
        its gRPC port + 1000 (0: off)."""
        override = self.metrics_port_overrides.get(service)
        return override if override is not None else self.ports[service] + METRICS_PORT_OFFSET
