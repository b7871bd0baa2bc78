"""What an idle node costs: the bench stack (bench/run.py's, every service,
the broker and Envoy) warmed with traffic, then left alone; each process's CPU
read from /proc over --seconds, as % of one core. With --baseline REF, REF's
code and this checkout's alternate, a fresh stack per run, so a machine whose
load drifts favours neither. Prints one JSON line per run, then each process's
median per variant.

    PYTHONPATH=services:gen python bench/idle_cpu.py --seconds 20 --rounds 2 [--baseline REF] \\
        [--env NAME=VALUE ...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import run as bench

TICKS = os.sysconf("SC_CLK_TCK")
# After the warm-up, before measuring: the warm-up's batches leave the sinks.
SETTLE_S = 3.0


def measure(tree: Path | None, env: dict[str, str], seconds: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="idle-cpu-") as name, contextlib.ExitStack() as st:
        tmp = Path(name)
        bodies = bench._bodies(tmp)
        upstream, _ = st.enter_context(bench.mock_upstream())
        edge, _, _ = st.enter_context(
            bench.switchboard(upstream, tmp, tree=tree, placement="router", extra_env=env)
        )
        bench.load(edge, bodies["small"], mode="closed", concurrency=4, requests=400)
        time.sleep(SETTLE_S)
        pids = edge.node_pids
        before = {n: bench._proc_cpu_ticks(p) for n, p in pids.items()}
        time.sleep(seconds)
        after = {n: bench._proc_cpu_ticks(p) for n, p in pids.items()}
    return {n: round((after[n] - before[n]) / TICKS / seconds * 100, 2) for n in pids}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--baseline", help="alternate with this git ref's code")
    parser.add_argument("--env", nargs="*", default=[], help="NAME=VALUE for every service")
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.env)
    runs: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="idle-ref-") as name, contextlib.ExitStack() as st:
        variants: dict[str, Path | None] = {"now": None}
        if args.baseline:
            variants[args.baseline] = st.enter_context(
                bench.baseline_tree(args.baseline, Path(name))
            )
        for round_ in range(1, args.rounds + 1):
            order = list(variants.items())
            if round_ % 2 == 0:
                order.reverse()
            for label, tree in order:
                cpu = measure(tree, env, args.seconds)
                runs.setdefault(label, []).append(cpu)
                print(json.dumps({"round": round_, "code": label, "percent_of_a_core": cpu}))
    medians: dict[str, Any] = {
        label: {n: round(statistics.median(r[n] for r in rs), 2) for n in rs[0]}
        for label, rs in runs.items()
    }
    print(json.dumps({"median_percent_of_a_core": medians}))


if __name__ == "__main__":
    main()
