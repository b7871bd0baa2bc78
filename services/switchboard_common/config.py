"""The declarative config file (SWITCHBOARD_CONFIG): providers, models, keys.

Validation happens once at load, so a typo fails start-up with the field's path
instead of surfacing as a routing error at request time. Secrets are never in
the file: providers and keys name environment variables.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, Self

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    model_validator,
)

# Limits and sizes travel as uint32 in the registry's messages.
UINT32_MAX = 2**32 - 1
ProviderKind = Literal["openai", "gemini", "anthropic", "mock"]
Strategy = Literal[
    "weighted_random", "round_robin", "priority", "least_latency", "least_outstanding", "cost"
]
# chat and vision: the "active" model of calls that name none (seed API 003).
# The kinds' own uses (embedding, asr, tts, rerank, image): the default of calls
# of that kind that name no model.
ModelUse = Literal[
    "knowledge_base",
    "assistant",
    "evaluation",
    "workflow",
    "chat",
    "vision",
    "embedding",
    "asr",
    "tts",
    "rerank",
    "image",
]
# What a model does; the media kinds are accounted in their own units (UsageRecord).
ModelKind = Literal["chat", "embedding", "asr", "tts", "rerank", "image"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProviderConfig(_Strict):
    name: str = Field(min_length=1)
    kind: ProviderKind
    base_url: str = ""
    api_key_env: str | None = None
    timeout_s: float = Field(default=60.0, gt=0)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    # Streams: the longest wait for the first event, and between events; both
    # default to timeout_s. A non-streaming call waits timeout_s for its answer.
    first_token_timeout_s: float | None = Field(default=None, gt=0)
    idle_timeout_s: float | None = Field(default=None, gt=0)
    # Upstream quirks (e.g. dialect: dashscope); adapters read what they know.
    options: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _base_url_for_http_kinds(self) -> Self:
        # gemini and anthropic may omit it: their SDK's default endpoint is used.
        if self.kind == "openai" and not self.base_url:
            raise ValueError("base_url is required for kind 'openai'")
        return self

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None


class PricingConfig(_Strict):
    input_per_1k: float = Field(default=0.0, ge=0)
    output_per_1k: float = Field(default=0.0, ge=0)
    cached_input_per_1k: float = Field(default=0.0, ge=0)
    currency: str = "USD"
    # Input written into a prompt cache; 0 means input_per_1k.
    cache_write_input_per_1k: float = Field(default=0.0, ge=0)
    # The media kinds' units: seconds of audio (asr), characters (tts),
    # search units (rerank), images (image).
    per_audio_second: float = Field(default=0.0, ge=0)
    per_1k_characters: float = Field(default=0.0, ge=0)
    per_search_unit: float = Field(default=0.0, ge=0)
    per_image: float = Field(default=0.0, ge=0)


class DeploymentConfig(_Strict):
    provider: str
    model: str = Field(min_length=1)
    # Defaults to "<model>.<provider>.<upstream model>" (see deployment_id).
    id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
    weight: int = Field(default=1, ge=0)
    priority: int = 0
    rpm: int | None = Field(default=None, ge=0, le=UINT32_MAX)
    tpm: int | None = Field(default=None, ge=0, le=UINT32_MAX)
    enabled: bool = True
    # A self-hosted deployment's GPU, for GPU-aware routing.
    gpu_node: str = ""
    gpu_uuid: str = ""
    # Prices for this deployment when they differ from the model's (cost strategy, usage).
    pricing: PricingConfig | None = None
    # False: this upstream cannot stream; stream calls get its whole answer as SSE.
    streaming: bool = True

    def resolved_id(self, model: str) -> str:
        return self.id or deployment_id(model, self.provider, self.model)


def deployment_id(model: str, provider: str, upstream: str) -> str:
    """A readable, stable id for a deployment that was not given one; safe in a URL path."""
    raw = f"{model}.{provider}.{upstream}"
    safe = "".join(c if c.isalnum() or c in "._:@-" else "-" for c in raw)
    if len(safe) > 120 or safe != raw:
        # Sanitising or truncating could make two ids alike: add a digest of the original.
        safe = f"{safe[:110]}-{hashlib.sha256(raw.encode()).hexdigest()[:8]}"
    return safe


class DefaultParameters(_Strict):
    """Sampling parameters a model's calls get when they leave them out."""

    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, gt=0, le=UINT32_MAX)
    top_p: float | None = Field(default=None, gt=0, le=1)


class ModelConfig(_Strict):
    name: str = Field(min_length=1)
    kind: ModelKind = "chat"
    aliases: list[str] = Field(default_factory=list)
    # The file requires at least one; a model created through the API may have none yet.
    deployments: list[DeploymentConfig] = Field(default_factory=list)
    fallbacks: list[str] = Field(default_factory=list)
    pricing: PricingConfig = Field(default_factory=PricingConfig)
    online: bool = True
    description: str = ""
    display_name: str = ""
    tags: list[str] = Field(default_factory=list)
    featured: bool = False
    context_window: int = Field(default=0, ge=0)
    max_output_tokens: int = Field(default=0, ge=0)
    strategy: Strategy = "weighted_random"
    # e.g. vision (accepts images; the vision route's default is the first such model).
    capabilities: list[str] = Field(default_factory=list)
    # Requests and tokens per minute for the model across all keys (all replicas with REDIS_URL).
    rpm: int | None = Field(default=None, ge=0, le=UINT32_MAX)
    tpm: int | None = Field(default=None, ge=0, le=UINT32_MAX)
    # Spend limit across all keys, in the pricing currency; None means no budget.
    budget: float | None = Field(default=None, ge=0)
    # Runs on a self-hosted engine (registry Model.engine), whose deployment exists
    # only while the engine runs: with none, calls get 503 MODEL_NOT_RUNNING.
    self_hosted: bool = False
    # Catalogue details some client APIs list (seed API 001): an icon's URL, a
    # keyword, the release date.
    icon_url: str = Field(default="", max_length=2048, pattern=r"^(https?://\S+)?$")
    keyword: str = Field(default="", max_length=256)
    release_date: str = Field(default="", pattern=r"^(\d{4}-\d{2}-\d{2})?$")
    default_parameters: DefaultParameters = Field(default_factory=DefaultParameters)
    # False: no deployment can stream; stream calls get the whole answer as SSE
    # (pseudo-streaming, said in the x-switchboard-pseudo-stream header).
    streaming: bool = True
    # Set by the registry only: the model's stable integer id and its timestamps.
    number: int = Field(default=0, ge=0)
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None

    @model_validator(mode="after")
    def _registry_fields(self, info: ValidationInfo) -> Self:
        if (info.context or {}).get("source") != "registry":
            for name in ("number", "created_at", "updated_at"):
                if getattr(self, name):
                    raise ValueError(f"{name}: is set by the registry, not the config file")
        return self


class KeyConfig(_Strict):
    name: str = Field(min_length=1)
    key_env: str | None = None
    key_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    # None means every model.
    models: list[str] | None = None
    rpm: int | None = Field(default=None, ge=0, le=UINT32_MAX)
    tpm: int | None = Field(default=None, ge=0, le=UINT32_MAX)
    # Spend limit in the models' pricing currency; None means no budget.
    budget: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _one_secret_source(self) -> Self:
        if (self.key_env is None) == (self.key_sha256 is None):
            raise ValueError("exactly one of key_env or key_sha256 is required")
        return self

    def secret_sha256(self) -> str | None:
        """The hash to compare presented keys with; None when key_env is unset."""
        if self.key_sha256 is not None:
            return self.key_sha256
        secret = os.environ.get(self.key_env or "")
        return hashlib.sha256(secret.encode()).hexdigest() if secret else None


class LoadBalancingConfig(_Strict):
    """A model group (calls for `group` spread over `weights`' models) and the
    breakers' thresholds. Set through the registry's admin API, not the file."""

    group: str = Field(min_length=1)
    strategy: Literal["weighted_random", "round_robin"] = "weighted_random"
    weights: dict[str, float] = Field(default_factory=dict)
    failure_threshold: int | None = Field(default=None, ge=1)
    recovery_threshold: int | None = Field(default=None, ge=1)
    # Seconds between active health probes of every deployment; None: no probes.
    health_check_interval_s: int | None = Field(default=None, ge=1)


class SwitchboardConfig(_Strict):
    providers: list[ProviderConfig] = Field(default_factory=list)
    models: list[ModelConfig] = Field(default_factory=list)
    keys: list[KeyConfig] | None = None
    # The model to use for each purpose; applied only where the registry has none yet.
    defaults: dict[ModelUse, str] = Field(default_factory=dict)
    load_balancing: LoadBalancingConfig | None = None

    @model_validator(mode="after")
    def _references_resolve(self, info: ValidationInfo) -> Self:
        _unique("providers", [p.name for p in self.providers])
        names = [m.name for m in self.models]
        _unique("models", names + [a for m in self.models for a in m.aliases])
        providers = {p.name for p in self.providers}
        from_file = (info.context or {}).get("source") != "registry"
        for i, model in enumerate(self.models):
            if from_file and not model.deployments:
                raise ValueError(f"models[{i}].deployments: a model needs at least one")
            _unique(
                f"models[{i}].deployments",
                [d.resolved_id(model.name) for d in model.deployments],
            )
            for j, dep in enumerate(model.deployments):
                if dep.provider not in providers:
                    raise ValueError(
                        f"models[{i}].deployments[{j}].provider: unknown provider {dep.provider!r}"
                    )
            kinds = {m.name: m.kind for m in self.models}
            for fb in model.fallbacks:
                if fb not in names:
                    raise ValueError(f"models[{i}].fallbacks: unknown model {fb!r}")
                if fb == model.name:
                    raise ValueError(f"models[{i}].fallbacks: a model cannot fall back to itself")
                if kinds[fb] != model.kind:
                    raise ValueError(
                        f"models[{i}].fallbacks: {fb!r} is a {kinds[fb]} model, not {model.kind}"
                    )
        if self.keys is not None:
            _unique("keys", [k.name for k in self.keys])
            for i, key in enumerate(self.keys):
                for m in key.models or []:
                    if m not in names:
                        raise ValueError(f"keys[{i}].models: unknown model {m!r}")
        for use, name in self.defaults.items():
            if name not in names:
                raise ValueError(f"defaults.{use}: unknown model {name!r}")
        if self.load_balancing is not None and from_file:
            raise ValueError(
                "load_balancing: set it through the admin API (PUT /v1/admin/load-balancing)"
            )
        return self

    def provider(self, name: str) -> ProviderConfig | None:
        return next((p for p in self.providers if p.name == name), None)


def _unique(section: str, names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"{section}: duplicate name {name!r}")
        seen.add(name)


class ConfigError(Exception):
    """The config file is missing, unreadable or invalid; the message says where."""


def parse_config(data: Mapping[str, object] | None, source: str = "<config>") -> SwitchboardConfig:
    try:
        return SwitchboardConfig.model_validate(data or {}, context={"source": "file"})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"{source}: {problems}") from None


def load_config(path: Path) -> SwitchboardConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return parse_config(data, str(path))
