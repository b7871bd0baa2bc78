"""Usage lag, alone: bench/run.py's own probe (`usage_lag`: response at the edge
→ the row counted by /v1/usage/summary) against run.py's own stack, without
the rest of the benchmark; at idle, or with --rate, under that many requests a
second of open-loop traffic through the same edge (`usage_lag_loaded`, which
`make bench` runs at half the edge's frontier). Prints one JSON object.

    PYTHONPATH=services:gen:bench python bench/usage_lag.py --probes 60 [--rate 90]"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

import run

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--probes", type=int, default=60)
    parser.add_argument("--rate", type=float, default=0.0, help="traffic RPS beside the probes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="usage-lag-") as name:
        tmp = Path(name)
        bodies = run._bodies(tmp)
        with run.mock_upstream() as (upstream, _), run.switchboard(upstream, tmp) as systems:
            edge = systems[0]
            run.load(edge, bodies["small"], mode="closed", concurrency=4, requests=40)
            profile = dataclasses.replace(run.QUICK, lag_probes=args.probes)
            if args.rate > 0:
                lag = run.usage_lag_loaded(edge, bodies["small"], profile, args.rate)
            else:
                lag = run.usage_lag(edge, bodies["small"], profile, model=run.LAG_MODEL)
            print(json.dumps(lag))
