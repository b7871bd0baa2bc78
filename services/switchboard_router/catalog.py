"""Which models exist, who may call them, and the order to try deployments in.

A catalog is immutable and built from one registry snapshot; the router swaps
in a new one when the registry changes, and requests in flight keep theirs.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from switchboard.common.v1 import openai_pb2
from switchboard_common.config import (
    DeploymentConfig,
    KeyConfig,
    LoadBalancingConfig,
    ModelConfig,
    ModelUse,
    ProviderConfig,
    SwitchboardConfig,
)
from switchboard_common.errors import R, SwitchboardError

# Picks a group's model (weighted_random); not security.
_RNG = random.Random()  # noqa: S311


@dataclass(frozen=True)
class Candidate:
    model: ModelConfig
    deployment: DeploymentConfig
    provider: ProviderConfig
    # The registry version it was planned at.
    version: int = 0
    # Set when this is a fallback model's deployment: the model that was asked for.
    fallback_from: str = ""
    # Why the plan departs from the model's strategy (GPU state), if it does.
    route_notes: tuple[str, ...] = ()
    # Its answer to a stream call was one whole answer, sent as SSE.
    pseudo_stream: bool = False

    @property
    def deployment_id(self) -> str:
        return self.deployment.resolved_id(self.model.name)

    @property
    def weight(self) -> int:
        return self.deployment.weight

    @property
    def priority(self) -> int:
        return self.deployment.priority

    @property
    def unit_cost(self) -> float:
        """Price per 1K input plus 1K output tokens: what the cost strategy compares."""
        pricing = self.deployment.pricing or self.model.pricing
        return pricing.input_per_1k + pricing.output_per_1k


class Catalog:
    def __init__(self, config: SwitchboardConfig, created: int, version: int = 0):
        self.config = config
        self.version = version
        self.created = created
        self._by_name: dict[str, ModelConfig] = {}
        for model in config.models:
            self._by_name[model.name] = model
            for alias in model.aliases:
                self._by_name[alias] = model
        self._providers = {p.name: p for p in config.providers}
        self._group = config.load_balancing
        # Smooth weighted round robin over the group's models (nginx's): running scores.
        self._scores: dict[str, float] = {}

    def resolve(
        self, requested: str, key: KeyConfig | None, kind: str | None = None
    ) -> ModelConfig:
        if self._group is not None and requested == self._group.group:
            requested = self._member(self._group)
        model = self._by_name.get(requested)
        # Echoed in errors (and so in trailers): never at any length.
        name = requested if len(requested) <= 64 else requested[:64] + "…"
        if model is None:
            raise SwitchboardError(
                R.ERROR_REASON_MODEL_NOT_FOUND,
                f"The model '{name}' does not exist or you do not have access to it.",
                param="model",
            )
        if key is not None and key.models is not None and model.name not in key.models:
            raise SwitchboardError(
                R.ERROR_REASON_MODEL_NOT_ALLOWED,
                f"This API key is not allowed to use the model '{name}'.",
                param="model",
            )
        if not model.online:
            raise SwitchboardError(
                R.ERROR_REASON_MODEL_NOT_FOUND,
                f"The model '{name}' is offline: an administrator switched it off.",
                param="model",
            )
        if kind is not None and model.kind != kind:
            raise SwitchboardError(
                R.ERROR_REASON_INVALID_REQUEST,
                f"The model '{name}' is a {model.kind} model and cannot serve this endpoint.",
                param="model",
            )
        return model

    def _member(self, group: LoadBalancingConfig) -> str:
        """The group's model for this call, in proportion to the weights."""
        weights = {name: w for name, w in group.weights.items() if w > 0}
        if not weights:
            raise SwitchboardError(
                R.ERROR_REASON_MODEL_NOT_FOUND,
                f"The model group '{group.group}' has no models with a weight above 0.",
                param="model",
            )
        if group.strategy == "weighted_random":
            return _RNG.choices(list(weights), weights=list(weights.values()))[0]
        total = sum(weights.values())
        for name, weight in weights.items():
            self._scores[name] = self._scores.get(name, 0.0) + weight
        chosen = max(weights, key=lambda name: self._scores[name])
        self._scores[chosen] -= total
        return chosen

    def find(self, name: str) -> ModelConfig | None:
        """The model with this name or alias, if any."""
        return self._by_name.get(name)

    def active_model(self, use: ModelUse) -> str | None:
        """The registry's default model for a use (the "active" model of seed API
        003), when it is set and online."""
        name = self.config.defaults.get(use)
        model = self._by_name.get(name) if name else None
        return model.name if model is not None and model.online else None

    def default_vision_model(self) -> str:
        active = self.active_model("vision")
        if active is not None:
            return active
        for model in self.config.models:
            if model.online and model.kind == "chat" and "vision" in model.capabilities:
                return model.name
        raise SwitchboardError(
            R.ERROR_REASON_INVALID_REQUEST,
            "no default vision model is configured: send a 'model' field, or give a chat "
            "model `capabilities: [vision]` in the config",
            param="model",
        )

    def with_fallbacks(self, model: ModelConfig) -> list[ModelConfig]:
        """The model, then its online fallbacks in order."""
        chain = [model, *(self._by_name[f] for f in model.fallbacks if f in self._by_name)]
        return [m for m in chain if m.online]

    def candidates(self, model: ModelConfig, fallback_from: str = "") -> list[Candidate]:
        return [
            Candidate(model, d, self._providers[d.provider], self.version, fallback_from)
            for d in model.deployments
            if d.provider in self._providers
        ]

    def usable(self, key: KeyConfig | None) -> list[ModelConfig]:
        """The online models the key may use."""
        return [
            m
            for m in self.config.models
            if m.online and (key is None or key.models is None or m.name in key.models)
        ]

    def visible(self, key: KeyConfig | None) -> list[openai_pb2.Model]:
        return [self.describe(m) for m in self.usable(key)]

    def describe(self, model: ModelConfig, details: bool = False) -> openai_pb2.Model:
        owner = self._providers.get(model.deployments[0].provider) if model.deployments else None
        if owner is None:
            owned_by = "switchboard"
        else:
            owned_by = "switchboard-mock" if owner.kind == "mock" else owner.name
        described = openai_pb2.Model(
            id=model.name, object="model", created=self.created, owned_by=owned_by
        )
        if details:
            described.switchboard.CopyFrom(
                openai_pb2.ModelDetails(
                    kind=model.kind,
                    display_name=model.display_name,
                    description=model.description,
                    aliases=model.aliases,
                    tags=model.tags,
                    featured=model.featured,
                    capabilities=model.capabilities,
                    context_window=model.context_window,
                    max_output_tokens=model.max_output_tokens,
                    input_per_1k=model.pricing.input_per_1k,
                    output_per_1k=model.pricing.output_per_1k,
                    cached_input_per_1k=model.pricing.cached_input_per_1k,
                    currency=model.pricing.currency,
                    fallbacks=model.fallbacks,
                )
            )
        return described
