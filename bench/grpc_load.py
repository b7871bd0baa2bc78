"""gRPC load against the router, printing the same JSON summary as loadgen.mjs.

Closed loop (--concurrency N) or open loop (--rate R, latency from each
request's due time). --stream uses the typed StreamChatCompletion and reports
TTFT and gaps between chunks."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import grpc
import uvloop

from switchboard.common.v1 import openai_pb2
from switchboard.router.v1 import router_pb2, router_pb2_grpc


def _summary(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    s = sorted(values)

    def pct(q: float) -> float:
        return s[min(len(s) - 1, int(q * len(s)))]

    return {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "max": s[-1]}


async def main(opts: argparse.Namespace, body: dict[str, Any]) -> dict[str, Any]:
    params = openai_pb2.ChatCompletionParams(model=body["model"])
    for m in body["messages"]:
        params.messages.add(role=m["role"]).content.string_value = m["content"]
    channel = grpc.aio.insecure_channel(opts.address)
    stub = router_pb2_grpc.RouterServiceStub(channel)
    unary = router_pb2.CreateChatCompletionRequest(params=params)
    streaming = router_pb2.StreamChatCompletionRequest(params=params)
    latencies: list[float] = []
    ttfts: list[float] = []
    gaps: list[float] = []
    errors = 0

    async def once(started: float) -> None:
        nonlocal errors
        try:
            if opts.stream:
                first = last = 0.0
                async for _ in stub.StreamChatCompletion(streaming, timeout=60):
                    now = time.perf_counter()
                    if first:
                        gaps.append((now - last) * 1000)
                    else:
                        first = now
                        ttfts.append((now - started) * 1000)
                    last = now
            else:
                await stub.CreateChatCompletion(unary, timeout=60)
        except grpc.aio.AioRpcError:
            errors += 1
            return
        latencies.append((time.perf_counter() - started) * 1000)

    t0 = time.perf_counter()
    if opts.mode == "open":
        interval = 1 / opts.rate
        total = round(opts.rate * opts.duration)
        start = time.perf_counter() + 0.005
        tasks = []
        for i in range(total):
            due = start + i * interval
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(once(due)))
        await asyncio.gather(*tasks)
    else:
        deadline = t0 + opts.duration
        sent = 0

        async def worker() -> None:
            nonlocal sent
            while (sent < opts.requests) if opts.requests else (time.perf_counter() < deadline):
                sent += 1
                await once(time.perf_counter())

        await asyncio.gather(*(worker() for _ in range(opts.concurrency)))
    elapsed = time.perf_counter() - t0
    await channel.close()
    return {
        "mode": opts.mode,
        "concurrency": opts.concurrency,
        "target_rate": opts.rate,
        "requests": len(latencies) + errors,
        "ok": len(latencies),
        "errors": errors,
        "duration_s": elapsed,
        "rps": len(latencies) / elapsed,
        "latency_ms": _summary(latencies),
        "ttft_ms": _summary(ttfts) if opts.stream else None,
        "interchunk_ms": _summary(gaps) if opts.stream else None,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--address", required=True)
    parser.add_argument("--body", required=True)
    parser.add_argument("--mode", default="closed", choices=["closed", "open"])
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--rate", type=float, default=0)
    parser.add_argument("--duration", type=float, default=5)
    parser.add_argument("--requests", type=int, default=0)
    parser.add_argument("--stream", default="false")
    parser.add_argument("--max-in-flight", type=int, default=0, help="accepted for loadgen parity")
    args = parser.parse_args()
    args.stream = args.stream == "true"
    request_body = json.loads(Path(args.body).read_text(encoding="utf-8"))
    print(json.dumps(uvloop.run(main(args, request_body))))
