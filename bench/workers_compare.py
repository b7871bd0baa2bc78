"""Two stack variants against each other, interleaved: SWITCHBOARD_WORKERS=N
against N=1 (--workers), the provider inside the router against the provider
service (--placement router), the same stack with some variables set (--env,
on top of --base-env), or this checkout against another commit's code
(--baseline REF). Per run, a fresh stack: the edge path's closed-loop
throughput, latency and CPU per request (every process of the path counted),
its latency at concurrency 1 (and the routed model's, and a stream's time to
first token), then (--open-rates) the p99 of open-loop traffic
at fixed rates, the tail the frontier is bisected on. The order alternates per
round, so a machine whose load drifts favours neither. Prints one JSON line per
run, then the median ratios (second variant / first).

    python bench/workers_compare.py --workers 2 --rounds 3
    python bench/workers_compare.py --placement router --rounds 3
    python bench/workers_compare.py --base-env SWITCHBOARD_PROVIDER_PLACEMENT=router \
        --env SWITCHBOARD_GC=default --open-rates 100 200
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import run as bench

C1_REQUESTS = 400


OPEN_LOOP_S = 10.0


@dataclass(frozen=True)
class Variant:
    workers: int = 1
    placement: str = "service"
    env: tuple[tuple[str, str], ...] = ()
    # Another checkout's code (bench.baseline_tree), or None for this one.
    tree: Path | None = None


def _pairs(items: list[str]) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--env and --base-env take NAME=VALUE, not {item!r}")
        pairs.append((name, value))
    return tuple(pairs)


def measure(
    upstream: str,
    variant: Variant,
    concurrency: int,
    duration_s: float,
    open_rates: list[float],
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="switchboard-compare-") as tmp_name:
        tmp = Path(tmp_name)
        bodies = bench._bodies(tmp)
        stack = bench.switchboard(
            upstream,
            tmp,
            variant.workers,
            tree=variant.tree,
            placement=variant.placement,
            extra_env=dict(variant.env),
        )
        with stack as (edge, _grpc, routed):
            bench.load(edge, bodies["small"], mode="closed", concurrency=8, requests=300)
            before = {n: bench._proc_cpu_ticks(pid) for n, pid in edge.pids.items()}
            r = bench.load(
                edge, bodies["small"], mode="closed", concurrency=concurrency, duration=duration_s
            )
            after = {n: bench._proc_cpu_ticks(pid) for n, pid in edge.pids.items()}
            c1 = bench.load(
                edge, bodies["small"], mode="closed", concurrency=1, requests=C1_REQUESTS
            )
            # The routed model (Redis limits, breakers, least-latency), and a stream's TTFT.
            routed_c1 = bench.load(
                routed, bodies["small"], mode="closed", concurrency=1, requests=C1_REQUESTS
            )
            stream = bench.load(
                edge, bodies["stream"], mode="closed", concurrency=1, requests=C1_REQUESTS // 2
            )
            tails = {}
            for rate in open_rates:
                o = bench.load(
                    edge,
                    bodies["small"],
                    mode="open",
                    rate=rate,
                    duration=OPEN_LOOP_S,
                    max_in_flight=512,
                )
                tails[f"open_{rate:g}_p99_ms"] = (o["latency_ms"] or {}).get("p99")
                tails[f"open_{rate:g}_errors"] = o["errors"]
    tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
    return {
        **asdict(variant),
        "rps": r["rps"],
        "p50_ms": r["latency_ms"]["p50"],
        "p99_ms": r["latency_ms"]["p99"],
        "errors": r["errors"] + c1["errors"] + routed_c1["errors"] + stream["errors"],
        "cpu_us_per_request": sum(after[n] - before[n] for n in edge.pids)
        * tick_us
        / max(r["ok"], 1),
        "c1_p50_ms": c1["latency_ms"]["p50"],
        "routed_c1_p50_ms": routed_c1["latency_ms"]["p50"],
        "ttft_p50_ms": stream["ttft_ms"]["p50"],
        **tails,
        "load_average": os.getloadavg()[0],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="N, against 1")
    parser.add_argument(
        "--placement",
        choices=["router"],
        help="instead of workers: the provider in the router against the provider service",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="instead of workers: the same stack with this variable set (repeatable)",
    )
    parser.add_argument(
        "--base-env", action="append", default=[], metavar="NAME=VALUE", help="set in both"
    )
    parser.add_argument(
        "--open-rates", type=float, nargs="*", default=[], help="open-loop RPS to take p99 at"
    )
    parser.add_argument("--baseline", metavar="REF", help="instead: REF's code against this one")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration-s", type=float, default=10.0)
    args = parser.parse_args()
    base = _pairs(args.base_env)
    placement = dict(base).get("SWITCHBOARD_PROVIDER_PLACEMENT", "service")
    first = Variant(placement=placement, env=base)
    trees = contextlib.ExitStack()
    if args.baseline:
        tmp = Path(trees.enter_context(tempfile.TemporaryDirectory(prefix="switchboard-ref-")))
        tree = trees.enter_context(bench.baseline_tree(args.baseline, tmp))
        first, second = Variant(placement=placement, env=base, tree=tree), first
    elif args.placement:
        second = Variant(placement=args.placement, env=base)
    elif args.env:
        second = Variant(placement=placement, env=base + _pairs(args.env))
    else:
        second = Variant(placement=placement, workers=args.workers, env=base)
    keys = ["rps", "p50_ms", "cpu_us_per_request", "c1_p50_ms", "routed_c1_p50_ms", "ttft_p50_ms"]
    keys += [f"open_{rate:g}_p99_ms" for rate in args.open_rates]
    ratios: dict[str, list[float]] = {key: [] for key in keys}
    with trees, bench.mock_upstream() as (upstream, _pid):
        for round_ in range(1, args.rounds + 1):
            order = (first, second) if round_ % 2 else (second, first)
            runs = {}
            for variant in order:
                runs[variant] = measure(
                    upstream, variant, args.concurrency, args.duration_s, args.open_rates
                )
                print(json.dumps({"round": round_, **runs[variant]}, default=str), flush=True)
            for key, values in ratios.items():
                if runs[first][key] and runs[second][key] is not None:
                    values.append(runs[second][key] / runs[first][key])
    medians = {key: round(statistics.median(values), 2) for key, values in ratios.items() if values}
    described = {"second": asdict(second), "first": asdict(first)}
    print(
        json.dumps({**described, "baseline": args.baseline, "median_ratio": medians}, default=str)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
