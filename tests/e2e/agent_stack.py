"""A stack for the agent API tests: one model per provider kind (an
OpenAI-compatible, a Gemini and an Anthropic loopback upstream), priced, and two
client keys."""

from __future__ import annotations

from typing import Any

from tests.conftest import GEMINI_UPSTREAM_KEY, UPSTREAM_KEY
from tests.support.anthropic_upstream import AnthropicUpstream
from tests.support.gemini_upstream import GeminiUpstream
from tests.support.openai_upstream import OpenAIUpstream

ANTHROPIC_KEY = "sk-ant-agents-e2e-only-0123456789"
KEYS = {"team-a": "sk-agents-team-a-0123456789", "team-b": "sk-agents-team-b-0123456789"}
# Model name per provider kind.
MODELS = {"openai": "gpt-agent", "gemini": "gemini-agent", "anthropic": "claude-agent"}
FALLING_BACK = "claude-falls-back"
PRICING: dict[str, Any] = {"input_per_1k": 0.5, "output_per_1k": 1.5, "cached_input_per_1k": 0.05}
WEATHER_SCHEMA: Any = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}


def config_and_env(
    openai_up: OpenAIUpstream, gemini_up: GeminiUpstream, anthropic_up: AnthropicUpstream
) -> tuple[dict[str, Any], dict[str, str]]:
    providers = [
        ("openai", "loop-openai", openai_up.base_url, "AGENTS_OPENAI_KEY"),
        ("gemini", "loop-gemini", gemini_up.base_url, "AGENTS_GEMINI_KEY"),
        ("anthropic", "loop-anthropic", anthropic_up.base_url, "AGENTS_ANTHROPIC_KEY"),
    ]
    models: list[dict[str, Any]] = [
        {
            "name": MODELS[kind],
            "deployments": [{"provider": name, "model": f"{kind}-up"}],
            "pricing": {**PRICING, "currency": "USD"},
        }
        for kind, name, _, _ in providers
    ]
    # An Anthropic model that falls back to the Gemini one.
    models.append(
        {
            "name": FALLING_BACK,
            "deployments": [{"provider": "loop-anthropic", "model": "anthropic-up"}],
            "fallbacks": [MODELS["gemini"]],
        }
    )
    config: dict[str, Any] = {
        "providers": [
            {"name": name, "kind": kind, "base_url": url, "api_key_env": env, "timeout_s": 5.0}
            for kind, name, url, env in providers
        ],
        "models": models,
        "keys": [
            {"name": name, "key_env": f"AGENTS_{name.upper().replace('-', '_')}"} for name in KEYS
        ],
    }
    env = {
        "AGENTS_OPENAI_KEY": UPSTREAM_KEY,
        "AGENTS_GEMINI_KEY": GEMINI_UPSTREAM_KEY,
        "AGENTS_ANTHROPIC_KEY": ANTHROPIC_KEY,
        **{f"AGENTS_{n.upper().replace('-', '_')}": k for n, k in KEYS.items()},
    }
    return config, env
