"""What one rate-limit phase costs the router: RedisLimiter.acquire of a key's
RPM and TPM (admission's usual pair) against the local Redis, the way it is now
(one pipeline of EVALSHA) and the way it was (redis-py's Script objects in a
pipeline, which ask SCRIPT EXISTS before every pipeline: two round trips).
And what a routed request's limits cost: the model's RPM and TPM and its first
deployment's, in one phase as the first attempt takes them now
(`request_one_phase`), or in two as admission and the attempt took them before
(`request_two_phases`). Interleaved blocks; prints the medians of wall time and
of this process's CPU time per phase (per request for the `request_` rows).

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


def _pair(scope: str) -> list[Scope]:
    return [Scope(f"rpm:{scope}", 10**9, 1), Scope(f"tpm:{scope}", 10**12, 100)]


async def block(limiter: RedisLimiter, phases: Sequence[list[Scope]]) -> tuple[float, float]:
    """Wall and CPU microseconds per BLOCK repetitions of `phases`, each one acquire."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(BLOCK):
        for scopes in phases:
            await limiter.acquire(scopes)
    return (
        (time.perf_counter() - wall) * 1e6 / BLOCK,
        (time.process_time() - cpu) * 1e6 / BLOCK,
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phases", type=int, default=4000)
    args = parser.parse_args()
    tag = uuid.uuid4().hex[:8]
    key, model, deployment = _pair(f"key {tag}"), _pair(f"model {tag}"), _pair(f"dep {tag}")
    evalsha = RedisLimiter(REDIS_URL, fail_open=False)
    limiters = {
        "evalsha": (evalsha, [key]),
        "script_objects": (ScriptObjects(REDIS_URL, fail_open=False), [key]),
        "request_one_phase": (evalsha, [model + deployment]),
        "request_two_phases": (evalsha, [model, deployment]),
    }
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in limiters}
    try:
        for limiter, phases in limiters.values():
            await block(limiter, phases)  # warm: connections, scripts loaded
        for round_ in range(args.phases // BLOCK):
            names = list(limiters) if round_ % 2 else list(reversed(limiters))
            for name in names:
                limiter, phases = limiters[name]
                results[name].append(await block(limiter, phases))
    finally:
        for limiter in {limiter for limiter, _ in limiters.values()}:
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
