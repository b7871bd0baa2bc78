"""What the machine was doing while the edge's slow requests waited: open-loop
traffic through Envoy at fixed rates (the frontier's kind of load), each
request's due time and latency traced (loadgen's --trace), and meanwhile
sampled from /proc every 10 ms: each process's CPU, the router's event-loop
thread's time on a CPU and runnable but waiting for one (schedstat), and the
machine's busy time. Per rate, for the
requests over --slow-ms against the rest: the machine's busy share, each
process's CPU, and the router's event loop's run and run-queue wait, averaged
over the time they were in flight. So a tail can be told apart: the router busy
with its own queue, the router runnable but out-run by others (a flush, the
broker, the load generator), or neither (waiting on I/O).

    PYTHONPATH=services:gen python bench/tail_timeline.py --rates 200 300 --seconds 15 \\
        --provider-placement router [--baseline REF] [--env NAME=VALUE ...]

Prints one JSON object per rate.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import run as bench

PERIOD_S = 0.01
CORES = os.cpu_count() or 1
TICK_NS = 1e9 / os.sysconf("SC_CLK_TCK")


def _schedstat(pid: int) -> tuple[int, int]:
    """(ns on a CPU, ns runnable and waiting for one) of a process's main thread."""
    try:
        run, wait, _ = Path(f"/proc/{pid}/schedstat").read_text().split()
    except (OSError, ValueError):
        return 0, 0
    return int(run), int(wait)


def _machine_busy_ns() -> int:
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    idle = int(fields[3]) + int(fields[4])  # idle + iowait
    return int((sum(map(int, fields[:8])) - idle) * TICK_NS)


class Sampler(threading.Thread):
    """Every PERIOD_S: each named process's CPU, the router's main thread (its
    event loop) run and wait, the machine's busy ns. A handful of reads a
    sample (each /proc read costs ~25 µs): reading every thread of every
    process would itself take a third of a core."""

    def __init__(self, pids: dict[str, int], loop_pid: int) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.loop_pid = loop_pid
        self.samples: list[tuple[float, int, dict[str, int], tuple[int, int]]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(PERIOD_S):
            per = {n: int(bench._proc_cpu_ticks(p) * TICK_NS) for n, p in self.pids.items()}
            loop = _schedstat(self.loop_pid)
            self.samples.append((time.time(), _machine_busy_ns(), per, loop))


def _windows(
    samples: list[tuple[float, int, dict[str, int], tuple[int, int]]],
) -> list[tuple[float, float, dict[str, float]]]:
    """(start, end, rates) per sampling interval; rates in cores (ns per ns)."""
    out = []
    for (t0, m0, p0, l0), (t1, m1, p1, l1) in itertools.pairwise(samples):
        span = (t1 - t0) * 1e9
        rates = {"machine": (m1 - m0) / span / CORES}
        for name in p1:
            rates[name] = (p1[name] - p0[name]) / span
        rates["router loop"] = (l1[0] - l0[0]) / span
        rates["router loop waiting"] = (l1[1] - l0[1]) / span
        out.append((t0, t1, rates))
    return out


def _mean_over(
    windows: list[tuple[float, float, dict[str, float]]], start: float, end: float
) -> dict[str, float]:
    """Each rate averaged over [start, end], weighted by overlap."""
    sums: dict[str, float] = {}
    total = 0.0
    for t0, t1, rates in windows:
        if t1 <= start:
            continue
        if t0 >= end:
            break
        overlap = min(t1, end) - max(t0, start)
        total += overlap
        for k, v in rates.items():
            sums[k] = sums.get(k, 0.0) + v * overlap
    return {k: v / total for k, v in sums.items()} if total else {}


def _summary(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = sorted({k for r in rows for k in r})
    return {k: round(statistics.fmean(r.get(k, 0.0) for r in rows), 3) for k in keys}


def measure(edge: bench.System, body: Path, pids: dict[str, int], rate: float, args: Any) -> Any:
    with tempfile.NamedTemporaryFile(suffix=".trace") as trace:
        sampler = Sampler(pids, pids["router"])
        sampler.start()
        try:
            result = bench.load(
                edge,
                body,
                mode="open",
                rate=rate,
                duration=args.seconds,
                max_in_flight=512,
                trace=trace.name,
            )
        finally:
            sampler.stop.set()
            sampler.join()
        requests = [
            (float(due) / 1000, float(lat))
            for due, lat in map(str.split, Path(trace.name).read_text().splitlines())
        ]
    windows = _windows(sampler.samples)
    slow = [(d, lat) for d, lat in requests if lat >= args.slow_ms]
    rest = [(d, lat) for d, lat in requests if lat < args.slow_ms]
    slow_seconds = sorted({int(d) for d, _ in slow})
    return {
        "rate": rate,
        "rps": round(result["rps"], 1),
        "latency_ms": result["latency_ms"],
        "errors": result["errors"],
        "slow": len(slow),
        # Whole seconds (from the first request) in which slow requests were due:
        # one burst or spread out.
        "slow_at_s": [s - int(requests[0][0]) for s in slow_seconds] if requests else [],
        "all_time": _summary([r for _, _, r in windows]),
        "while_slow": _summary([_mean_over(windows, d, d + lat / 1000) for d, lat in slow]),
        "while_fast": _summary([_mean_over(windows, d, d + lat / 1000) for d, lat in rest]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[200.0, 300.0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--slow-ms", type=float, default=bench.P99_LIMIT_MS)
    parser.add_argument("--provider-placement", choices=bench.PLACEMENTS)
    parser.add_argument("--baseline", help="measure this git ref's code instead")
    parser.add_argument("--env", nargs="*", default=[], help="NAME=VALUE for every service")
    args = parser.parse_args()
    extra = dict(item.split("=", 1) for item in args.env)
    with tempfile.TemporaryDirectory(prefix="tail-timeline-") as name, contextlib.ExitStack() as st:
        tmp = Path(name)
        bodies = bench._bodies(tmp)
        upstream, mock_pid = st.enter_context(bench.mock_upstream())
        tree = st.enter_context(bench.baseline_tree(args.baseline, tmp)) if args.baseline else None
        edge, _, _ = st.enter_context(
            bench.switchboard(
                upstream, tmp, tree=tree, placement=args.provider_placement, extra_env=extra
            )
        )
        bench.load(edge, bodies["small"], mode="closed", concurrency=4, requests=400)
        pids = {**edge.pids, "mock": mock_pid}
        for rate in args.rates:
            print(json.dumps(measure(edge, bodies["small"], pids, rate, args)), flush=True)


if __name__ == "__main__":
    main()
