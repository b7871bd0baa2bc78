"""The config file as a registry Snapshot (version 1: nothing has changed it)."""

from __future__ import annotations

from switchboard.registry.v1 import registry_pb2 as pb
from switchboard_common.config import SwitchboardConfig

_PROVIDER_KINDS = {
    "openai": pb.PROVIDER_KIND_OPENAI,
    "gemini": pb.PROVIDER_KIND_GEMINI,
    "mock": pb.PROVIDER_KIND_MOCK,
}
_MODEL_KINDS = {"chat": pb.MODEL_KIND_CHAT, "embedding": pb.MODEL_KIND_EMBEDDING}


def from_config(config: SwitchboardConfig, version: int = 1) -> pb.Snapshot:
    snapshot = pb.Snapshot(version=version)
    for p in config.providers:
        snapshot.providers.add(
            name=p.name,
            kind=_PROVIDER_KINDS[p.kind],
            base_url=p.base_url,
            api_key_env=p.api_key_env or "",
            timeout_s=p.timeout_s,
            connect_timeout_s=p.connect_timeout_s,
            options=p.options,
        )
    for m in config.models:
        model = snapshot.models.add(
            name=m.name,
            aliases=m.aliases,
            kind=_MODEL_KINDS[m.kind],
            description=m.description,
            online=m.online,
            fallbacks=m.fallbacks,
            pricing=pb.Pricing(
                input_per_1k=m.pricing.input_per_1k,
                output_per_1k=m.pricing.output_per_1k,
                cached_input_per_1k=m.pricing.cached_input_per_1k,
                currency=m.pricing.currency,
            ),
        )
        for d in m.deployments:
            model.deployments.add(
                id=f"{m.name}/{d.provider}/{d.model}",
                model=m.name,
                provider=d.provider,
                upstream_model=d.model,
                weight=d.weight,
                priority=d.priority,
                enabled=True,
            )
    for k in config.keys or []:
        snapshot.keys.add(name=k.name, models=k.models or [], rpm=k.rpm or 0, tpm=k.tpm or 0)
    return snapshot
