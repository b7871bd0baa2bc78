"""Prometheus metrics shared by every service, served on a side port."""

from __future__ import annotations

from prometheus_client import Counter, Histogram, start_http_server

RPC_DURATION = Histogram(
    "switchboard_rpc_duration_seconds",
    "Server-side RPC handling time.",
    ["service", "method", "code"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RPC_ERRORS = Counter(
    "switchboard_rpc_errors_total",
    "RPCs that ended with an error, by ErrorInfo reason.",
    ["service", "method", "reason"],
)


def serve_metrics(port: int, host: str = "127.0.0.1") -> None:
    start_http_server(port, addr=host)
