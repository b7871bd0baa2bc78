"""The registry's load-balancing setting at the router: a call for the group's
name is served by one of its models in proportion to the weights, and the
breakers take its thresholds; a model's default parameters fill what calls omit."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from switchboard.common.v1 import openai_pb2
from switchboard_common.config import SwitchboardConfig
from switchboard_common.errors import R, SwitchboardError
from switchboard_router.breaker import BreakerConfig
from switchboard_router.catalog import Catalog
from switchboard_router.defaults import apply_defaults
from switchboard_router.limits import LocalLimiter
from switchboard_router.routing import Routing


def _config(balancing: dict[str, Any] | None, **model: Any) -> SwitchboardConfig:
    data: dict[str, Any] = {
        "providers": [{"name": "mock", "kind": "mock"}],
        "models": [
            {"name": name, "deployments": [{"provider": "mock", "model": "m"}], **model}
            for name in ("a", "b", "c")
        ],
        "load_balancing": balancing,
    }
    return SwitchboardConfig.model_validate(data, context={"source": "registry"})


def test_round_robin_follows_the_weights_exactly() -> None:
    group = {"group": "auto", "strategy": "round_robin", "weights": {"a": 2, "b": 1, "c": 0}}
    catalog = Catalog(_config(group), created=0)
    picks = [catalog.resolve("auto", None).name for _ in range(30)]
    assert Counter(picks) == {"a": 20, "b": 10}
    # Smooth: never three of one in a row with weights 2:1.
    assert all(picks[i : i + 3] != ["a"] * 3 for i in range(28))


def test_weighted_random_spreads_by_weight() -> None:
    group = {"group": "auto", "weights": {"a": 3, "b": 1}}
    catalog = Catalog(_config(group), created=0)
    picks = Counter(catalog.resolve("auto", None).name for _ in range(4000))
    assert set(picks) == {"a", "b"}
    assert 2700 < picks["a"] < 3300


def test_a_group_without_weight_is_not_found() -> None:
    catalog = Catalog(_config({"group": "auto", "weights": {"a": 0}}), created=0)
    with pytest.raises(SwitchboardError) as caught:
        catalog.resolve("auto", None)
    assert caught.value.reason == R.ERROR_REASON_MODEL_NOT_FOUND


def test_the_file_cannot_set_load_balancing() -> None:
    with pytest.raises(ValueError, match="admin API"):
        SwitchboardConfig.model_validate(
            {
                "providers": [{"name": "mock", "kind": "mock"}],
                "models": [{"name": "a", "deployments": [{"provider": "mock", "model": "m"}]}],
                "load_balancing": {"group": "auto"},
            }
        )


def test_breaker_thresholds_from_the_setting_over_the_environment() -> None:
    routing = Routing(LocalLimiter(), BreakerConfig(consecutive_failures=7, success_to_close=1))
    routing.tune(3, 2)
    assert routing.breakers.config.consecutive_failures == 3
    assert routing.breakers.config.success_to_close == 2
    routing.tune(None, None)
    assert routing.breakers.config.consecutive_failures == 7
    assert routing.breakers.config.success_to_close == 1


def test_default_parameters_fill_only_what_the_call_omits() -> None:
    config = _config(None, default_parameters={"temperature": 0.3, "max_tokens": 5, "top_p": 0.5})
    model = config.models[0]
    params = openai_pb2.ChatCompletionParams(model="a", temperature=1.0)
    apply_defaults(model, params)
    assert (params.temperature, params.max_tokens, params.top_p) == (1.0, 5, 0.5)
    newer = openai_pb2.ChatCompletionParams(model="a", max_completion_tokens=9)
    apply_defaults(model, newer)
    assert not newer.HasField("max_tokens")
    embedding = openai_pb2.EmbeddingParams(model="a")
    apply_defaults(model, embedding)
    assert embedding == openai_pb2.EmbeddingParams(model="a")
