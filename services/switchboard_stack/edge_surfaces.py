"""Where the edge serves the seed APIs, and which browser origins may call it.

Each seed API is served at its document's prefix unless its variable moves it
(another prefix, or several, comma-separated) or switches it off ("off"):
  SWITCHBOARD_QWEN_CHAT_PREFIX    (001, default /api/llm)
  SWITCHBOARD_MULTI_LLM_PREFIX    (002, default /api/llm,/api/v1/llm)
  SWITCHBOARD_VISION_CHAT_PREFIX  (003, default /api/v1)
  SWITCHBOARD_INFERENCE_MANAGER_PREFIX     (004, default /api)
  SWITCHBOARD_INFERENCE_MANAGER_V1_PREFIX  (004's versioned paths, default /api/v1)
The Bisheng LLM API (seed 000) is served at its own paths (SWITCHBOARD_BISHENG_API
"off" switches it off): exact ones, routed before 002's /api/v1/llm/ prefix.
The edge's Lua filter rewrites a moved prefix to the one in the protos (the
route's metadata says which) and answers 404 for a path the surfaces at that
prefix do not own. SWITCHBOARD_CORS_ORIGINS lists the origins (exact,
comma-separated) that browsers may call from; none by default.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

LUA_FILTER = "envoy.filters.http.lua"
_PREFIX = re.compile(r"^(/[A-Za-z0-9._~-]+)+$")
_RESERVED = ("/v1", "/console", "/healthz", "/docs", "/admin")
_INDENT = " " * 24


@dataclass(frozen=True)
class Surface:
    env: str
    default: str
    # The prefix of its routes in the protos (google.api.http).
    canonical: str
    # The first path segments it serves under its prefix.
    owns: tuple[str, ...]


_INFERENCE_MANAGER = ("models", "system", "monitoring", "config", "auth")

SURFACES = {
    "qwen_chat": Surface(
        "SWITCHBOARD_QWEN_CHAT_PREFIX", "/api/llm", "/api/llm", ("chat", "models")
    ),
    "multi_llm": Surface(
        "SWITCHBOARD_MULTI_LLM_PREFIX",
        "/api/llm,/api/v1/llm",
        "/api/llm",
        ("generate", "models", "health", "stats", "config"),
    ),
    "vision_chat": Surface(
        "SWITCHBOARD_VISION_CHAT_PREFIX", "/api/v1", "/api/v1", ("chat", "vision", "models")
    ),
    # Seed 004 at /api, and its versioned paths (/api/v1/models/…) beside seed 003's.
    "inference_manager": Surface(
        "SWITCHBOARD_INFERENCE_MANAGER_PREFIX", "/api", "/api", _INFERENCE_MANAGER
    ),
    "inference_manager_v1": Surface(
        "SWITCHBOARD_INFERENCE_MANAGER_V1_PREFIX", "/api/v1", "/api/v1", _INFERENCE_MANAGER
    ),
}


# The Bisheng LLM API's paths: exact, so that they take nothing from 002 at
# /api/v1/llm/ (its /generate, /models, /health, /stats, /config), and the chat
# route a prefix, for its ":stream" twin (the edge's Lua filter rewrites to it).
BISHENG_PATHS = (
    "/api/v1/llm",
    "/api/v1/llm/info",
    "/api/v1/llm/online",
    *(
        f"/api/v1/llm/{use}"
        for use in ("knowledge", "assistant", "evaluation", "workflow", "workbench")
    ),
    "/api/v1/llm/assistant/llm_list",
    "/api/v1/llm/workbench/asr",
    "/api/v1/llm/workbench/tts",
    "/health",
)
# The chat route, and the TTS audio links (/audio/{key}).
BISHENG_PREFIXES = ("/api/v2/assistant/chat/completions", "/api/v1/llm/workbench/tts/audio/")
# The TTS answer is a link to the edge itself: its route tells the router the
# host the client called (the link is signed: a forged host only misleads the
# client that forged it).
_HOST_FOR_LINKS = {"/api/v1/llm/workbench/tts"}


def bisheng_routes() -> list[dict[str, object]]:
    if (os.environ.get("SWITCHBOARD_BISHENG_API") or "").strip().lower() == "off":
        return []
    route = {"cluster": "router", "timeout": "0s"}
    exact: list[dict[str, object]] = []
    for path in BISHENG_PATHS:
        entry: dict[str, object] = {"match": {"path": path}, "route": route}
        if path in _HOST_FOR_LINKS:
            entry["request_headers_to_add"] = [
                {
                    "header": {"key": "x-forwarded-host", "value": "%REQ(:authority)%"},
                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                }
            ]
        exact.append(entry)
    return exact + [{"match": {"prefix": p}, "route": route} for p in BISHENG_PREFIXES]


def prefixes(surface: Surface) -> list[str]:
    raw = os.environ.get(surface.env) or surface.default
    if raw.strip().lower() == "off":
        return []
    out = []
    for prefix in (p.strip().rstrip("/") for p in raw.split(",") if p.strip()):
        reserved = any(prefix == r or prefix.startswith(r + "/") for r in _RESERVED)
        if not _PREFIX.match(prefix) or reserved:
            raise ValueError(
                f"{surface.env}: {prefix!r} is not a usable path prefix (like /api/llm; "
                f"not under {', '.join(_RESERVED)}), or 'off'"
            )
        out.append(prefix)
    return out


def routes() -> list[dict[str, object]]:
    """Envoy routes for the seed APIs: Bisheng's exact paths, then the
    prefixes, longest first."""
    served: dict[str, tuple[str, set[str]]] = {}
    for name, surface in SURFACES.items():
        for prefix in prefixes(surface):
            canonical, owns = served.setdefault(prefix, (surface.canonical, set()))
            if canonical != surface.canonical:
                raise ValueError(f"{surface.env}: {prefix} already serves another API ({name})")
            owns.update(surface.owns)
    return bisheng_routes() + [
        {
            "match": {"prefix": prefix + "/"},
            "route": {"cluster": "router", "timeout": "0s"},
            "metadata": {
                "filter_metadata": {
                    LUA_FILTER: {
                        "prefix": prefix + "/",
                        "canonical": canonical + "/",
                        "owns": "," + ",".join(sorted(owns)) + ",",
                    }
                }
            },
        }
        for prefix, (canonical, owns) in sorted(served.items(), key=lambda i: -len(i[0]))
    ]


def routes_yaml() -> str:
    """The routes as items of the template's route list (JSON is YAML)."""
    return "\n".join(f"{_INDENT}- {json.dumps(route)}" for route in routes())


def cors_policy() -> dict[str, object]:
    origins = [
        o.strip()
        for o in (os.environ.get("SWITCHBOARD_CORS_ORIGINS") or "").split(",")
        if o.strip()
    ]
    return {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy",
        "allow_origin_string_match": [{"exact": origin} for origin in origins],
        "allow_methods": "GET, POST, PUT, PATCH, DELETE, OPTIONS",
        "allow_headers": "authorization, x-api-key, content-type, x-request-id",
        "expose_headers": (
            "x-request-id, x-switchboard-model, x-switchboard-deployment, retry-after"
        ),
        "max_age": "600",
    }
