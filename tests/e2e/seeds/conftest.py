"""One stack for the seed-API clients: a loopback upstream speaking OpenAI's
wire format behind every chat model, one speaking Gemini's behind the speech
models (Bisheng's workbench ASR and TTS), the mock provider, a client key and an
admin key. The clients themselves (test_00N_*.py) are written from the seed
documents alone, with plain httpx."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from switchboard_stack.harness import Stack, running_stack
from tests.e2e.seeds.keys import ADMIN_KEY, CLIENT_KEY, GEMINI_KEY, LIMITED_KEY, PROVIDER_KEY
from tests.support.gemini_upstream import GeminiUpstream
from tests.support.openai_upstream import OpenAIUpstream, run_in_thread

# Speech models on the Gemini loopback: (name, kind, upstream model, pricing).
SPEECH_MODELS = [
    ("workbench-asr", "asr", "gemini-2.5-flash", {"per_audio_second": 0.0001}),
    ("workbench-tts", "tts", "gemini-2.5-flash-preview-tts", {"per_1k_characters": 0.015}),
]


@pytest.fixture(scope="package")
def upstream() -> Iterator[OpenAIUpstream]:
    with run_in_thread(OpenAIUpstream(api_key=PROVIDER_KEY)) as server:
        yield server


@pytest.fixture(scope="package")
def gemini() -> Iterator[GeminiUpstream]:
    with run_in_thread(GeminiUpstream(api_key=GEMINI_KEY)) as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh_upstream(upstream: OpenAIUpstream) -> None:
    upstream.reset()


def gemini_provider(gemini: GeminiUpstream) -> dict[str, object]:
    return {
        "name": "gemini",
        "kind": "gemini",
        "base_url": gemini.base_url,
        "api_key_env": "SEEDS_GEMINI_KEY",
        "timeout_s": 5,
    }


def speech_models() -> list[dict[str, object]]:
    return [
        {
            "name": name,
            "kind": kind,
            "pricing": pricing,
            "deployments": [{"provider": "gemini", "model": upstream_model}],
        }
        for name, kind, upstream_model, pricing in SPEECH_MODELS
    ]


def _chat(name: str, provider: str, upstream_model: str, **extra: object) -> dict[str, object]:
    return {
        "name": name,
        "deployments": [{"provider": provider, "model": upstream_model}],
        **extra,
    }


@pytest.fixture(scope="package")
def stack(
    upstream: OpenAIUpstream, gemini: GeminiUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    config = {
        "providers": [
            {
                "name": "loopback",
                "kind": "openai",
                "base_url": upstream.base_url,
                "api_key_env": "SEEDS_PROVIDER_KEY",
                "timeout_s": 2,
            },
            {"name": "mock", "kind": "mock"},
            gemini_provider(gemini),
        ],
        "models": [
            _chat(
                "qwen-turbo",
                "loopback",
                "qwen-turbo-up",
                display_name="通义千问-Turbo",
                description="通义千问超大规模语言模型,加速响应版本",
                tags=["fast", "Qwen"],
                icon_url="https://example.com/qwen-turbo.png",
                keyword="文本生成",
                release_date="2025-01-01",
                featured=True,
                capabilities=["vision"],
                context_window=32768,
                max_output_tokens=8192,
                pricing={"input_per_1k": 0.5, "output_per_1k": 1.5, "currency": "USD"},
            ),
            _chat(
                "qwen-plus",
                "loopback",
                "qwen-plus-up",
                display_name="通义千问-Plus",
                tags=["balanced", "Qwen"],
                pricing={"input_per_1k": 0.25, "output_per_1k": 0.75, "currency": "USD"},
            ),
            _chat("mock-chat", "mock", "mock-echo"),
            {
                "name": "embed",
                "kind": "embedding",
                "deployments": [{"provider": "loopback", "model": "emb-up"}],
            },
            *speech_models(),
        ],
        "keys": [
            {"name": "seeds", "key_env": "SEEDS_CLIENT_KEY"},
            {"name": "limited", "key_env": "SEEDS_LIMITED_KEY", "rpm": 1},
        ],
        "defaults": {"chat": "qwen-turbo", "vision": "qwen-turbo"},
    }
    env = {
        "SEEDS_PROVIDER_KEY": PROVIDER_KEY,
        "SEEDS_GEMINI_KEY": GEMINI_KEY,
        "SEEDS_CLIENT_KEY": CLIENT_KEY,
        "SEEDS_LIMITED_KEY": LIMITED_KEY,
        "SWITCHBOARD_ADMIN_KEY": ADMIN_KEY,
        # Failures are scripted on purpose, many times in a row: no breaker may open
        # (neither on failures in a row nor on the error rate), or later tests flake.
        "SWITCHBOARD_BREAKER_CONSECUTIVE_FAILURES": "1000",
        "SWITCHBOARD_BREAKER_MIN_REQUESTS": "1000000",
        "SWITCHBOARD_MAX_ATTEMPTS": "1",
    }
    with running_stack(config, tmp_path_factory.mktemp("seeds"), env) as running:
        yield running
