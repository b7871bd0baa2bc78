"""Render deploy/envoy/envoy.yaml.tmpl, the one edge template shared with k8s."""

from __future__ import annotations

import os
from pathlib import Path
from string import Template

from switchboard_common.settings import Settings

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "deploy" / "envoy" / "envoy.yaml.tmpl"
LUA = REPO / "deploy" / "envoy" / "edge.lua"
DESCRIPTOR = REPO / "gen" / "switchboard.binpb"
# The web console's static files, served by the edge at /console.
CONSOLE_DIR = REPO / "deploy" / "console"
CONSOLE_MAX_FILE_BYTES = 1024 * 1024
MAX_BODY_BYTES = 32 * 1024 * 1024


def admin_port() -> int:
    return int(os.environ.get("SWITCHBOARD_ENVOY_ADMIN_PORT") or 9901)


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
    }
    for service in ("router", "registry", "usage", "gpu"):
        host, _, port = settings.address(service).rpartition(":")
        out[f"{service.upper()}_HOST"] = host
        out[f"{service.upper()}_PORT"] = port
    return out


def render(settings: Settings, out: Path) -> Path:
    text = Template(TEMPLATE.read_text()).substitute(values(settings))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return out
