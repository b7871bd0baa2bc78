"""The router's settings (its SWITCHBOARD_* rows in the README), read once at
start by setup() and passed down: no router module reads the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from switchboard_common import env as values
from switchboard_common.env import SettingsError
from switchboard_common.gpu_health import DEFAULT_SATURATED_PERCENT
from switchboard_router.breaker import BreakerConfig

__all__ = ["RouterSettings", "SettingsError"]

DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_DURABLE_WAIT_S = 1.0
DEFAULT_TTS_CACHE_TTL_S = 24 * 3600
DEFAULT_TTS_URL_TTL_S = 3600
DEFAULT_USAGE_BUFFER = 100_000


def breaker_from_env(env: Mapping[str, str]) -> BreakerConfig:
    base = BreakerConfig()
    return BreakerConfig(
        consecutive_failures=values.integer(
            env, "SWITCHBOARD_BREAKER_CONSECUTIVE_FAILURES", base.consecutive_failures, minimum=1
        ),
        error_rate=values.number(
            env, "SWITCHBOARD_BREAKER_ERROR_RATE", base.error_rate, above=0, maximum=1
        ),
        min_requests=values.integer(
            env, "SWITCHBOARD_BREAKER_MIN_REQUESTS", base.min_requests, minimum=1
        ),
        window_s=values.number(env, "SWITCHBOARD_BREAKER_WINDOW_S", base.window_s, above=0),
        cooldown_s=values.number(env, "SWITCHBOARD_BREAKER_COOLDOWN_S", base.cooldown_s, minimum=0),
        half_open_probes=values.integer(
            env, "SWITCHBOARD_BREAKER_HALF_OPEN_PROBES", base.half_open_probes, minimum=1
        ),
    )


@dataclass(frozen=True)
class RouterSettings:
    # Upstream attempts per request, fallbacks and retries included.
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    # The longest a reply waits for its usage record to be durable while the
    # usage service is up (normally a millisecond or two: a group-committed fsync).
    usage_durable_wait_s: float = DEFAULT_DURABLE_WAIT_S
    # Unacked usage records held while the usage service is away; past it the
    # router fails closed.
    usage_buffer: int = DEFAULT_USAGE_BUFFER
    # How long synthesised speech stays cached, and how long a Bisheng TTS link plays.
    tts_cache_ttl_s: int = DEFAULT_TTS_CACHE_TTL_S
    tts_url_ttl_s: int = DEFAULT_TTS_URL_TTL_S
    # The environment's breaker; the registry's load-balancing setting tunes it live.
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    # A fixed seed makes weighted choices reproducible (tests, benchmarks).
    routing_seed: int | None = None
    gpu_saturated_percent: float = DEFAULT_SATURATED_PERCENT
    # When Redis errors or hangs: admit (True) or refuse with 503 (False).
    limits_fail_open: bool = True
    # The gpu services to watch; empty means the one at the gpu service's address.
    gpu_addresses: tuple[str, ...] = ()
    # Inference Manager's token login (seed 004): username:role:scrypt lines;
    # None turns it off. The file is read per login, so edits apply at once.
    accounts_file: Path | None = None
    # Where the provider runs: "service" (its own, over gRPC) or "router" (in
    # each router process: one Python gRPC hop fewer; embedded_provider.py).
    provider_placement: str = "service"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RouterSettings:
        env = os.environ if env is None else env
        accounts = values.text(env, "SWITCHBOARD_ACCOUNTS_FILE")
        return cls(
            max_attempts=values.integer(
                env, "SWITCHBOARD_MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS, minimum=1
            ),
            usage_durable_wait_s=values.number(
                env, "SWITCHBOARD_USAGE_DURABLE_WAIT_S", DEFAULT_DURABLE_WAIT_S, minimum=0
            ),
            usage_buffer=values.integer(
                env, "SWITCHBOARD_USAGE_BUFFER", DEFAULT_USAGE_BUFFER, minimum=1
            ),
            tts_cache_ttl_s=values.integer(
                env, "SWITCHBOARD_TTS_CACHE_TTL_S", DEFAULT_TTS_CACHE_TTL_S, minimum=1
            ),
            tts_url_ttl_s=values.integer(
                env, "SWITCHBOARD_TTS_URL_TTL_S", DEFAULT_TTS_URL_TTL_S, minimum=1
            ),
            breaker=breaker_from_env(env),
            routing_seed=values.optional_integer(env, "SWITCHBOARD_ROUTING_SEED"),
            gpu_saturated_percent=values.number(
                env,
                "SWITCHBOARD_GPU_SATURATED_PERCENT",
                DEFAULT_SATURATED_PERCENT,
                above=0,
                maximum=100,
            ),
            limits_fail_open=values.choice(
                env, "SWITCHBOARD_LIMITS_ON_REDIS_ERROR", "open", ("open", "closed")
            )
            == "open",
            gpu_addresses=values.addresses(env, "SWITCHBOARD_GPU_ADDRS"),
            accounts_file=Path(accounts) if accounts else None,
            provider_placement=values.choice(
                env, "SWITCHBOARD_PROVIDER_PLACEMENT", "service", ("service", "router")
            ),
        )
