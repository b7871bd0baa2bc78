"""What a unary gRPC answer's separate initial metadata costs the server: a
grpc.aio server (uvloop, as the services run) whose one method answers 300
bytes either after `await context.send_initial_metadata(...)` (what the router
does, so that the edge can turn the served model and deployment into response
headers) or without it (grpc then sends empty initial metadata in the same
batch as the message and the status). A client in this process drives 16 calls
in flight; the server's CPU comes from /proc. Variants alternate per round.

    PYTHONPATH=services:gen python bench/initial_metadata.py --calls 20000 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import time
from pathlib import Path
from typing import Any

import grpc
import uvloop

from switchboard_stack.harness import free_port

LABELS = (("x-switchboard-model", "bench"), ("x-switchboard-deployment", "mock/bench"))
IN_FLIGHT = 16
TICK_US = 1_000_000 / os.sysconf("SC_CLK_TCK")


def _serve(port: int, separate: bool, ready: Any) -> None:
    async def answer(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        if separate:
            await context.send_initial_metadata(LABELS)
        context.set_trailing_metadata(LABELS)
        return b"x" * 300

    async def serve() -> None:
        server = grpc.aio.server()
        handler = grpc.method_handlers_generic_handler(
            "bench.Labels", {"Answer": grpc.unary_unary_rpc_method_handler(answer)}
        )
        server.add_generic_rpc_handlers((handler,))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        ready.set()
        await server.wait_for_termination()

    uvloop.run(serve())


async def _drive(port: int, calls: int) -> float:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        method: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            "/bench.Labels/Answer"
        )

        async def worker(n: int) -> None:
            for _ in range(n):
                await method(b"y" * 200)

        await asyncio.gather(*(worker(50) for _ in range(IN_FLIGHT)))  # warm-up
        started = time.perf_counter()
        await asyncio.gather(*(worker(calls // IN_FLIGHT) for _ in range(IN_FLIGHT)))
        return time.perf_counter() - started


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def run(separate: bool, calls: int) -> dict[str, float]:
    port = free_port()
    ready = multiprocessing.Event()
    server = multiprocessing.Process(target=_serve, args=(port, separate, ready))
    server.start()
    try:
        if not ready.wait(30):
            raise RuntimeError("the server did not start")
        before = _cpu_ticks(server.pid or 0)
        wall = uvloop.run(_drive(port, calls))
        spent = _cpu_ticks(server.pid or 0) - before
    finally:
        server.kill()
        server.join()
    done = calls // IN_FLIGHT * IN_FLIGHT
    return {"server_cpu_us_per_call": spent * TICK_US / done, "calls_per_s": done / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[float]] = {"separate": [], "none": []}
    for round_ in range(args.rounds):
        order = ("separate", "none") if round_ % 2 == 0 else ("none", "separate")
        for variant in order:
            r = run(variant == "separate", args.calls)
            results[variant].append(r["server_cpu_us_per_call"])
            print(json.dumps({"round": round_ + 1, "initial_metadata": variant, **r}))
    medians = {k: round(statistics.median(v), 1) for k, v in results.items()}
    print(json.dumps({"median_server_cpu_us_per_call": medians}))


if __name__ == "__main__":
    main()
