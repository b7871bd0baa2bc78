"""Load-balancing strategies: the order in which a model's deployments are tried."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import pytest

from switchboard_router.balancing import Balancer, DeploymentStats, Strategy

# Chi-square critical values at p = 0.999, by degrees of freedom.
CHI2_999 = {1: 10.828, 2: 13.816, 3: 16.266}


@dataclass(frozen=True)
class Dep:
    deployment_id: str
    weight: int = 1
    priority: int = 0
    unit_cost: float = 1.0


def _chi_square(observed: Counter[str], weights: dict[str, int]) -> float:
    draws = sum(observed.values())
    total = sum(weights.values())
    stat = 0.0
    for name, weight in weights.items():
        expected = draws * weight / total
        stat += (observed[name] - expected) ** 2 / expected
    return stat


def _ids(deps: Sequence[Dep]) -> list[str]:
    return [d.deployment_id for d in deps]


def _balancer(seed: int = 7) -> tuple[Balancer, DeploymentStats]:
    stats = DeploymentStats()
    return Balancer(stats, random.Random(seed)), stats


def test_strategy_names_are_the_config_spellings() -> None:
    assert {s.value for s in Strategy} == {
        "weighted_random",
        "round_robin",
        "priority",
        "least_latency",
        "least_outstanding",
        "cost",
    }
    assert Strategy("round_robin") is Strategy.ROUND_ROBIN


def test_weighted_random_first_pick_fits_the_weights() -> None:
    balancer, _ = _balancer(seed=20240601)
    weights = {"a": 1, "b": 2, "c": 7}
    deps = [Dep(name, weight=w) for name, w in weights.items()]
    firsts = Counter(
        balancer.order("chat", Strategy.WEIGHTED_RANDOM, deps)[0].deployment_id
        for _ in range(10_000)
    )
    assert set(firsts) == set(weights)
    assert _chi_square(firsts, weights) < CHI2_999[len(weights) - 1]


def test_weighted_random_failover_is_weighted_among_the_rest() -> None:
    balancer, _ = _balancer(seed=99)
    deps = [Dep("a", weight=1), Dep("b", weight=3), Dep("c", weight=6)]
    seconds: Counter[str] = Counter()
    for _ in range(10_000):
        order = _ids(balancer.order("chat", Strategy.WEIGHTED_RANDOM, deps))
        if order[0] == "c":
            seconds[order[1]] += 1
    # Given c went first, a and b follow in proportion 1:3.
    assert _chi_square(seconds, {"a": 1, "b": 3}) < CHI2_999[1]


@pytest.mark.parametrize("strategy", list(Strategy))
def test_every_strategy_returns_each_positive_weight_deployment_once(strategy: Strategy) -> None:
    balancer, _ = _balancer()
    deps = [Dep("a", 2), Dep("off", 0), Dep("b", 1, priority=1), Dep("c", 3, unit_cost=0.5)]
    for _ in range(50):
        order = _ids(balancer.order("chat", strategy, deps))
        assert sorted(order) == ["a", "b", "c"]


@pytest.mark.parametrize("strategy", list(Strategy))
def test_no_positive_weight_gives_an_empty_order(strategy: Strategy) -> None:
    balancer, _ = _balancer()
    assert balancer.order("chat", strategy, [Dep("a", 0), Dep("b", 0)]) == []
    assert balancer.order("chat", strategy, []) == []
    assert "no deployment with weight > 0" in balancer.last_reason


def test_smooth_round_robin_matches_nginx_sequence() -> None:
    balancer, _ = _balancer()
    deps = [Dep("a", 5), Dep("b", 1), Dep("c", 1)]
    picks = [balancer.order("chat", Strategy.ROUND_ROBIN, deps)[0].deployment_id for _ in range(14)]
    assert "".join(picks) == "aabacaa" * 2


def test_smooth_round_robin_failover_is_whoever_is_most_due() -> None:
    balancer, _ = _balancer()
    deps = [Dep("a", 5), Dep("b", 1), Dep("c", 1)]
    # After a's first pick the current weights are a=-2, b=1, c=1.
    assert _ids(balancer.order("chat", Strategy.ROUND_ROBIN, deps)) == ["a", "b", "c"]
    # After the second: a=-4, b=2, c=2.
    assert _ids(balancer.order("chat", Strategy.ROUND_ROBIN, deps)) == ["a", "b", "c"]
    # Third picks b: a=1, b=-4, c=3.
    assert _ids(balancer.order("chat", Strategy.ROUND_ROBIN, deps)) == ["b", "c", "a"]
    assert balancer.last_reason == "round_robin: smooth weighted, weight 1 of 7"


def test_smooth_round_robin_state_is_per_model_and_resets_on_change() -> None:
    balancer, _ = _balancer()
    deps = [Dep("a", 2), Dep("b", 1)]
    other = [Dep("x", 1), Dep("y", 1)]
    picks = []
    for _ in range(3):
        picks.append(balancer.order("chat", Strategy.ROUND_ROBIN, deps)[0].deployment_id)
        # Another model's calls in between do not advance this one.
        balancer.order("other", Strategy.ROUND_ROBIN, other)
    assert picks == ["a", "b", "a"]
    # A new deployment set starts the cycle over; zero-weight ones play no part.
    changed = [Dep("a", 2), Dep("b", 1), Dep("c", 0), Dep("d", 1)]
    picks = [
        balancer.order("chat", Strategy.ROUND_ROBIN, changed)[0].deployment_id for _ in range(4)
    ]
    assert picks == ["a", "b", "d", "a"]


def test_round_robin_forget_drops_model_state() -> None:
    balancer, _ = _balancer()
    deps = [Dep("a", 1), Dep("b", 1)]
    assert balancer.order("chat", Strategy.ROUND_ROBIN, deps)[0].deployment_id == "a"
    balancer.forget(["other"])
    assert balancer.order("chat", Strategy.ROUND_ROBIN, deps)[0].deployment_id == "a"


def test_priority_tries_lower_values_first_and_weighs_peers() -> None:
    balancer, _ = _balancer(seed=3)
    deps = [
        Dep("backup", 100, priority=5),
        Dep("main-1", 1, priority=0),
        Dep("main-2", 3, priority=0),
        Dep("mid", 1, priority=2),
    ]
    firsts: Counter[str] = Counter()
    for _ in range(4_000):
        order = _ids(balancer.order("chat", Strategy.PRIORITY, deps))
        assert sorted(order[:2]) == ["main-1", "main-2"]
        assert order[2:] == ["mid", "backup"]
        firsts[order[0]] += 1
    assert _chi_square(firsts, {"main-1": 1, "main-2": 3}) < CHI2_999[1]
    assert balancer.last_reason.startswith("priority: priority 0, weight ")
    assert balancer.last_reason.endswith(" of 4")


def test_least_latency_prefers_the_faster_deployment() -> None:
    balancer, stats = _balancer()
    deps = [Dep("slow"), Dep("fast"), Dep("medium")]
    for name, latency in [("slow", 2.0), ("fast", 0.25), ("medium", 1.0)]:
        stats.started(name)
        stats.finished(name, latency_s=latency, ttft_s=None, ok=True)
    order = _ids(balancer.order("chat", Strategy.LEAST_LATENCY, deps))
    assert order == ["fast", "medium", "slow"]
    assert balancer.last_reason == "least_latency: latency ewma 250.0 ms"


def test_least_latency_ranks_streams_by_time_to_first_token() -> None:
    balancer, stats = _balancer()
    deps = [Dep("quick-start"), Dep("quick-finish")]
    # quick-finish completes sooner overall but starts streaming later.
    stats.finished("quick-start", latency_s=3.0, ttft_s=0.0123, ok=True)
    stats.finished("quick-finish", latency_s=1.0, ttft_s=0.5, ok=True)
    streaming = _ids(balancer.order("chat", Strategy.LEAST_LATENCY, deps, stream=True))
    assert streaming == ["quick-start", "quick-finish"]
    assert balancer.last_reason == "least_latency: ttft ewma 12.3 ms"
    unary = _ids(balancer.order("chat", Strategy.LEAST_LATENCY, deps))
    assert unary == ["quick-finish", "quick-start"]


def test_least_latency_explores_unmeasured_deployments_first() -> None:
    balancer, stats = _balancer()
    stats.finished("known", latency_s=0.01, ttft_s=None, ok=True)
    deps = [Dep("known"), Dep("new")]
    assert _ids(balancer.order("chat", Strategy.LEAST_LATENCY, deps)) == ["new", "known"]
    assert balancer.last_reason == "least_latency: no latency observed yet, exploring"
    # In flight is not measured yet: it is still explored.
    stats.started("new")
    assert _ids(balancer.order("chat", Strategy.LEAST_LATENCY, deps)) == ["new", "known"]
    stats.finished("new", latency_s=0.5, ttft_s=None, ok=True)
    assert _ids(balancer.order("chat", Strategy.LEAST_LATENCY, deps)) == ["known", "new"]


def test_least_latency_puts_unmeasured_deployments_that_failed_last() -> None:
    balancer, stats = _balancer()
    stats.finished("known", latency_s=5.0, ttft_s=None, ok=True)
    # A fast failure neither counts as a measurement nor leaves it "unexplored".
    stats.finished("broken", latency_s=0.001, ttft_s=None, ok=False)
    deps = [Dep("broken"), Dep("known"), Dep("new")]
    assert _ids(balancer.order("chat", Strategy.LEAST_LATENCY, deps)) == [
        "new",
        "known",
        "broken",
    ]
    order = balancer.order("chat", Strategy.LEAST_LATENCY, [Dep("broken")])
    assert _ids(order) == ["broken"]
    assert balancer.last_reason == (
        "least_latency: no latency observed; every deployment's last request failed"
    )


def test_least_outstanding_prefers_fewest_in_flight_and_weighs_ties() -> None:
    balancer, stats = _balancer(seed=11)
    deps = [Dep("busy", 50), Dep("idle-1", 1), Dep("idle-2", 1)]
    for _ in range(3):
        stats.started("busy")
    firsts: Counter[str] = Counter()
    for _ in range(2_000):
        order = _ids(balancer.order("chat", Strategy.LEAST_OUTSTANDING, deps))
        assert order[2] == "busy"
        firsts[order[0]] += 1
    assert _chi_square(firsts, {"idle-1": 1, "idle-2": 1}) < CHI2_999[1]
    stats.started("idle-1")
    stats.started("idle-2")
    stats.started("idle-2")
    order = _ids(balancer.order("chat", Strategy.LEAST_OUTSTANDING, deps))
    assert order == ["idle-1", "idle-2", "busy"]
    assert balancer.last_reason == "least_outstanding: 1 in flight"


def test_cost_prefers_the_cheapest_and_weighs_equal_prices() -> None:
    balancer, _ = _balancer(seed=5)
    deps = [
        Dep("pricey", 10, unit_cost=0.03),
        Dep("cheap-a", 1, unit_cost=0.002),
        Dep("cheap-b", 4, unit_cost=0.002),
        Dep("mid", 10, unit_cost=0.01),
    ]
    firsts: Counter[str] = Counter()
    for _ in range(5_000):
        order = _ids(balancer.order("chat", Strategy.COST, deps))
        assert order[2:] == ["mid", "pricey"]
        firsts[order[0]] += 1
    assert _chi_square(firsts, {"cheap-a": 1, "cheap-b": 4}) < CHI2_999[1]
    assert balancer.last_reason == "cost: $0.002 per 1K tokens"


@pytest.mark.parametrize("strategy", list(Strategy))
def test_a_seeded_rng_makes_orders_reproducible(strategy: Strategy) -> None:
    deps = [Dep("a", 1, 0, 0.1), Dep("b", 2, 0, 0.1), Dep("c", 3, 1, 0.2), Dep("d", 3, 0, 0.1)]

    def run(seed: int) -> list[list[str]]:
        balancer, _ = _balancer(seed)
        return [_ids(balancer.order("chat", strategy, deps)) for _ in range(30)]

    assert run(1234) == run(1234)


def test_different_seeds_give_different_weighted_orders() -> None:
    deps = [Dep("a", 1), Dep("b", 2), Dep("c", 3), Dep("d", 3)]
    runs = []
    for seed in (1, 2):
        balancer, _ = _balancer(seed)
        runs.append(
            [_ids(balancer.order("chat", Strategy.WEIGHTED_RANDOM, deps)) for _ in range(30)]
        )
    assert runs[0] != runs[1]


def test_a_strategy_parses_from_its_config_string() -> None:
    balancer, _ = _balancer()
    deps = [Dep("a", 5), Dep("b", 1), Dep("c", 1)]
    order = balancer.order("chat", Strategy("round_robin"), deps)
    assert _ids(order) == ["a", "b", "c"]


def test_stats_count_in_flight_and_never_go_negative() -> None:
    stats = DeploymentStats()
    assert stats.outstanding("a") == 0
    stats.started("a")
    stats.started("a")
    assert stats.outstanding("a") == 2
    stats.finished("a", latency_s=0.1, ttft_s=None, ok=True)
    assert stats.outstanding("a") == 1
    stats.finished("a", latency_s=0.1, ttft_s=None, ok=False)
    stats.finished("a", latency_s=0.1, ttft_s=None, ok=False)
    assert stats.outstanding("a") == 0


def test_stats_ewma_and_which_outcomes_update_it() -> None:
    stats = DeploymentStats(alpha=0.5)
    assert stats.latency_s("a") is None
    assert stats.ttft_s("a") is None
    stats.finished("a", latency_s=1.0, ttft_s=0.2, ok=True)
    assert stats.latency_s("a") == pytest.approx(1.0)
    assert stats.ttft_s("a") == pytest.approx(0.2)
    stats.finished("a", latency_s=3.0, ttft_s=0.4, ok=True)
    assert stats.latency_s("a") == pytest.approx(2.0)
    assert stats.ttft_s("a") == pytest.approx(0.3)
    # A failure leaves latency alone, but a first token that did arrive still counts.
    stats.finished("a", latency_s=0.001, ttft_s=0.5, ok=False)
    assert stats.latency_s("a") == pytest.approx(2.0)
    assert stats.ttft_s("a") == pytest.approx(0.4)
    assert stats.last_ok("a") is False


def test_stats_forget_drops_unconfigured_deployments() -> None:
    stats = DeploymentStats()
    stats.started("keep")
    stats.finished("gone", latency_s=1.0, ttft_s=None, ok=True)
    stats.forget(["keep"])
    assert stats.outstanding("keep") == 1
    assert stats.latency_s("gone") is None
    assert stats.last_ok("gone") is None


@pytest.mark.parametrize("alpha", [0.0, -0.1, 1.5])
def test_stats_reject_an_alpha_outside_zero_to_one(alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha"):
        DeploymentStats(alpha=alpha)
