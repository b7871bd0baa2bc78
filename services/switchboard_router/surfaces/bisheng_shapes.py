"""The Bisheng LLM API's shapes: its envelope {status_code, status_message,
data}, its servers (registry providers) and models (registry models, each
served by one deployment on its server), by their stable integer numbers.

Field names follow Bisheng's LLMServerCreateReq / LLMServerInfo /
LLMModelInfo (bisheng/llm/domain/schemas.py)."""

from __future__ import annotations

import json
from typing import Any

from google.api import httpbody_pb2
from google.protobuf import timestamp_pb2

from switchboard.registry.v1 import registry_pb2 as pb
from switchboard_common.errors import R, SwitchboardError
from switchboard_router.surfaces.bisheng_registry import registry_name

NAME = "bisheng"
# Bisheng's model_type per registry kind, and back.
MODEL_TYPES = {
    pb.MODEL_KIND_CHAT: "llm",
    pb.MODEL_KIND_EMBEDDING: "embedding",
    pb.MODEL_KIND_ASR: "asr",
    pb.MODEL_KIND_TTS: "tts",
    pb.MODEL_KIND_RERANK: "rerank",
    pb.MODEL_KIND_IMAGE: "image",
}
KINDS = {v: k for k, v in MODEL_TYPES.items()}
# Bisheng's server types that speak another wire format; every other type
# (openai, qwen, deepseek, ollama, vllm, xinference, llamacpp, ...) is an
# OpenAI-compatible upstream to Switchboard.
_PROVIDER_KINDS = {"anthropic": pb.PROVIDER_KIND_ANTHROPIC, "gemini": pb.PROVIDER_KIND_GEMINI}
# Where the Bisheng fields with no registry field are kept, in provider options.
TYPE_OPTION = "bisheng_type"
NAME_OPTION = "bisheng_name"
DESCRIPTION_OPTION = "bisheng_description"
VOICE_OPTION = "voice"


def envelope(data: Any = None, status_code: int = 200, message: str = "SUCCESS") -> dict[str, Any]:
    return {"status_code": status_code, "status_message": message, "data": data}


def answer(data: Any = None) -> httpbody_pb2.HttpBody:
    return httpbody_pb2.HttpBody(
        content_type="application/json",
        data=json.dumps(envelope(data), ensure_ascii=False, separators=(",", ":")).encode(),
    )


def error(err: SwitchboardError) -> tuple[int, dict[str, Any]]:
    """Bisheng answers errors in its envelope, the status in status_code too."""
    status = err.http_status
    message = err.message if err.reason != R.ERROR_REASON_INTERNAL else "internal error"
    return status, envelope(None, status, message)


def invalid(field: str, message: str) -> SwitchboardError:
    return SwitchboardError(R.ERROR_REASON_INVALID_REQUEST, f"{field}: {message}", param=field)


def _time(ts: timestamp_pb2.Timestamp) -> str | None:
    if not ts.seconds and not ts.nanos:
        return None
    return ts.ToDatetime().strftime("%Y-%m-%dT%H:%M:%S")


def server_type(provider: pb.Provider) -> str:
    if provider.options.get(TYPE_OPTION):
        return provider.options[TYPE_OPTION]
    names = {pb.PROVIDER_KIND_MOCK: "mock", pb.PROVIDER_KIND_OPENAI: "openai"}
    return names.get(provider.kind) or next(
        (k for k, v in _PROVIDER_KINDS.items() if v == provider.kind), "openai"
    )


def model_info(model: pb.Model, server: pb.Provider) -> dict[str, Any]:
    deployment = next((d for d in model.deployments if d.provider == server.name), None)
    return {
        "id": model.number,
        "server_id": server.number,
        "name": model.display_name or model.name,
        "description": model.description,
        "model_name": deployment.upstream_model if deployment else model.name,
        "model_type": MODEL_TYPES.get(model.kind, "llm"),
        "online": model.online if model.HasField("online") else True,
        # Bisheng's status: 0 normal (the registry holds no probe state per model).
        "status": 0,
        "remark": "",
        "config": {"switchboard_model": model.name},
        "create_time": _time(model.create_time),
        "update_time": _time(model.update_time),
    }


def server_info(server: pb.Provider, models: list[pb.Model]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if server.base_url:
        config["openai_api_base"] = server.base_url
    if server.api_key_env:
        config["api_key_env"] = server.api_key_env
    if server.options.get(VOICE_OPTION):
        config["voice"] = server.options[VOICE_OPTION]
    return {
        "id": server.number,
        "name": server.options.get(NAME_OPTION) or server.name,
        "description": server.options.get(DESCRIPTION_OPTION, ""),
        "type": server_type(server),
        "limit_flag": False,
        "limit": 0,
        "config": config,
        "models": [model_info(m, server) for m in models],
        "create_time": _time(server.create_time),
        "update_time": _time(server.update_time),
    }


def served_by(models: list[pb.Model], server: pb.Provider) -> list[pb.Model]:
    """The models with a deployment on the server, by number."""
    mine = [m for m in models if any(d.provider == server.name for d in m.deployments)]
    return sorted(mine, key=lambda m: m.number)


def _text(body: dict[str, Any], field: str, required: bool = False) -> str:
    value = body.get(field)
    if value is None or value == "":
        if required:
            raise invalid(field, "is required")
        return ""
    if not isinstance(value, str):
        raise invalid(field, "must be a string")
    return value


def integer(body: dict[str, Any], field: str) -> int:
    value = body.get(field)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise invalid(field, "must be a positive integer")
    return value


def provider_from(body: dict[str, Any], registry_name: str) -> pb.Provider:
    """A registry provider from LLMServerCreateReq. Switchboard keeps no
    secrets: the key is named by config.api_key_env, an environment variable
    of the provider service."""
    kind_name = _text(body, "type", required=True)
    config = body.get("config") or {}
    if not isinstance(config, dict):
        raise invalid("config", "must be an object")
    for key, value in config.items():
        if "key" in key.lower() and key != "api_key_env" and value:
            raise invalid(
                f"config.{key}",
                "Switchboard stores no secrets: put the key in an environment variable "
                "of the provider service and name it in config.api_key_env",
            )
    base_url = next(
        (
            str(config[k])
            for k in ("openai_api_base", "api_base_url", "host_base_url")
            if config.get(k)
        ),
        "",
    )
    return pb.Provider(
        name=registry_name,
        kind=_PROVIDER_KINDS.get(kind_name, pb.PROVIDER_KIND_OPENAI),
        base_url=base_url,
        api_key_env=str(config.get("api_key_env") or ""),
        options={
            TYPE_OPTION: kind_name,
            NAME_OPTION: _text(body, "name", required=True),
            DESCRIPTION_OPTION: _text(body, "description"),
            # The voice Bisheng's TTS clients read from the server's config.
            **({VOICE_OPTION: str(config["voice"])} if config.get("voice") else {}),
        },
    )


def model_from(entry: Any, index: int) -> tuple[pb.Model, str]:
    """A registry model (not its deployment) from LLMModelCreateReq, and the
    upstream model name its deployment calls."""
    where = f"models[{index}]"
    if not isinstance(entry, dict):
        raise invalid(where, "must be an object")
    model_type = _text(entry, "model_type", required=True)
    if model_type not in KINDS:
        raise invalid(f"{where}.model_type", f"must be one of {', '.join(sorted(KINDS))}")
    upstream = _text(entry, "model_name", required=True)
    online = entry.get("online", True)
    model = pb.Model(
        name=registry_name(upstream),
        kind=KINDS[model_type],
        display_name=_text(entry, "name") or upstream,
        description=_text(entry, "description"),
        online=bool(online),
    )
    return model, upstream
