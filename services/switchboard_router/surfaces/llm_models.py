"""GET /api/llm/models, which seed APIs 001 and 002 both claim with different
bodies. One answer carries both, and each client reads only its own keys:
  - 001: {"code": 200, "message": "success", "data": [chat models (type 0),
    with id (the registry's stable number), title, img, name, description,
    keyword, time, tag1, tag2, type, is_featured, created_at, updated_at]};
  - 002: {"models": [every model the key may use, with id, name, provider,
    type, status, capabilities, limits, pricing]}.
Errors carry both shapes too: {code, message, data: null, error: {...}}."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

import grpc
from google.api import httpbody_pb2

from switchboard_common.config import KeyConfig, ModelConfig
from switchboard_common.errors import SwitchboardError
from switchboard_common.policy import current_caller
from switchboard_router.surfaces import multi_llm_shapes, qwen_shapes, surface
from switchboard_router.surfaces.multi_llm_ops import model_health, model_status

if TYPE_CHECKING:
    from switchboard_router.service import RouterServicer

Context = grpc.aio.ServicerContext[Any, Any]
NAME = "llm_models"


def error(err: SwitchboardError) -> tuple[int, dict[str, Any]]:
    status, body = qwen_shapes.error(err)
    return status, {**body, **multi_llm_shapes.error(err)[1]}


def _stamp(value: dt.datetime | None) -> str:
    # 001's format: 2025-01-01T00:00:00 (UTC).
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S") if value else ""


def qwen_entry(model: ModelConfig) -> dict[str, Any]:
    tags = [*model.tags, "", ""]
    return {
        "id": model.number,
        "title": model.name,
        "img": model.icon_url,
        "name": model.display_name or model.name,
        "description": model.description,
        "keyword": model.keyword,
        "time": model.release_date,
        "tag1": tags[0],
        "tag2": tags[1],
        "type": 0,
        "is_featured": model.featured,
        "created_at": _stamp(model.created_at),
        "updated_at": _stamp(model.updated_at),
    }


def multi_entry(model: ModelConfig, provider: str, status: str) -> dict[str, Any]:
    chat = model.kind == "chat"
    return {
        "id": model.name,
        "name": model.display_name or model.name,
        "provider": provider,
        "type": "text" if chat else model.kind,
        "status": status,
        "capabilities": (["text-generation", "conversation"] if chat else [model.kind])
        + list(model.capabilities),
        "limits": {"max_tokens": model.max_output_tokens, "context_window": model.context_window},
        "pricing": {
            "input_per_1k_tokens": model.pricing.input_per_1k,
            "output_per_1k_tokens": model.pricing.output_per_1k,
        },
    }


def _allowed(key: KeyConfig | None, model: ModelConfig) -> bool:
    return key is None or key.models is None or model.name in key.models


async def list_llm_models(router: RouterServicer, context: Context) -> httpbody_pb2.HttpBody:
    surface.enter(NAME)
    with surface.rendered(error):
        key = current_caller().key
        models = [m for m in router.catalog.config.models if _allowed(key, m)]
        healths = model_health(router)
        return httpbody_pb2.HttpBody(
            content_type="application/json",
            data=qwen_shapes.json_bytes(
                {
                    "code": 200,
                    "message": "success",
                    "data": [qwen_entry(m) for m in models if m.kind == "chat" and m.online],
                    "models": [
                        multi_entry(
                            m,
                            m.deployments[0].provider if m.deployments else "",
                            model_status(m, healths[m.name]),
                        )
                        for m in models
                    ],
                }
            ),
        )
