"""Added latency when requests are sparse: one client, one request at a time,
each sent straight after the previous answer (what `make bench`'s c=1 rows
measure) or after an idle pause, through the edge and straight to the mock
upstream, interleaved. Sparse traffic finds every process of the path asleep;
this shows what that costs on the machine at hand.

`python bench/idle_latency.py [--requests N] [--gap-s S]` prints JSON."""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

BODY = {"model": "bench", "messages": [{"role": "user", "content": "ping"}]}


def _timed(client: httpx.Client, url: str, gap_s: float) -> float:
    time.sleep(gap_s)
    started = time.perf_counter()
    client.post(url, json=BODY).raise_for_status()
    return (time.perf_counter() - started) * 1000


def measure(direct: str, edge: str, requests: int, gaps: list[float]) -> list[dict[str, float]]:
    rows = []
    with httpx.Client(timeout=30) as client:
        for _ in range(50):  # warm both paths (connections, caches)
            _timed(client, direct, 0)
            _timed(client, edge, 0)
        for gap_s in gaps:
            ms: dict[str, list[float]] = {"direct": [], "edge": []}
            for i in range(requests):
                # Alternate which path goes first: drift hits both alike.
                order = [("direct", direct), ("edge", edge)]
                for name, url in order if i % 2 else order[::-1]:
                    ms[name].append(_timed(client, url, gap_s))
            p50 = {name: statistics.median(values) for name, values in ms.items()}
            rows.append(
                {
                    "gap_s": gap_s,
                    "direct_p50_ms": round(p50["direct"], 2),
                    "edge_p50_ms": round(p50["edge"], 2),
                    "added_p50_ms": round(p50["edge"] - p50["direct"], 2),
                }
            )
    return rows


def main() -> int:
    import run  # bench/run.py: the stack and the mock upstream

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=40, help="per path and gap")
    parser.add_argument("--gap-s", type=float, default=0.4, help="the idle pause")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="switchboard-idle-") as tmp,
        contextlib.ExitStack() as s,
    ):
        upstream, _ = s.enter_context(run.mock_upstream())
        edge, _, _ = s.enter_context(run.switchboard(upstream, Path(tmp)))
        # Back to back, idle, and both again: a drift shows as a disagreement.
        gaps = [0.0, args.gap_s, 0.0, args.gap_s]
        rows = measure(f"{upstream}/chat/completions", edge.url, args.requests, gaps)
    json.dump(rows, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
