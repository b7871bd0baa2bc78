"""What share of a process's busy samples ran under some code: reads py-spy's
raw collapsed stacks (`bench/profile.py` writes them as <label>-<service>.txt;
with --native they hold C frames too), drops the samples of threads that were
waiting (an event loop in epoll, a thread pool's idle workers, gRPC's poller
in poll), and prints, per group of path fragments, the share of the rest whose
stack holds a frame from one of them. Each sample counts once, for the first
group (in the order given) that claims it.

    python bench/stack_share.py bench/flame/s4-router.txt \
        --group sdk=openai/,httpx2/,aiohttp/ --group grpc=grpc/,cygrpc
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

# A waiting thread's innermost frames: the kernel wait it sits in, or the
# Python call that waits (without --native, py-spy drops idle threads itself).
WAITING = re.compile(
    r"epoll_wait|epoll_pwait|\bpoll \(|select_poll|_queue_SimpleQueue_get|"
    r"pthread_cond_(timed)?wait|sem_(timed)?wait|PyThread_acquire_lock"
)


def shares(lines: list[str], groups: dict[str, list[str]]) -> dict[str, object]:
    busy = 0
    idle = 0
    counted = dict.fromkeys(groups, 0)
    for line in lines:
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = stack.split(";")
        if any(WAITING.search(frame) for frame in frames[-3:]):
            idle += n
            continue
        busy += n
        for name, fragments in groups.items():
            if any(fragment in frame for frame in frames for fragment in fragments):
                counted[name] += n
                break
    return {
        "busy_samples": busy,
        "waiting_samples": idle,
        "share_of_busy": {name: round(n / busy, 3) if busy else 0.0 for name, n in counted.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stacks", type=Path)
    parser.add_argument("--group", action="append", metavar="NAME=FRAGMENT,…", required=True)
    args = parser.parse_args()
    groups: dict[str, list[str]] = {}
    for item in args.group:
        name, sep, fragments = item.partition("=")
        if not sep or not fragments:
            raise SystemExit(f"--group takes NAME=FRAGMENT[,FRAGMENT…], not {item!r}")
        groups[name] = fragments.split(",")
    print(json.dumps(shares(args.stacks.read_text().splitlines(), groups)))


if __name__ == "__main__":
    main()
