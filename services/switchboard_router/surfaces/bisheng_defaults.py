"""The Bisheng LLM API's default-model configs, GET/POST /api/v1/llm/{use} for
knowledge, assistant, evaluation, workflow and workbench, held as the
registry's defaults per use (so calls that name no model route to them), and
the assistant's model list.

Only the model ids that name a registry use are kept; Bisheng's other fields
(prompts, tagging switches, the assistant's executor settings, the workbench's
daily-chat list) belong to its application layer: accepted and not stored."""

from __future__ import annotations

from typing import Any

from switchboard.registry.v1 import registry_pb2 as pb
from switchboard_router.surfaces.bisheng_registry import Registry
from switchboard_router.surfaces.bisheng_shapes import (
    MODEL_TYPES,
    invalid,
    served_by,
    server_info,
)

# Per Bisheng config: its field, the registry use that holds it, and whether
# the field is a bare id (int) or a workbench WSModel ({"id": "N", ...}).
FIELDS: dict[str, list[tuple[str, pb.ModelUse.ValueType, bool]]] = {
    "knowledge": [
        ("embedding_model_id", pb.MODEL_USE_EMBEDDING, False),
        ("source_model_id", pb.MODEL_USE_KNOWLEDGE_BASE, False),
    ],
    "evaluation": [("model_id", pb.MODEL_USE_EVALUATION, False)],
    "workflow": [("model_id", pb.MODEL_USE_WORKFLOW, False)],
    "workbench": [
        ("task_model", pb.MODEL_USE_CHAT, True),
        ("embedding_model", pb.MODEL_USE_EMBEDDING, True),
        ("asr_model", pb.MODEL_USE_ASR, True),
        ("tts_model", pb.MODEL_USE_TTS, True),
    ],
}
# The kind each use's model must be.
_KIND = {
    pb.MODEL_USE_EMBEDDING: pb.MODEL_KIND_EMBEDDING,
    pb.MODEL_USE_ASR: pb.MODEL_KIND_ASR,
    pb.MODEL_USE_TTS: pb.MODEL_KIND_TTS,
}
USES = ("knowledge", "assistant", "evaluation", "workflow", "workbench")
# Bisheng's AssistantLLMItem defaults for what Switchboard does not hold.
_ASSISTANT_ITEM = {
    "agent_executor_type": "ReAct",
    "knowledge_max_content": 15000,
    "knowledge_sort_index": False,
}


def _use_name(use: str) -> str:
    if use not in USES:
        raise invalid("use", f"must be one of {', '.join(USES)}")
    return use


def _chat_models(models: list[pb.Model]) -> list[pb.Model]:
    return [m for m in models if m.kind == pb.MODEL_KIND_CHAT and m.online]


async def read_config(registry: Registry, use: str) -> dict[str, Any]:
    _use_name(use)
    defaults = await registry.defaults()
    models = await registry.models()
    by_name = {m.name: m for m in models}
    if use == "assistant":
        default = defaults.get(pb.MODEL_USE_ASSISTANT, "")
        items = [
            {
                "model_id": m.number,
                **_ASSISTANT_ITEM,
                "streaming": m.streaming if m.HasField("streaming") else True,
                "default": m.name == default,
            }
            for m in _chat_models(models)
        ]
        return {"llm_list": items, "auto_llm": None}
    config: dict[str, Any] = {}
    for field, model_use, wrapped in FIELDS[use]:
        model = by_name.get(defaults.get(model_use, ""))
        if model is None:
            config[field] = None
        elif wrapped:
            name = model.display_name or model.name
            config[field] = {"key": None, "id": str(model.number), "name": name,
                             "displayName": name}  # fmt: skip
        else:
            config[field] = model.number
    return config


def _number(value: Any, field: str, wrapped: bool) -> int | None:
    if value is None:
        return None
    if wrapped:
        if not isinstance(value, dict):
            raise invalid(field, 'must be an object like {"id": "3"}')
        value = value.get("id")
        if isinstance(value, str) and value.isdigit():
            value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise invalid(field, "must name a model by its integer id")
    return value


async def write_config(registry: Registry, use: str, body: dict[str, Any]) -> dict[str, Any]:
    """Sets the defaults the body names (null or absent fields leave theirs)."""
    _use_name(use)
    models = {m.number: m for m in await registry.models()}
    wanted: list[tuple[pb.ModelUse.ValueType, int, str]] = []
    if use == "assistant":
        items = body.get("llm_list") or []
        if not isinstance(items, list):
            raise invalid("llm_list", "must be a list")
        chosen = [i for i in items if isinstance(i, dict) and i.get("default")] or items[:1]
        if chosen:
            number = _number(chosen[0].get("model_id"), "llm_list.model_id", False)
            if number is not None:
                wanted.append((pb.MODEL_USE_ASSISTANT, number, "llm_list.model_id"))
    else:
        for field, model_use, wrapped in FIELDS[use]:
            number = _number(body.get(field), field, wrapped)
            if number is not None:
                wanted.append((model_use, number, field))
    # Check every id before setting any, so a bad one changes nothing.
    for model_use, number, field in wanted:
        model = models.get(number)
        if model is None:
            raise invalid(field, f"no model with id {number}")
        kind = _KIND.get(model_use, pb.MODEL_KIND_CHAT)
        if model.kind != kind:
            raise invalid(field, f"model {number} is not a {MODEL_TYPES[kind]} model")
    for model_use, number, _ in wanted:
        await registry.set_default(model_use, models[number].name)
    return await read_config(registry, use)


async def assistant_models(registry: Registry) -> list[dict[str, Any]]:
    """The servers with their online chat models (those an assistant may use)."""
    chat = _chat_models(await registry.models())
    out = []
    for server in await registry.providers():
        mine = served_by(chat, server)
        if mine:
            out.append(server_info(server, mine))
    return out
