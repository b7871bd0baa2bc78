"""What one upstream call costs through the OpenAI SDK, in the adapter's
process: the SDK's low-level post given the body as a dict (`body=`, as the
OpenAI adapter sends it) or as JSON bytes already serialized (`content=`,
which skips the SDK's handling of a dict body), against the same request
through aiohttp alone (the floor: the SDK's own transport is aiohttp), and
`body=` through the OpenAI adapter's own client (its transport sends a call
again when its pooled connection had been closed: what that costs).
Against the bench's Node mock upstream, one call at a time. Per
variant and round: CPU µs per call (this process, all threads) and the p50
wall time; the rounds interleave the variants, and the medians are printed.

    python bench/sdk_call.py --calls 500 --rounds 4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import httpx2
import openai
import run as bench

from switchboard_common.config import ProviderConfig
from switchboard_provider.adapters.openai_compat import OpenAIAdapter

BODY: dict[str, Any] = {
    "model": "bench",
    "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Say pong. " * 20},
    ],
    "max_tokens": 8,
    "temperature": 0.2,
}
WARM = 50


async def _measure(call: Callable[[], Awaitable[Any]], calls: int) -> tuple[float, float]:
    for _ in range(WARM):
        await call()
    walls = []
    cpu = time.process_time()
    for _ in range(calls):
        start = time.perf_counter()
        await call()
        walls.append(time.perf_counter() - start)
    return (time.process_time() - cpu) / calls * 1e6, statistics.median(walls) * 1e3


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    with bench.mock_upstream() as (upstream, _):
        client = openai.AsyncOpenAI(
            base_url=upstream,
            api_key="bench",
            max_retries=0,
            http_client=openai.DefaultAioHttpClient(),
        )
        adapter = OpenAIAdapter(ProviderConfig(name="bench", kind="openai", base_url=upstream))
        session = aiohttp.ClientSession()
        timeout = openai.Timeout(30, connect=5)

        async def body() -> Any:
            response = await client.post(
                "/chat/completions",
                cast_to=httpx2.Response,
                body=BODY,
                options={"timeout": timeout},
            )
            return response.json()

        async def adapter_body() -> Any:
            response = await adapter.client.post(
                "/chat/completions",
                cast_to=httpx2.Response,
                body=BODY,
                options={"timeout": timeout},
            )
            return response.json()

        async def content() -> Any:
            response = await client.post(
                "/chat/completions",
                cast_to=httpx2.Response,
                content=json.dumps(
                    BODY, ensure_ascii=False, separators=(",", ":"), allow_nan=False
                ).encode(),
                options={"timeout": timeout},
            )
            return response.json()

        async def floor() -> Any:
            async with session.post(f"{upstream}/chat/completions", json=BODY) as response:
                return await response.json()

        variants = {
            "sdk body=": body,
            "sdk body=, the adapter's client": adapter_body,
            "sdk content=": content,
            "aiohttp alone": floor,
        }
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
        try:
            for _ in range(args.rounds):
                for name, call in variants.items():
                    results[name].append(await _measure(call, args.calls))
        finally:
            await session.close()
            await client.close()
            await adapter.close()
    for name, runs in results.items():
        print(
            json.dumps(
                {
                    "variant": name,
                    "cpu_us_per_call": round(statistics.median(r[0] for r in runs)),
                    "p50_ms": round(statistics.median(r[1] for r in runs), 3),
                    "rounds_cpu_us": [round(r[0]) for r in runs],
                }
            )
        )


if __name__ == "__main__":
    asyncio.run(main())
