"""Render deploy/envoy/envoy.yaml.tmpl, the one edge template shared with k8s."""

from __future__ import annotations

import json
import os
from pathlib import Path
from string import Template
from urllib.parse import urlsplit

from switchboard_common import workers
from switchboard_common.settings import Settings
from switchboard_common.tls import TlsFiles
from switchboard_stack import edge_surfaces

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "deploy" / "envoy" / "envoy.yaml.tmpl"
LUA = REPO / "deploy" / "envoy" / "edge.lua"
DESCRIPTOR = REPO / "gen" / "switchboard.binpb"
# The web console's static files, served by the edge at /console.
CONSOLE_DIR = REPO / "deploy" / "console"
CONSOLE_MAX_FILE_BYTES = 1024 * 1024
MAX_BODY_BYTES = 32 * 1024 * 1024
# Calls per Envoy→router connection when the router runs several workers.
ROUTER_STREAMS_PER_CONNECTION = 8


def admin_port() -> int:
    return int(os.environ.get("SWITCHBOARD_ENVOY_ADMIN_PORT") or 9901)


_PLAINTEXT: dict[str, object] = {
    "name": "envoy.transport_sockets.raw_buffer",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
    },
}
_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."


def _certificate(cert: Path | str, key: Path | str) -> dict[str, object]:
    return {"certificate_chain": {"filename": str(cert)}, "private_key": {"filename": str(key)}}


def edge_transport_socket() -> dict[str, object]:
    """TLS for clients when SWITCHBOARD_EDGE_TLS_CERT and _KEY name PEM files."""
    cert = os.environ.get("SWITCHBOARD_EDGE_TLS_CERT")
    key = os.environ.get("SWITCHBOARD_EDGE_TLS_KEY")
    if not cert and not key:
        return _PLAINTEXT
    if not (cert and key):
        raise ValueError(
            "edge TLS needs both SWITCHBOARD_EDGE_TLS_CERT and SWITCHBOARD_EDGE_TLS_KEY"
        )
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": _TLS + "DownstreamTlsContext",
            "common_tls_context": {
                "tls_certificates": [_certificate(cert, key)],
                "alpn_protocols": ["h2", "http/1.1"],
            },
        },
    }


def upstream_transport_socket(
    tls: TlsFiles | None, alpn: tuple[str, ...] = ("h2",)
) -> dict[str, object]:
    """Mutual TLS to the services when they run it (SWITCHBOARD_TLS_*): gRPC
    over h2, the WebSocket monitor over http/1.1."""
    if tls is None:
        return _PLAINTEXT
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": _TLS + "UpstreamTlsContext",
            "common_tls_context": {
                "tls_certificates": [_certificate(tls.cert, tls.key)],
                "validation_context": {"trusted_ca": {"filename": str(tls.ca)}},
                "alpn_protocols": list(alpn),
            },
        },
    }


TRACING_CLUSTER = "otel_collector"
_H2_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_TRACING_OFF = "# tracing: off (OTEL_EXPORTER_OTLP_ENDPOINT is unset)"


def tracing(settings: Settings) -> tuple[str, str]:
    """The HTTP connection manager's `tracing` entry and the collector's
    cluster, when OTEL_EXPORTER_OTLP_ENDPOINT names an OTLP/gRPC endpoint:
    Envoy's OpenTelemetry tracer starts (or joins, from a client's W3C
    traceparent) each request's trace and passes traceparent on to the
    services, whose spans become its children. Off: YAML comments."""
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if not endpoint:
        return _TRACING_OFF, _TRACING_OFF
    url = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
    if not url.hostname:
        raise ValueError(f"OTEL_EXPORTER_OTLP_ENDPOINT={endpoint!r} names no host")
    secure = url.scheme == "https"
    port = url.port or 4317
    entry = {
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
                "grpc_service": {"envoy_grpc": {"cluster_name": TRACING_CLUSTER}, "timeout": "2s"},
                "service_name": "switchboard-edge",
            },
        },
        # Every request (the services follow the edge's sampling decision).
        "random_sampling": {"value": 100},
        "spawn_upstream_span": False,
    }
    transport: dict[str, object] = _PLAINTEXT
    if secure:
        transport = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {"@type": _TLS + "UpstreamTlsContext", "sni": url.hostname},
        }
    cluster = {
        "name": TRACING_CLUSTER,
        "type": "STRICT_DNS",
        "connect_timeout": "2s",
        "typed_extension_protocol_options": {
            _H2_OPTIONS: {
                "@type": "type.googleapis.com/" + _H2_OPTIONS,
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "transport_socket": transport,
        "load_assignment": {
            "cluster_name": TRACING_CLUSTER,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": url.hostname, "port_value": port}
                                }
                            }
                        }
                    ]
                }
            ],
        },
    }
    return f"tracing: {json.dumps(entry)}", f"- {json.dumps(cluster)}"


def router_h2_options() -> str:
    """The router cluster's HTTP/2 options. One connection per Envoy thread would
    land every call of that thread on one of the router's workers (the kernel
    picks a SO_REUSEPORT socket per connection): with workers, a connection
    carries at most ROUTER_STREAMS_PER_CONNECTION calls, so more connections
    open under load and spread over them."""
    if workers.worker_count() > 1:
        return json.dumps({"max_concurrent_streams": ROUTER_STREAMS_PER_CONNECTION})
    return "{}"


def values(settings: Settings) -> dict[str, str]:
    out = {
        "ADMIN_HOST": "127.0.0.1",
        "ADMIN_PORT": str(admin_port()),
        "EDGE_HOST": os.environ.get("SWITCHBOARD_EDGE_HOST") or "0.0.0.0",
        "EDGE_PORT": str(settings.edge_port),
        "LUA_PATH": str(LUA),
        "DESCRIPTOR_PATH": str(DESCRIPTOR),
        "CONSOLE_DIR": str(CONSOLE_DIR),
        "CONSOLE_MAX_FILE_BYTES": str(CONSOLE_MAX_FILE_BYTES),
        "MAX_BODY_BYTES": str(MAX_BODY_BYTES),
        "MAX_CONNECTIONS": os.environ.get("SWITCHBOARD_EDGE_MAX_CONNECTIONS") or "10000",
        "EDGE_TRANSPORT_SOCKET": json.dumps(edge_transport_socket()),
        "UPSTREAM_TRANSPORT_SOCKET": json.dumps(upstream_transport_socket(settings.tls)),
        "SEED_ROUTES": edge_surfaces.routes_yaml(),
        "CORS_POLICY": json.dumps(edge_surfaces.cors_policy()),
    }
    out["ROUTER_H2_OPTIONS"] = router_h2_options()
    out["EDGE_TRACING"], out["TRACING_CLUSTER"] = tracing(settings)
    out["MONITOR_HOST"], _, out["MONITOR_PORT"] = settings.monitor_address().rpartition(":")
    out["MONITOR_TRANSPORT_SOCKET"] = json.dumps(
        upstream_transport_socket(settings.tls, ("http/1.1",))
    )
    for service in ("router", "registry", "usage", "gpu", "engine"):
        host, _, port = settings.address(service).rpartition(":")
        out[f"{service.upper()}_HOST"] = host
        out[f"{service.upper()}_PORT"] = port
    return out


def render(settings: Settings, out: Path) -> Path:
    text = Template(TEMPLATE.read_text()).substitute(values(settings))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return out
