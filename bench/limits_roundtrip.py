"""What one rate-limit phase costs the router: RedisLimiter.acquire of a key's
RPM and TPM (admission's usual pair) against the local Redis, the way it is now
(one pipeline of EVALSHA) and the way it was (redis-py's Script objects in a
pipeline, which ask SCRIPT EXISTS before every pipeline: two round trips).
Interleaved blocks; prints the medians of wall time and of this process's CPU
time per phase.

    PYTHONPATH=services:gen python bench/limits_roundtrip.py --phases 4000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
import uuid
from collections.abc import Sequence
from typing import Any

from switchboard_router.limits import RedisLimiter, Scope

REDIS_URL = os.environ.get("SWITCHBOARD_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
BLOCK = 200


class ScriptObjects(RedisLimiter):
    """The pipelining this replaced: redis-py's Script objects."""

    async def _evalsha(self, calls: Sequence[tuple[Any, list[str], list[Any]]]) -> list[Any]:
        pipe = self._redis.pipeline(transaction=False)
        for script, keys, args in calls:
            await script(keys=keys, args=args, client=pipe)
        return list(await pipe.execute(raise_on_error=False))


async def block(limiter: RedisLimiter, tag: str) -> tuple[float, float]:
    """Wall and CPU microseconds per phase over BLOCK phases."""
    scopes = [Scope(f"rpm:bench {tag}", 10**9, 1), Scope(f"tpm:bench {tag}", 10**12, 100)]
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(BLOCK):
        await limiter.acquire(scopes)
    return (
        (time.perf_counter() - wall) * 1e6 / BLOCK,
        (time.process_time() - cpu) * 1e6 / BLOCK,
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phases", type=int, default=4000)
    args = parser.parse_args()
    limiters = {
        "evalsha": RedisLimiter(REDIS_URL, fail_open=False),
        "script_objects": ScriptObjects(REDIS_URL, fail_open=False),
    }
    tag = uuid.uuid4().hex[:8]
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in limiters}
    try:
        for limiter in limiters.values():
            await block(limiter, tag)  # warm: connections, scripts loaded
        for round_ in range(args.phases // BLOCK):
            names = list(limiters) if round_ % 2 else list(reversed(limiters))
            for name in names:
                results[name].append(await block(limiters[name], tag))
    finally:
        for limiter in limiters.values():
            await limiter.close()
    summary = {
        name: {
            "wall_us_p50": round(statistics.median(w for w, _ in rows), 1),
            "cpu_us_p50": round(statistics.median(c for _, c in rows), 1),
            "blocks": len(rows),
        }
        for name, rows in results.items()
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    asyncio.run(main())
