"""Two stack variants against each other, interleaved: SWITCHBOARD_WORKERS=N
against N=1 (--workers), or the provider inside the router against the provider
service (--placement router). Per run, a fresh stack: the edge path's
closed-loop throughput, latency and CPU per request (every process of the path
counted), then its latency at concurrency 1. The order alternates per round, so
a machine whose load drifts favours neither. Prints one JSON line per run, then
the median ratios (second variant / first).

    python bench/workers_compare.py --workers 2 --rounds 3
    python bench/workers_compare.py --placement router --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import run as bench

C1_REQUESTS = 400


@dataclass(frozen=True)
class Variant:
    workers: int = 1
    placement: str = "service"


def measure(upstream: str, variant: Variant, concurrency: int, duration_s: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="switchboard-compare-") as tmp_name:
        tmp = Path(tmp_name)
        bodies = bench._bodies(tmp)
        stack = bench.switchboard(upstream, tmp, variant.workers, placement=variant.placement)
        with stack as (edge, _grpc, _routed):
            bench.load(edge, bodies["small"], mode="closed", concurrency=8, requests=300)
            before = {n: bench._proc_cpu_ticks(pid) for n, pid in edge.pids.items()}
            r = bench.load(
                edge, bodies["small"], mode="closed", concurrency=concurrency, duration=duration_s
            )
            after = {n: bench._proc_cpu_ticks(pid) for n, pid in edge.pids.items()}
            c1 = bench.load(
                edge, bodies["small"], mode="closed", concurrency=1, requests=C1_REQUESTS
            )
    tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
    return {
        **asdict(variant),
        "rps": r["rps"],
        "p50_ms": r["latency_ms"]["p50"],
        "p99_ms": r["latency_ms"]["p99"],
        "errors": r["errors"] + c1["errors"],
        "cpu_us_per_request": sum(after[n] - before[n] for n in edge.pids)
        * tick_us
        / max(r["ok"], 1),
        "c1_p50_ms": c1["latency_ms"]["p50"],
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
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration-s", type=float, default=10.0)
    args = parser.parse_args()
    if args.placement:
        first, second = Variant(), Variant(placement=args.placement)
    else:
        first, second = Variant(), Variant(workers=args.workers)
    keys = ("rps", "p50_ms", "cpu_us_per_request", "c1_p50_ms")
    ratios: dict[str, list[float]] = {key: [] for key in keys}
    with bench.mock_upstream() as (upstream, _pid):
        for round_ in range(1, args.rounds + 1):
            order = (first, second) if round_ % 2 else (second, first)
            runs = {}
            for variant in order:
                runs[variant] = measure(upstream, variant, args.concurrency, args.duration_s)
                print(json.dumps({"round": round_, **runs[variant]}), flush=True)
            for key, values in ratios.items():
                values.append(runs[second][key] / runs[first][key])
    medians = {key: round(statistics.median(values), 2) for key, values in ratios.items()}
    print(json.dumps({"second": asdict(second), "first": asdict(first), "median_ratio": medians}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
