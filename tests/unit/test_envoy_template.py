"""The rendered Envoy config: valid YAML, fully substituted, pointing at our ports."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from switchboard_common.settings import Settings
from switchboard_stack import envoy

PORTS = {"router": 61051, "registry": 61052, "usage": 61054, "gpu": 61055, "engine": 61056}
PORT_ENV = {
    "router": "SWITCHBOARD_GRPC_PORT",
    "registry": "SWITCHBOARD_REGISTRY_PORT",
    "usage": "SWITCHBOARD_USAGE_PORT",
    "gpu": "SWITCHBOARD_GPU_PORT",
    "engine": "SWITCHBOARD_ENGINE_PORT",
}
EDGE_PORT = 18080
ADMIN_PORT = 19901
MONITOR_PORT = 61057


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    for service, var in PORT_ENV.items():
        monkeypatch.setenv(var, str(PORTS[service]))
        monkeypatch.delenv(f"SWITCHBOARD_{service.upper()}_ADDR", raising=False)
    monkeypatch.setenv("SWITCHBOARD_EDGE_PORT", str(EDGE_PORT))
    monkeypatch.setenv("SWITCHBOARD_GPU_MONITOR_PORT", str(MONITOR_PORT))
    monkeypatch.delenv("SWITCHBOARD_GPU_MONITOR_ADDR", raising=False)
    monkeypatch.setenv("SWITCHBOARD_ENVOY_ADMIN_PORT", str(ADMIN_PORT))
    monkeypatch.setenv("SWITCHBOARD_HOST", "127.0.0.1")
    monkeypatch.delenv("SWITCHBOARD_EDGE_HOST", raising=False)
    return Settings.from_env()


@pytest.fixture
def rendered(settings: Settings, tmp_path: Path) -> tuple[str, dict[str, Any]]:
    path = envoy.render(settings, tmp_path / "nested" / "envoy.yaml")
    assert path == tmp_path / "nested" / "envoy.yaml"
    text = path.read_text()
    data = yaml.safe_load(text)
    assert isinstance(data, dict)
    return text, data


def _strings(node: object) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(key)
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)


def _clusters(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services' gRPC clusters (not the WebSocket monitor's, checked on its own)."""
    return {c["name"]: c for c in data["static_resources"]["clusters"] if c["name"] != "monitor"}


def _socket(cluster: dict[str, Any]) -> dict[str, Any]:
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    socket: dict[str, Any] = endpoint["address"]["socket_address"]
    return socket


def test_no_placeholder_is_left(rendered: tuple[str, dict[str, Any]]) -> None:
    text, data = rendered
    assert not [s for s in _strings(data) if "${" in s]
    # The header comment documents the $${NAME} escape, so it legitimately shows "${".
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert not re.search(r"\$\{?[A-Z_]+", code)


def test_cluster_ports_equal_settings_ports(rendered: tuple[str, dict[str, Any]]) -> None:
    clusters = _clusters(rendered[1])
    assert set(clusters) == set(PORTS)
    for service, port in PORTS.items():
        socket = _socket(clusters[service])
        assert socket == {"address": "127.0.0.1", "port_value": port}, service
        assert clusters[service]["load_assignment"]["cluster_name"] == service


def test_clusters_speak_http2(rendered: tuple[str, dict[str, Any]]) -> None:
    # The YAML anchor (&h2) must resolve to the same options on every cluster.
    options = [c["typed_extension_protocol_options"] for c in _clusters(rendered[1]).values()]
    assert all(o == options[0] for o in options)
    http = options[0]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert "http2_protocol_options" in http["explicit_http_config"]


def test_the_websocket_monitor_is_routed_to_the_gpu_service_over_http1(
    rendered: tuple[str, dict[str, Any]],
) -> None:
    data = rendered[1]
    (monitor,) = [c for c in data["static_resources"]["clusters"] if c["name"] == "monitor"]
    assert _socket(monitor) == {"address": "127.0.0.1", "port_value": MONITOR_PORT}
    # HTTP/1.1: a WebSocket upgrade does not go over h2 to the upstream.
    assert "typed_extension_protocol_options" not in monitor
    (listener,) = data["static_resources"]["listeners"]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    routes = manager["route_config"]["virtual_hosts"][0]["routes"]
    upgrade, plain = routes[0], routes[1]
    assert upgrade["match"]["path"] == "/ws/monitor"
    assert upgrade["match"]["headers"][0]["name"] == "upgrade"
    assert upgrade["route"]["cluster"] == "monitor"
    assert upgrade["route"]["upgrade_configs"] == [{"upgrade_type": "websocket"}]
    # The upgrade is not an API call: no body checks, no transcoding, no lua.
    assert all(f["disabled"] for f in upgrade["typed_per_filter_config"].values())
    # Without the upgrade header, GpuService.WatchMonitor, transcoded.
    assert plain == {"match": {"path": "/ws/monitor"}, "route": {"cluster": "gpu", "timeout": "0s"}}


def test_listener_and_admin_addresses(rendered: tuple[str, dict[str, Any]]) -> None:
    data = rendered[1]
    assert data["admin"]["address"]["socket_address"] == {
        "address": "127.0.0.1",
        "port_value": ADMIN_PORT,
    }
    (listener,) = data["static_resources"]["listeners"]
    assert listener["address"]["socket_address"] == {"address": "0.0.0.0", "port_value": EDGE_PORT}
    assert listener["per_connection_buffer_limit_bytes"] == envoy.MAX_BODY_BYTES


def _http_filters(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    (listener,) = data["static_resources"]["listeners"]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return {f["name"]: f["typed_config"] for f in manager["http_filters"]}


def test_lua_and_descriptor_paths_exist(rendered: tuple[str, dict[str, Any]]) -> None:
    filters = _http_filters(rendered[1])
    lua = Path(filters["envoy.filters.http.lua"]["default_source_code"]["filename"])
    descriptor = Path(filters["envoy.filters.http.grpc_json_transcoder"]["proto_descriptor"])
    assert lua.is_absolute()
    assert lua.is_file()
    assert lua == envoy.LUA
    assert descriptor.is_absolute()
    assert descriptor.is_file()
    assert descriptor == envoy.DESCRIPTOR


def test_transcoder_body_limit(rendered: tuple[str, dict[str, Any]]) -> None:
    transcoder = _http_filters(rendered[1])["envoy.filters.http.grpc_json_transcoder"]
    assert transcoder["max_request_body_size"] == envoy.MAX_BODY_BYTES


def test_addr_override_points_a_cluster_elsewhere(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SWITCHBOARD_USAGE_ADDR", "usage.internal:7000")
    # Settings are read once: the override counts from the next read.
    assert settings.address("usage") != "usage.internal:7000"
    data = yaml.safe_load(envoy.render(Settings.from_env(), tmp_path / "envoy.yaml").read_text())
    assert _socket(_clusters(data)["usage"]) == {"address": "usage.internal", "port_value": 7000}


def _manager(data: dict[str, Any]) -> dict[str, Any]:
    (listener,) = data["static_resources"]["listeners"]
    manager: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return manager


def test_hostile_input_limits(rendered: tuple[str, dict[str, Any]]) -> None:
    """What edge.lua relies on (tests/e2e/test_hostile_input.py drives them)."""
    data = rendered[1]
    manager = _manager(data)
    # Envoy's own cap; edge.lua holds headers to the services' gRPC metadata budget.
    assert manager["max_request_headers_kb"] == 16
    filters = _http_filters(data)
    validation = filters["envoy.filters.http.grpc_json_transcoder"]["request_validation_options"]
    # Otherwise an unknown query parameter passes untranscoded and the service resets it.
    assert validation == {"reject_unknown_method": True, "reject_unknown_query_parameters": True}
    # The stream flag is read from every body the transcoder reads as JSON.
    rules = filters["envoy.filters.http.json_to_metadata"]["request_rules"]
    assert "text/plain" in rules["allow_content_types"]
    assert rules["allow_empty_content_type"] is True
    # Order matters: the checks run on the body before the transcoder sees it.
    assert list(filters).index("envoy.filters.http.lua") < list(filters).index(
        "envoy.filters.http.grpc_json_transcoder"
    )


def test_local_replies_keep_edge_lua_bodies(rendered: tuple[str, dict[str, Any]]) -> None:
    """edge.lua's refusals are already OpenAI errors: the first mapper passes them
    through (only when edge.lua marked them), the others render Envoy's own."""
    mappers = _manager(rendered[1])["local_reply_config"]["mappers"]
    (index,) = [i for i, m in enumerate(mappers) if "metadata_filter" in m["filter"]]
    first = mappers[index]
    matcher = first["filter"]["metadata_filter"]
    assert matcher["matcher"]["filter"] == "switchboard"
    assert matcher["matcher"]["path"] == [{"key": "rendered"}]
    assert matcher["match_if_key_not_found"] is False
    assert first["body_format_override"]["text_format_source"]["inline_string"] == (
        "%LOCAL_REPLY_BODY%"
    )
    codes = {
        m["filter"]["status_code_filter"]["comparison"]["value"]["default_value"]: m
        for m in mappers
        if "status_code_filter" in m["filter"]
    }
    # Before every status mapper, which would wrap edge.lua's body in another error.
    assert index < min(mappers.index(m) for m in codes.values())
    assert {400, 404, 413, 431} <= set(codes)
    for code, mapper in codes.items():
        error = mapper["body_format_override"]["json_format"]["error"]
        assert set(error) == {"message", "type", "code", "param"}, code
