"""Flame graphs of the router and the provider (and the usage service) under load.

Starts the bench stack (`bench/run.py`'s config, accounting on), runs a closed
loop through Envoy, and records each service with py-spy for the same window:
`bench/flame/<label>-<service>.svg`, plus py-spy's raw collapsed stacks beside
them for diffing (`--label before` / `--label after`).

    python bench/profile.py --label after [--baseline REF] [--seconds 20]

--baseline REF profiles REF's code (a `git worktree` of it in a temporary
directory) instead of this checkout, so before and after come from one machine.
py-spy is not a dependency: pass its path with --py-spy, or have it on PATH
(`pip install py-spy`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import run as bench

BENCH = Path(__file__).resolve().parent
SERVICES = ("router", "provider", "usage")


def record(
    py_spy: str, pid: int, seconds: int, out: Path, fmt: str, native: bool = False
) -> subprocess.Popen[bytes]:
    # Native frames need the process paused for each sample (py-spy refuses
    # --native with --nonblocking), which slows it: compare shares, not RPS.
    mode = ["--native"] if native else ["--nonblocking"]
    return subprocess.Popen(
        [py_spy, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "200",
         "--format", fmt, "--output", str(out), *mode],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", required=True)
    parser.add_argument("--baseline", help="profile this git ref's code instead")
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy")
    parser.add_argument("--out", type=Path, default=BENCH / "flame")
    parser.add_argument(
        "--native", action="store_true", help="C frames too (bench/stack_share.py reads them)"
    )
    parser.add_argument("--services", nargs="+", choices=SERVICES, default=list(SERVICES))
    parser.add_argument(
        "--provider-placement",
        choices=bench.PLACEMENTS,
        help="SWITCHBOARD_PROVIDER_PLACEMENT (router: the provider's samples are the router's)",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix="switchboard-profile-") as tmp_name,
        bench.warm_edge(Path(tmp_name), args.baseline, args.provider_placement) as (edge, bodies),
    ):
        recorders = []
        for name in args.services:
            pid = edge.pids[name]
            for fmt, suffix in (("flamegraph", "svg"), ("raw", "txt")):
                path = args.out / f"{args.label}-{name}.{suffix}"
                recorders.append(record(args.py_spy, pid, args.seconds, path, fmt, args.native))
        result: dict[str, object] = {}

        def drive() -> None:
            result.update(
                bench.load(
                    edge,
                    bodies["small"],
                    mode="closed",
                    concurrency=args.concurrency,
                    duration=args.seconds + 2,
                )
            )

        loader = threading.Thread(target=drive)
        loader.start()
        for proc in recorders:
            _, err = proc.communicate(timeout=args.seconds + 60)
            if proc.returncode != 0:
                print(err.decode(errors="replace"), file=sys.stderr)
        loader.join()
        print(
            f"[profile] {args.label}: {result.get('rps', 0):.0f} RPS at c={args.concurrency}, "
            f"flame graphs in {args.out}",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("SWITCHBOARD_LOG_LEVEL", "INFO")
    sys.exit(main())
