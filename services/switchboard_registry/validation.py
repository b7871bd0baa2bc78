"""Checks on entities written through the API. Each error names the field, as
`<entity>.<field>`, so a client can point at what to fix. Cross-entity rules
(a deployment's provider exists, a fallback is the same kind) live in the store,
which sees the database in the same transaction."""

from __future__ import annotations

import datetime as dt
import re
from urllib.parse import urlsplit

from switchboard.registry.v1 import engine_config_pb2 as engine_pb
from switchboard.registry.v1 import registry_pb2 as pb
from switchboard_common.errors import R, SwitchboardError

# No '/': names are URL path segments under /v1/admin/.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
# Aliases are only ever matched against a request's `model`, so they may hold '/'.
ALIAS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}$")
ENV_VAR = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
CURRENCY = re.compile(r"^[A-Z]{3}$")
# An NVML index or UUID ("0", "GPU-8f3c…", "MIG-…").
GPU = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,95}$")
MAX_LIST = 64
NOTIFICATION_CHANNELS = ("email", "webhook")
MAX_TEXT = 4096


def invalid(field: str, message: str) -> SwitchboardError:
    return SwitchboardError(R.ERROR_REASON_INVALID_REQUEST, f"{field}: {message}", param=field)


def check_name(field: str, value: str, pattern: re.Pattern[str] = NAME) -> None:
    if not value:
        raise invalid(field, "is required")
    if not pattern.match(value):
        raise invalid(
            field,
            f"{value[:64]!r} is not a valid name (letters, digits and . _ : @ -"
            f"{' /' if pattern is ALIAS else ''}, at most 128 characters, starting with a "
            "letter or digit)",
        )


def _check_list(field: str, values: list[str], pattern: re.Pattern[str]) -> None:
    if len(values) > MAX_LIST:
        raise invalid(field, f"at most {MAX_LIST} entries")
    if len(set(values)) != len(values):
        raise invalid(field, "entries must be unique")
    for i, value in enumerate(values):
        check_name(f"{field}[{i}]", value, pattern)


_URL = re.compile(r"^https?://\S+$")


def _valid_date(value: str) -> bool:
    try:
        dt.date.fromisoformat(value)
    except ValueError:
        return False
    return len(value) == 10


def _check_defaults(d: pb.DefaultParameters) -> None:
    field = "model.default_parameters"
    if d.HasField("temperature") and not 0 <= d.temperature <= 2:
        raise invalid(f"{field}.temperature", "must be between 0 and 2")
    if d.HasField("max_tokens") and d.max_tokens <= 0:
        raise invalid(f"{field}.max_tokens", "must be greater than 0")
    if d.HasField("top_p") and not 0 < d.top_p <= 1:
        raise invalid(f"{field}.top_p", "must be greater than 0 and at most 1")


def _check_text(field: str, value: str) -> None:
    if len(value) > MAX_TEXT:
        raise invalid(field, f"at most {MAX_TEXT} characters")


def _check_seconds(field: str, value: float, *, required: bool = False) -> None:
    if value < 0 or value != value or value > 86_400:
        raise invalid(field, "must be between 0 and 86400 seconds")
    if required and value == 0:
        raise invalid(field, "must be greater than 0")


def _check_pricing(field: str, pricing: pb.Pricing) -> None:
    for name in (
        "input_per_1k",
        "output_per_1k",
        "cached_input_per_1k",
        "cache_write_input_per_1k",
        "per_audio_second",
        "per_1k_characters",
        "per_search_unit",
        "per_image",
    ):
        value = getattr(pricing, name)
        if value < 0 or value != value:
            raise invalid(f"{field}.{name}", "must be 0 or more")
    if pricing.currency and not CURRENCY.match(pricing.currency):
        raise invalid(f"{field}.currency", "must be an ISO 4217 code such as USD")


def provider(p: pb.Provider) -> None:
    check_name("provider.name", p.name)
    if p.kind == pb.PROVIDER_KIND_UNSPECIFIED:
        raise invalid("provider.kind", "is required: one of openai, gemini, anthropic, mock")
    if p.base_url:
        parts = urlsplit(p.base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise invalid("provider.base_url", "must be an http:// or https:// URL")
        if parts.username or parts.password:
            raise invalid(
                "provider.base_url", "must not carry credentials; name them in api_key_env"
            )
    elif p.kind == pb.PROVIDER_KIND_OPENAI:
        raise invalid("provider.base_url", "is required for kind openai")
    if p.api_key_env and not ENV_VAR.match(p.api_key_env):
        raise invalid(
            "provider.api_key_env", "must be the NAME of an environment variable, not a secret"
        )
    _check_seconds("provider.timeout_s", p.timeout_s, required=True)
    _check_seconds("provider.connect_timeout_s", p.connect_timeout_s, required=True)
    _check_seconds("provider.first_token_timeout_s", p.first_token_timeout_s)
    _check_seconds("provider.idle_timeout_s", p.idle_timeout_s)
    if len(p.options) > MAX_LIST:
        raise invalid("provider.options", f"at most {MAX_LIST} entries")


def model(m: pb.Model) -> None:
    check_name("model.name", m.name)
    _check_list("model.aliases", list(m.aliases), ALIAS)
    if m.name in m.aliases:
        raise invalid("model.aliases", "must not repeat the model's name")
    if m.kind == pb.MODEL_KIND_UNSPECIFIED:
        raise invalid("model.kind", "is required: chat, embedding, asr, tts, rerank or image")
    _check_text("model.display_name", m.display_name)
    _check_text("model.description", m.description)
    _check_text("model.keyword", m.keyword)
    if m.icon_url and (len(m.icon_url) > 2048 or not _URL.match(m.icon_url)):
        raise invalid("model.icon_url", "must be an http(s) URL of at most 2048 characters")
    if m.release_date and not _valid_date(m.release_date):
        raise invalid("model.release_date", "must be a date, YYYY-MM-DD")
    _check_defaults(m.default_parameters)
    _check_list("model.tags", list(m.tags), TAG)
    _check_list("model.capabilities", list(m.capabilities), TAG)
    _check_list("model.fallbacks", list(m.fallbacks), NAME)
    if m.name in m.fallbacks:
        raise invalid("model.fallbacks", "a model cannot fall back to itself")
    _check_pricing("model.pricing", m.pricing)
    if m.budget < 0 or m.budget != m.budget:
        raise invalid("model.budget", "must be 0 (none) or more")
    if m.deployments:
        raise invalid("model.deployments", "is output only: create deployments separately")
    if m.HasField("engine"):
        engine(m.engine)


def engine(e: engine_pb.EngineConfig) -> None:
    if e.framework == engine_pb.ENGINE_FRAMEWORK_UNSPECIFIED:
        raise invalid("model.engine.framework", "is required: llama_cpp or vllm")
    if not e.model_path:
        raise invalid("model.engine.model_path", "is required")
    _check_text("model.engine.model_path", e.model_path)
    if len(e.extra_args) > MAX_LIST:
        raise invalid("model.engine.extra_args", f"at most {MAX_LIST} entries")
    for i, arg in enumerate(e.extra_args):
        _check_text(f"model.engine.extra_args[{i}]", arg)
    _check_list("model.engine.gpus", list(e.gpus), GPU)
    if e.node:
        check_name("model.engine.node", e.node)
    _check_seconds("model.engine.start_timeout_s", e.start_timeout_s)


def deployment(d: pb.Deployment) -> None:
    check_name("deployment.id", d.id)
    check_name("deployment.model", d.model)
    check_name("deployment.provider", d.provider)
    if not d.upstream_model:
        raise invalid("deployment.upstream_model", "is required")
    _check_text("deployment.upstream_model", d.upstream_model)
    if d.weight > 1_000_000:
        raise invalid("deployment.weight", "at most 1000000")
    if d.HasField("pricing"):
        _check_pricing("deployment.pricing", d.pricing)


def api_key(k: pb.ApiKey) -> None:
    check_name("key.name", k.name)
    _check_list("key.models", list(k.models), ALIAS)
    if k.budget < 0 or k.budget != k.budget:
        raise invalid("key.budget", "must be 0 (none) or more")


def alert_rule(r: pb.AlertRule) -> None:
    check_name("rule.name", r.name)
    check_name("rule.metric", r.metric, TAG)
    if r.comparator == pb.COMPARATOR_UNSPECIFIED:
        raise invalid("rule.comparator", "is required: greater_than or less_than")
    if r.severity == pb.SEVERITY_UNSPECIFIED:
        raise invalid("rule.severity", "is required: info, warning or critical")
    if r.threshold != r.threshold:
        raise invalid("rule.threshold", "must be a number")
    if r.duration.seconds < 0 or r.duration.seconds > 86_400:
        raise invalid("rule.duration", "must be between 0 and 86400 seconds")
    for channel in r.notification_channels:
        if channel not in NOTIFICATION_CHANNELS:
            raise invalid("rule.notification_channels", f"{channel[:64]!r} is not email or webhook")
    if len(r.display_name) > 256:
        raise invalid("rule.display_name", "at most 256 characters")
