"""Streams, then calls at once, through the edge, on a real llama-server (`make
engines`): each of `--workers` threads sends a streamed chat, reads it to the
end, then at once a plain chat, `--pairs` times. llama.cpp's server closes its
connection after every streamed answer, though the answer announced
keep-alive, so the provider's next call may go out on a connection already
closed. Prints the calls that failed, by kind and status, and the plain
calls' p50 and p99.

    PYTHONPATH=services:gen python bench/engine_pairs.py --workers 4 --pairs 50

`--direct` leaves the router out: one after another, the same pairs straight
to llama-server through the OpenAI SDK, on its default aiohttp client and on
the client the provider's OpenAI adapter builds.

The stack is the one on PYTHONPATH: point it at another commit's tree (a git
worktree) to measure that commit with this same script.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import threading
import time
from collections import Counter

import httpx
import openai
from engine_bench import engine_stack

from switchboard_common.config import ProviderConfig
from switchboard_provider.adapters.openai_compat import OpenAIAdapter


def _pairs(edge: str, pairs: int, worker: int, failed: Counter[str], plain_ms: list[float]) -> None:
    with httpx.Client(timeout=120) as client:
        for i in range(pairs):
            # A prompt of its own per pair: llama-server's prompt cache stays out of it.
            streamed = {
                "model": "smol",
                "messages": [{"role": "user", "content": f"({worker}.{i}) Say hello."}],
                "max_tokens": 8,
                "stream": True,
            }
            with client.stream("POST", edge, json=streamed) as reply:
                for _ in reply.iter_lines():
                    pass
                if reply.status_code != 200:
                    failed[f"stream {reply.status_code}"] += 1
            plain = {
                "model": "smol",
                "messages": [{"role": "user", "content": f"({worker}.{i}) Name a colour."}],
                "max_tokens": 4,
            }
            started = time.perf_counter()
            answer = client.post(edge, json=plain)
            plain_ms.append((time.perf_counter() - started) * 1000)
            if answer.status_code != 200:
                failed[f"plain {answer.status_code}"] += 1


async def _direct(base_url: str, pairs: int) -> dict[str, dict[str, int]]:
    """Per client: the plain calls that failed, by error and its cause."""
    clients = {
        "sdk default aiohttp client": openai.AsyncOpenAI(
            base_url=base_url,
            api_key="none",
            max_retries=0,
            http_client=openai.DefaultAioHttpClient(),
        ),
        "the provider's client": OpenAIAdapter(
            ProviderConfig(name="engine", kind="openai", base_url=base_url)
        ).client,
    }
    failed: dict[str, dict[str, int]] = {}
    for name, client in clients.items():
        counts: Counter[str] = Counter()
        for i in range(pairs):
            stream = await client.chat.completions.create(
                model="smol",
                messages=[{"role": "user", "content": f"({i}) Say hello."}],
                max_tokens=8,
                stream=True,
            )
            async for _ in stream:
                pass
            try:
                await client.chat.completions.create(
                    model="smol",
                    messages=[{"role": "user", "content": f"({i}) Name a colour."}],
                    max_tokens=4,
                )
            except openai.APIError as exc:
                cause = exc.__cause__.__cause__ if exc.__cause__ else None
                counts[f"{type(exc).__name__} ({type(cause).__name__})"] += 1
        await client.close()
        failed[name] = dict(counts)
    return failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=50)
    parser.add_argument("--direct", action="store_true", help="straight to llama-server")
    args = parser.parse_args()
    if args.direct:
        with engine_stack() as engine:
            base_url = engine.direct.removesuffix("/chat/completions")
            failed_by_client = asyncio.run(_direct(base_url, args.pairs))
        print(json.dumps({"pairs": args.pairs, "failed": failed_by_client}))
        return 0
    failed: Counter[str] = Counter()
    plain_ms: list[float] = []
    with engine_stack() as engine:
        threads = [
            threading.Thread(target=_pairs, args=(engine.edge, args.pairs, w, failed, plain_ms))
            for w in range(args.workers)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    plain_ms.sort()
    print(
        json.dumps(
            {
                "pairs": args.workers * args.pairs,
                "workers": args.workers,
                "failed": dict(failed),
                "plain_p50_ms": round(statistics.median(plain_ms), 1),
                "plain_p99_ms": round(plain_ms[int(0.99 * (len(plain_ms) - 1))], 1),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
