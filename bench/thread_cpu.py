"""CPU per request by process and thread: run.py's edge stack under a closed
loop through Envoy, every thread's CPU read from /proc before and after.
Python threads are named as the services name them (py-spy would say which is
which; the usage service's are the event loop, `clickhouse_0` and the outbox's
thread); ClickHouse's own (ThreadPool, MergeMutate, …) name themselves. Prints
one JSON object: per service and thread name, µs of CPU per request.

    PYTHONPATH=services:gen python bench/thread_cpu.py --seconds 20 --concurrency 16 \
        [--provider-placement router] [--baseline REF]

--baseline REF measures REF's code (a git worktree of it) instead of this checkout's.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import run as bench

TICK_US = 1_000_000 / os.sysconf("SC_CLK_TCK")


def _threads(pid: int) -> dict[tuple[int, int], tuple[str, int]]:
    """(pid, tid) → (thread name, CPU ticks) for a process and its children."""
    out = {}
    for each in bench._tree(pid):
        with contextlib.suppress(OSError):
            out.update({(each, tid): named for tid, named in bench.thread_ticks(each).items()})
    return out


def _names(pid: int) -> dict[int, str]:
    """Thread id → the Python thread's name, from py-spy if it is on PATH."""
    spy = shutil.which("py-spy")
    if spy is None:
        return {}
    dump = subprocess.run([spy, "dump", "--pid", str(pid)], capture_output=True, text=True)
    return {
        int(m.group(1)): m.group(2)
        for m in re.finditer(r'^Thread (\d+) \([^)]*\): "([^"]+)"', dump.stdout, re.M)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--provider-placement", choices=bench.PLACEMENTS)
    parser.add_argument("--baseline", help="measure this git ref's code instead")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="thread-cpu-") as name,
        bench.warm_edge(Path(name), args.baseline, args.provider_placement) as (edge, bodies),
    ):
        before = {service: _threads(pid) for service, pid in edge.pids.items()}
        result = bench.load(
            edge,
            bodies["small"],
            mode="closed",
            concurrency=args.concurrency,
            duration=args.seconds,
        )
        after = {service: _threads(pid) for service, pid in edge.pids.items()}
        python_names = {tid: n for pid in edge.pids.values() for tid, n in _names(pid).items()}
    per: dict[str, collections.Counter[str]] = {}
    for service, threads in after.items():
        counter = per.setdefault(service, collections.Counter())
        for key, (thread, ticks) in threads.items():
            spent = ticks - before[service].get(key, (thread, 0))[1]
            if spent:
                label = python_names.get(key[1]) or re.sub(r"\d+$", "", thread)
                counter[label] += spent
    ok = result["ok"]
    print(
        json.dumps(
            {
                "rps": round(result["rps"], 1),
                "requests": ok,
                "cpu_us_per_request": {
                    service: {t: round(n * TICK_US / ok) for t, n in c.most_common()}
                    for service, c in per.items()
                },
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
