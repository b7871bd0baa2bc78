"""SWITCHBOARD_WORKERS=N against N=1, interleaved: the edge path's closed-loop
throughput, latency and CPU per request, each round starting a fresh stack per
worker count (the order alternating per round, so a machine whose load drifts
favours neither). Prints one JSON line per run, then the median ratios.

    python bench/workers_compare.py --workers 2 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

import run as bench


def measure(upstream: str, workers: int, concurrency: int, duration_s: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="switchboard-workers-") as tmp_name:
        tmp = Path(tmp_name)
        bodies = bench._bodies(tmp)
        with bench.switchboard(upstream, tmp, workers) as (edge, _grpc, _routed):
            bench.load(edge, bodies["small"], mode="closed", concurrency=8, requests=300)
            before = {n: bench._proc_cpu_ticks(pid) for n, pid in edge.pids.items()}
            r = bench.load(
                edge, bodies["small"], mode="closed", concurrency=concurrency, duration=duration_s
            )
            after = {n: bench._proc_cpu_ticks(pid) for n, pid in edge.pids.items()}
    tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
    return {
        "workers": workers,
        "rps": r["rps"],
        "p50_ms": r["latency_ms"]["p50"],
        "p99_ms": r["latency_ms"]["p99"],
        "errors": r["errors"],
        "cpu_us_per_request": sum(after[n] - before[n] for n in edge.pids)
        * tick_us
        / max(r["ok"], 1),
        "load_average": os.getloadavg()[0],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration-s", type=float, default=10.0)
    args = parser.parse_args()
    ratios: dict[str, list[float]] = {"rps": [], "p50_ms": [], "cpu_us_per_request": []}
    with bench.mock_upstream() as (upstream, _pid):
        for round_ in range(1, args.rounds + 1):
            order = (1, args.workers) if round_ % 2 else (args.workers, 1)
            runs = {}
            for workers in order:
                runs[workers] = measure(upstream, workers, args.concurrency, args.duration_s)
                print(json.dumps({"round": round_, **runs[workers]}), flush=True)
            for key, values in ratios.items():
                values.append(runs[args.workers][key] / runs[1][key])
    medians = {key: round(statistics.median(values), 2) for key, values in ratios.items()}
    print(json.dumps({"median_ratio_vs_1_worker": medians}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
