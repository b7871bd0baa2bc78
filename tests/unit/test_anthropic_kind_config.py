"""The anthropic kind and cache-write pricing survive the registry's round trip."""

from __future__ import annotations

from switchboard.registry.v1 import registry_pb2 as pb
from switchboard_common.config import parse_config
from switchboard_common.registry_snapshot import (
    config_from_snapshot,
    model_message,
    provider_message,
)


def test_anthropic_provider_and_cache_write_pricing_round_trip() -> None:
    config = parse_config(
        {
            "providers": [
                {"name": "claude", "kind": "anthropic", "api_key_env": "ANTHROPIC_API_KEY"}
            ],
            "models": [
                {
                    "name": "sonnet",
                    "pricing": {
                        "input_per_1k": 3.0,
                        "cached_input_per_1k": 0.3,
                        "cache_write_input_per_1k": 3.75,
                    },
                    "deployments": [{"provider": "claude", "model": "claude-sonnet-4-5"}],
                }
            ],
        }
    )
    snapshot = pb.Snapshot(
        providers=[provider_message(p) for p in config.providers],
        models=[model_message(m) for m in config.models],
    )
    assert snapshot.providers[0].kind == pb.PROVIDER_KIND_ANTHROPIC
    again = config_from_snapshot(snapshot)
    assert again.providers == config.providers
    assert again.models[0].pricing == config.models[0].pricing
    assert again.providers[0].base_url == ""  # the SDK's default endpoint
