"""The registry's Snapshot and the services' runtime config, both ways.

The registry turns config-file entries into messages (bootstrap); routers,
providers and the usage service turn the snapshot they follow back into a
SwitchboardConfig, the one shape their code reads. `apply_change` keeps a
follower's snapshot current from the registry's change stream."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from switchboard.registry.v1 import registry_pb2 as pb
from switchboard_common.config import (
    DeploymentConfig,
    KeyConfig,
    ModelConfig,
    PricingConfig,
    ProviderConfig,
    SwitchboardConfig,
)

PROVIDER_KINDS = {
    "openai": pb.PROVIDER_KIND_OPENAI,
    "gemini": pb.PROVIDER_KIND_GEMINI,
    "anthropic": pb.PROVIDER_KIND_ANTHROPIC,
    "mock": pb.PROVIDER_KIND_MOCK,
}
MODEL_KINDS = {
    "chat": pb.MODEL_KIND_CHAT,
    "embedding": pb.MODEL_KIND_EMBEDDING,
    "asr": pb.MODEL_KIND_ASR,
    "tts": pb.MODEL_KIND_TTS,
    "rerank": pb.MODEL_KIND_RERANK,
    "image": pb.MODEL_KIND_IMAGE,
}
STRATEGIES = {
    "weighted_random": pb.ROUTING_STRATEGY_WEIGHTED_RANDOM,
    "round_robin": pb.ROUTING_STRATEGY_ROUND_ROBIN,
    "priority": pb.ROUTING_STRATEGY_PRIORITY,
    "least_latency": pb.ROUTING_STRATEGY_LEAST_LATENCY,
    "least_outstanding": pb.ROUTING_STRATEGY_LEAST_OUTSTANDING,
    "cost": pb.ROUTING_STRATEGY_COST,
}
USES = {
    "knowledge_base": pb.MODEL_USE_KNOWLEDGE_BASE,
    "assistant": pb.MODEL_USE_ASSISTANT,
    "evaluation": pb.MODEL_USE_EVALUATION,
    "workflow": pb.MODEL_USE_WORKFLOW,
    "chat": pb.MODEL_USE_CHAT,
    "vision": pb.MODEL_USE_VISION,
    "embedding": pb.MODEL_USE_EMBEDDING,
    "asr": pb.MODEL_USE_ASR,
    "tts": pb.MODEL_USE_TTS,
    "rerank": pb.MODEL_USE_RERANK,
    "image": pb.MODEL_USE_IMAGE,
}


def _inverse(mapping: Mapping[str, int]) -> dict[int, str]:
    return {v: k for k, v in mapping.items()}


_PROVIDER_NAMES = _inverse(PROVIDER_KINDS)
_MODEL_NAMES = _inverse(MODEL_KINDS)
_STRATEGY_NAMES = _inverse(STRATEGIES)
USE_NAMES = _inverse(USES)

# The fields a config-file entry sets; the rest (tags set through the API, say) survive
# when the file's entry changes and is applied again.
PROVIDER_FILE_FIELDS = (
    "kind",
    "base_url",
    "api_key_env",
    "timeout_s",
    "connect_timeout_s",
    "first_token_timeout_s",
    "idle_timeout_s",
    "options",
)
MODEL_FILE_FIELDS = (
    "aliases",
    "kind",
    "display_name",
    "description",
    "tags",
    "featured",
    "capabilities",
    "context_window",
    "max_output_tokens",
    "pricing",
    "online",
    "fallbacks",
    "strategy",
    "rpm",
    "tpm",
    "budget",
    "icon_url",
    "keyword",
    "release_date",
    "default_parameters",
    "streaming",
)
DEPLOYMENT_FILE_FIELDS = (
    "provider",
    "upstream_model",
    "weight",
    "priority",
    "rpm",
    "tpm",
    "enabled",
    "gpu_node",
    "gpu_uuid",
    "pricing",
    "streaming",
)
KEY_FILE_FIELDS = ("models", "rpm", "tpm", "budget")


def provider_message(p: ProviderConfig) -> pb.Provider:
    return pb.Provider(
        name=p.name,
        kind=PROVIDER_KINDS[p.kind],
        base_url=p.base_url,
        api_key_env=p.api_key_env or "",
        timeout_s=p.timeout_s,
        connect_timeout_s=p.connect_timeout_s,
        first_token_timeout_s=p.first_token_timeout_s or 0.0,
        idle_timeout_s=p.idle_timeout_s or 0.0,
        options=p.options,
    )


def pricing_message(p: PricingConfig) -> pb.Pricing:
    return pb.Pricing(
        input_per_1k=p.input_per_1k,
        output_per_1k=p.output_per_1k,
        cached_input_per_1k=p.cached_input_per_1k,
        cache_write_input_per_1k=p.cache_write_input_per_1k,
        currency=p.currency,
        per_audio_second=p.per_audio_second,
        per_1k_characters=p.per_1k_characters,
        per_search_unit=p.per_search_unit,
        per_image=p.per_image,
    )


def _pricing_dict(p: pb.Pricing) -> dict[str, Any]:
    return {
        "input_per_1k": p.input_per_1k,
        "output_per_1k": p.output_per_1k,
        "cached_input_per_1k": p.cached_input_per_1k,
        "cache_write_input_per_1k": p.cache_write_input_per_1k,
        "currency": p.currency or "USD",
        "per_audio_second": p.per_audio_second,
        "per_1k_characters": p.per_1k_characters,
        "per_search_unit": p.per_search_unit,
        "per_image": p.per_image,
    }


def model_message(m: ModelConfig) -> pb.Model:
    return pb.Model(
        name=m.name,
        aliases=m.aliases,
        kind=MODEL_KINDS[m.kind],
        display_name=m.display_name,
        description=m.description,
        tags=m.tags,
        featured=m.featured,
        capabilities=m.capabilities,
        context_window=m.context_window,
        max_output_tokens=m.max_output_tokens,
        pricing=pricing_message(m.pricing),
        online=m.online,
        fallbacks=m.fallbacks,
        strategy=STRATEGIES[m.strategy],
        rpm=m.rpm or 0,
        tpm=m.tpm or 0,
        budget=m.budget or 0.0,
        icon_url=m.icon_url,
        keyword=m.keyword,
        release_date=m.release_date,
        default_parameters=pb.DefaultParameters(
            **m.default_parameters.model_dump(exclude_none=True)
        ),
        streaming=m.streaming,
    )


def deployment_message(model: str, d: DeploymentConfig) -> pb.Deployment:
    return pb.Deployment(
        id=d.resolved_id(model),
        model=model,
        provider=d.provider,
        upstream_model=d.model,
        weight=d.weight,
        priority=d.priority,
        rpm=d.rpm or 0,
        tpm=d.tpm or 0,
        enabled=d.enabled,
        gpu_node=d.gpu_node,
        gpu_uuid=d.gpu_uuid,
        pricing=pricing_message(d.pricing) if d.pricing else None,
        streaming=d.streaming,
    )


def key_message(k: KeyConfig) -> pb.ApiKey:
    return pb.ApiKey(
        name=k.name, models=k.models or [], rpm=k.rpm or 0, tpm=k.tpm or 0, budget=k.budget or 0.0
    )


def _load_balancing(snapshot: pb.Snapshot) -> dict[str, Any] | None:
    if not snapshot.HasField("load_balancing"):
        return None
    lb = snapshot.load_balancing
    names = {m.name for m in snapshot.models}
    return {
        "group": lb.group,
        "strategy": _STRATEGY_NAMES.get(lb.strategy, "weighted_random"),
        # A model deleted since cannot serve (the registry refuses that; be safe anyway).
        "weights": {name: w for name, w in lb.weights.items() if name in names},
        "failure_threshold": lb.failure_threshold or None,
        "recovery_threshold": lb.recovery_threshold or None,
        "health_check_interval_s": lb.health_check_interval_s or None,
    }


def config_from_snapshot(snapshot: pb.Snapshot) -> SwitchboardConfig:
    """What a service runs with. Offline models stay (so they answer 'offline'
    rather than 'unknown'); disabled deployments and keys without a usable
    secret (revoked, or an unset environment variable) are left out."""
    credentials = {c.name: c.key_sha256 for c in snapshot.credentials}
    data = {
        "providers": [
            {
                "name": p.name,
                "kind": _PROVIDER_NAMES.get(p.kind, "openai"),
                "base_url": p.base_url,
                "api_key_env": p.api_key_env or None,
                "timeout_s": p.timeout_s or 60.0,
                "connect_timeout_s": p.connect_timeout_s or 5.0,
                "first_token_timeout_s": p.first_token_timeout_s or None,
                "idle_timeout_s": p.idle_timeout_s or None,
                "options": dict(p.options),
            }
            for p in snapshot.providers
        ],
        "models": [
            {
                "name": m.name,
                "kind": _MODEL_NAMES.get(m.kind, "chat"),
                "aliases": list(m.aliases),
                "deployments": [
                    {
                        "id": d.id,
                        "provider": d.provider,
                        "model": d.upstream_model,
                        "weight": d.weight,
                        "priority": d.priority,
                        "rpm": d.rpm or None,
                        "tpm": d.tpm or None,
                        "gpu_node": d.gpu_node,
                        "gpu_uuid": d.gpu_uuid,
                        "pricing": _pricing_dict(d.pricing) if d.HasField("pricing") else None,
                        "streaming": not d.HasField("streaming") or d.streaming,
                    }
                    for d in m.deployments
                    if d.enabled
                ],
                "fallbacks": list(m.fallbacks),
                "pricing": _pricing_dict(m.pricing),
                "online": m.online,
                "description": m.description,
                "display_name": m.display_name,
                "tags": list(m.tags),
                "featured": m.featured,
                "context_window": m.context_window,
                "max_output_tokens": m.max_output_tokens,
                "strategy": _STRATEGY_NAMES.get(m.strategy, "weighted_random"),
                "capabilities": list(m.capabilities),
                "rpm": m.rpm or None,
                "tpm": m.tpm or None,
                "budget": m.budget or None,
                "self_hosted": m.HasField("engine"),
                "icon_url": m.icon_url,
                "keyword": m.keyword,
                "release_date": m.release_date,
                "number": m.number,
                "streaming": not m.HasField("streaming") or m.streaming,
                "default_parameters": {
                    name: getattr(m.default_parameters, name)
                    for name in ("temperature", "max_tokens", "top_p")
                    if m.default_parameters.HasField(name)
                },
                "created_at": m.create_time.ToDatetime(dt.UTC)
                if m.HasField("create_time")
                else None,
                "updated_at": m.update_time.ToDatetime(dt.UTC)
                if m.HasField("update_time")
                else None,
            }
            for m in snapshot.models
        ],
        # No keys at all means an open edge (local development); once any key
        # exists (revoked ones included), every call needs a valid one.
        "keys": [
            {
                "name": k.name,
                "key_sha256": credentials[k.name],
                "models": list(k.models) or None,
                "rpm": k.rpm or None,
                "tpm": k.tpm or None,
                "budget": k.budget or None,
            }
            for k in snapshot.keys
            if k.name in credentials
        ]
        if snapshot.keys
        else None,
        "defaults": {
            USE_NAMES[d.use]: d.model
            for d in snapshot.defaults
            if d.use in USE_NAMES and any(m.name == d.model for m in snapshot.models)
        },
        "load_balancing": _load_balancing(snapshot),
    }
    return SwitchboardConfig.model_validate(data, context={"source": "registry"})


def apply_change(snapshot: pb.Snapshot, change: pb.Change, version: int) -> None:
    """Bring `snapshot` (in place) to `version` with one change."""
    upsert = change.kind == pb.Change.KIND_UPSERT
    which = change.WhichOneof("entity")
    if which == "provider":
        _put(snapshot.providers, "name", change.provider, upsert)
    elif which == "model":
        _put(snapshot.models, "name", change.model, upsert)
    elif which == "deployment":
        d = change.deployment
        for model in snapshot.models:
            if model.name == d.model:
                _put(model.deployments, "id", d, upsert)
    elif which == "key":
        _put(snapshot.keys, "name", change.key, upsert)
    elif which == "credential":
        _put(snapshot.credentials, "name", change.credential, upsert)
    elif which == "default_model":
        _put(snapshot.defaults, "use", change.default_model, upsert)
    elif which == "alert_rule":
        _put(snapshot.alert_rules, "name", change.alert_rule, upsert)
    elif which == "load_balancing":
        snapshot.load_balancing.CopyFrom(change.load_balancing)
    elif which == "service_settings":
        snapshot.service_settings.CopyFrom(change.service_settings)
    snapshot.version = version


def _put(items: Any, key: str, message: Any, upsert: bool) -> None:
    """Replace, delete or append by key, keeping the registry's order."""
    wanted = getattr(message, key)
    for i, item in enumerate(items):
        if getattr(item, key) == wanted:
            if upsert:
                item.CopyFrom(message)
            else:
                del items[i]
            return
    if upsert:
        items.add().CopyFrom(message)
