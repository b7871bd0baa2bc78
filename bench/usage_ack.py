"""How long the router waits for a usage record to be durable, and what the
usage service spends on it: the bench stack's real usage service (outbox on
disk, relay, broker, sink, embedded ClickHouse) asked over its RecordUsage
stream as the router asks it, one record at a time, each awaited until its ack
(what a call at c=1 waits for before its reply goes), then --concurrency
writers at once (the router under load: records that arrive together share a
group commit and an ack message). Per variant and round: the ack's p50 and
p99 wall time, and the usage service's CPU µs per record (all its threads).
--baseline REF runs REF's code beside this checkout's, the rounds
interleaved, and prints the medians of each.

    PYTHONPATH=services:gen python bench/usage_ack.py --records 2000 --rounds 3 [--baseline REF]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import run as bench
from sink_bench import usage_record

from switchboard.usage.v1 import usage_pb2, usage_pb2_grpc

TICK_US = 1e6 / os.sysconf("SC_CLK_TCK")
WARM = 200


def _record(i: int) -> usage_pb2.TracedUsageRecord:
    return usage_pb2.TracedUsageRecord(record=usage_record(i))


class Ledger:
    """One RecordUsage stream, written as the router's reporter writes it:
    records queued while a write was in flight go out together in the next
    message. Each record's ack resolves its future."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.aio.insecure_channel(address)
        self.call = usage_pb2_grpc.UsageLedgerServiceStub(self.channel).RecordUsage()
        self.waiting: dict[str, asyncio.Future[None]] = {}
        self.queue: asyncio.Queue[usage_pb2.TracedUsageRecord] = asyncio.Queue()
        self.reader = asyncio.ensure_future(self._read())
        self.sender = asyncio.ensure_future(self._send())

    async def _read(self) -> None:
        async for response in self.call:
            for ack in response.acks:
                self.waiting.pop(ack.event_id).set_result(None)

    async def _send(self) -> None:
        while True:
            records = [await self.queue.get()]
            while not self.queue.empty():
                records.append(self.queue.get_nowait())
            await self.call.write(usage_pb2.RecordUsageRequest(records=records))

    async def record(self, i: int) -> float:
        traced = _record(i)
        done = self.waiting[traced.record.event_id] = asyncio.get_running_loop().create_future()
        start = time.perf_counter()
        self.queue.put_nowait(traced)
        await done
        return time.perf_counter() - start

    async def close(self) -> None:
        self.sender.cancel()
        await asyncio.wait({self.sender})
        await self.call.done_writing()
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await asyncio.wait_for(self.reader, 5)
        await self.channel.close()


async def _loop(
    address: str, pids: list[int], records: int, concurrency: int, streams: int
) -> dict[str, Any]:
    ledgers = [Ledger(address) for _ in range(streams)]
    walls: list[float] = []

    async def writer(ledger: Ledger, n: int, keep: bool) -> None:
        for i in range(n):
            wall = await ledger.record(i)
            if keep:
                walls.append(wall)

    def writers(n: int, keep: bool) -> list[Any]:
        return [writer(ledgers[i % streams], n // concurrency, keep) for i in range(concurrency)]

    await asyncio.gather(*writers(WARM, False))
    cpu = sum(bench._proc_cpu_ticks(pid) for pid in pids)
    start = time.perf_counter()
    await asyncio.gather(*writers(records, True))
    elapsed = time.perf_counter() - start
    used = (sum(bench._proc_cpu_ticks(pid) for pid in pids) - cpu) * TICK_US
    for ledger in ledgers:
        await ledger.close()
    walls.sort()
    return {
        "concurrency": concurrency,
        "streams": streams,
        "ack_p50_ms": round(statistics.median(walls) * 1e3, 3),
        "ack_p99_ms": round(walls[int(len(walls) * 0.99)] * 1e3, 3),
        "records_per_s": round(len(walls) / elapsed),
        "usage_cpu_us_per_record": round(used / len(walls), 1),
    }


def _measure(
    tree: Path | None, records: int, concurrency: int, streams: int
) -> list[dict[str, Any]]:
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="usage-ack-")))
        upstream, _ = stack.enter_context(bench.mock_upstream())
        edge, _, _ = stack.enter_context(bench.switchboard(upstream, tmp, tree=tree))
        pids = [edge.pids["usage"]]
        return [
            asyncio.run(_loop(edge.usage, pids, records, c, s))
            for c, s in ((1, 1), (concurrency, 1), (concurrency, streams))
        ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", metavar="REF", help="REF's code beside this checkout's")
    args = parser.parse_args()
    results: dict[str, list[list[dict[str, Any]]]] = {}
    with contextlib.ExitStack() as stack:
        variants: dict[str, Path | None] = {"now": None}
        if args.baseline:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="usage-ack-base-")))
            variants = {
                args.baseline: stack.enter_context(bench.baseline_tree(args.baseline, tmp)),
                "now": None,
            }
        for round_ in range(args.rounds):
            # The order alternates per round, so a drifting machine favours neither.
            order = list(variants.items())
            for name, tree in order if round_ % 2 == 0 else reversed(order):
                rows = _measure(tree, args.records, args.concurrency, args.streams)
                results.setdefault(name, []).append(rows)
                for row in rows:
                    print(json.dumps({"round": round_ + 1, "code": name, **row}), flush=True)
    for name, runs in results.items():
        labels = (
            "c=1",
            f"c={args.concurrency}, 1 stream",
            f"c={args.concurrency}, {args.streams} streams",
        )
        for index, label in enumerate(labels):
            rows = [run[index] for run in runs]
            medians = {
                key: statistics.median(row[key] for row in rows)
                for key in ("ack_p50_ms", "ack_p99_ms", "records_per_s", "usage_cpu_us_per_record")
            }
            print(json.dumps({"code": name, "at": label, "median": medians}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
