"""Usage accounting end to end: every upstream call is counted exactly once in
ClickHouse, through broker outages, a broker that loses what it acknowledged
(killed and restarted empty, five times in a row, and once while the sink is
down), usage-service crashes, a sink crash between insert and offset commit, and
a replay of the topic from offset 0.

The ground truth is what the loopback upstream itself served."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from openai.types.chat import ChatCompletionMessageParam

from switchboard.usage.v1 import events_pb2
from switchboard_common.pipeline.topics import DLQ_TOPIC, USAGE_TOPIC
from switchboard_stack.harness import Stack, running_stack
from tests.conftest import UPSTREAM_KEY, eventually, process_gone
from tests.support.openai_upstream import OpenAIUpstream
from tests.support.usage_faults import MODULE as FAULTS

# Faults, restarts and wall-clock bounds: not beside another stack.
pytestmark = [pytest.mark.e2e, pytest.mark.serial]

KEY = UPSTREAM_KEY
# Time the broker stays unreachable (the 30 s): sends time out and retry.
BROKER_PAUSE_S = 30.0
# Published records unconfirmed this long are looked up in ClickHouse (and
# republished if missing): seconds, as locally.
CONFIRM_AFTER_S = "2"


@pytest.fixture(scope="module")
def stack(upstream: OpenAIUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    config = {
        "providers": [
            {
                "name": "loopback",
                "kind": "openai",
                "base_url": upstream.base_url,
                "api_key_env": "USAGE_E2E_KEY",
            }
        ],
        "models": [
            {
                "name": "metered",
                "deployments": [{"provider": "loopback", "model": "up"}],
                "pricing": {"input_per_1k": 0.5, "output_per_1k": 1.5, "currency": "USD"},
            }
        ],
    }
    env = {
        "USAGE_E2E_KEY": KEY,
        "SWITCHBOARD_KAFKA_SEND_TIMEOUT_S": "2",
        "SWITCHBOARD_OUTBOX_CONFIRM_AFTER_S": CONFIRM_AFTER_S,
    }
    with running_stack(config, tmp_path_factory.mktemp("usage"), env) as running:
        yield running


def _summary(stack: Stack) -> dict[str, Any]:
    today = dt.datetime.now(dt.UTC).date().isoformat()
    reply = httpx.get(f"{stack.edge_url}/v1/usage/summary", params={"start": today, "end": today})
    reply.raise_for_status()
    result: dict[str, Any] = reply.json()
    return result


def _wait_counted(stack: Stack, requests: int, tokens: int, within_s: float) -> dict[str, Any]:
    def counted() -> dict[str, Any]:
        summary = _summary(stack)
        assert summary["total_requests"] >= requests, summary
        assert summary["total_tokens"] >= tokens, summary
        return summary

    return eventually(counted, timeout=within_s, interval=0.2, what="usage counted")


def _traffic(stack: Stack, n: int) -> None:
    with openai.OpenAI(base_url=f"{stack.edge_url}/v1", api_key="x", max_retries=0) as client:
        for i in range(n):
            messages: list[ChatCompletionMessageParam] = [
                {"role": "user", "content": f"count me {i} " + "word " * (i % 7)}
            ]
            if i % 3 == 0:
                for _ in client.chat.completions.create(
                    model="metered",
                    messages=messages,
                    stream=True,
                ):
                    pass
            else:
                client.chat.completions.create(model="metered", messages=messages)


def _truth(upstream: OpenAIUpstream) -> tuple[int, int]:
    """What the upstream served in full. Read once it has settled: the
    upstream marks a stream completed on its own thread, a moment after the
    client has read the last chunk, so a count taken at once can miss it."""

    def settled() -> tuple[int, int] | None:
        before = [c for c in upstream.served if c.completed]
        time.sleep(0.3)  # what counts is a count that holds still, not the sleep
        after = [c for c in upstream.served if c.completed]
        if len(after) != len(before):
            return None
        return len(after), sum(c.prompt_tokens + c.completion_tokens for c in after)

    found = eventually(settled, timeout=10, what="the upstream settled")
    assert found is not None
    return found


def test_every_call_counted_exactly_once_through_faults(
    stack: Stack, upstream: OpenAIUpstream
) -> None:
    _traffic(stack, 15)

    # The broker stops answering: serving goes on, events wait in the outbox.
    broker = stack.pids()["broker"]
    os.kill(broker, signal.SIGSTOP)
    try:
        started = time.monotonic()
        _traffic(stack, 15)
        assert time.monotonic() - started < BROKER_PAUSE_S, "serving waited on the broker"
        time.sleep(max(0.0, BROKER_PAUSE_S - (time.monotonic() - started)))
    finally:
        os.kill(broker, signal.SIGCONT)

    # The usage service dies hard; the router holds unacked records and resends.
    stack.restart("usage", kill=True)
    _traffic(stack, 10)

    # ClickHouse refuses inserts for a while: the sink retries the same batch,
    # uncommitted, until it takes it.
    stack.restart("usage", module=FAULTS, SWITCHBOARD_FAULT_CLICKHOUSE_DOWN_S="4")
    _traffic(stack, 5)
    so_far = _truth(upstream)
    recovered = _wait_counted(stack, *so_far, within_s=60)
    assert (recovered["total_requests"], recovered["total_tokens"]) == so_far
    assert "ClickHouse is unavailable" in stack.log("usage"), "the fault never fired"
    stack.restart("usage")

    # The sink dies between an insert and its offset commit.
    stack.restart("usage", module=FAULTS, SWITCHBOARD_FAULT_SINK_CRASH_AFTER_INSERT="1")
    crashing = stack.pids()["usage"]
    _traffic(stack, 5)
    eventually(lambda: process_gone(crashing), timeout=30, what="the fault point firing")
    stack.restart("usage")

    # An operator replays the whole topic.
    stack.restart("usage", SWITCHBOARD_SINK_REPLAY="1")

    calls, tokens = _truth(upstream)
    assert calls == 50
    summary = _wait_counted(stack, calls, tokens, within_s=60)
    assert summary["total_requests"] == calls
    assert summary["total_tokens"] == tokens
    # Nothing more arrives later: no event was counted twice.
    time.sleep(1.5)
    settled = _summary(stack)
    assert (settled["total_requests"], settled["total_tokens"]) == (calls, tokens)
    assert settled["by_model"]["metered"]["cost"] > 0


def _metric(stack: Stack, name: str, **labels: str) -> float:
    """One sample of the usage service's Prometheus metrics (0 when absent)."""
    port = stack.env["SWITCHBOARD_USAGE_METRICS_PORT"]
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    selector = ",".join(f'{k}="{v}"' for k, v in labels.items())
    wanted = f"{name}{{{selector}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _wait_until(check: Callable[[], bool], what: str, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _outbox_empty(stack: Stack) -> bool:
    return (
        sum(
            _metric(stack, "switchboard_outbox_records", outbox="usage", state=state)
            for state in ("pending", "published")
        )
        == 0
    )


def _kill_broker_and_restart_it_empty(stack: Stack) -> None:
    # SIGKILL at once (the restart command would take a second to start): the
    # local broker keeps messages in memory only, so what it acked and the
    # sink had not read yet is gone, and it comes back without topics.
    broker = stack.pids()["broker"]
    os.kill(broker, signal.SIGKILL)
    eventually(lambda: process_gone(broker), timeout=10, what="the broker gone")
    stack.restart("broker")


def _assert_ledger_matches_upstream(stack: Stack, upstream: OpenAIUpstream) -> None:
    calls, tokens = _truth(upstream)
    summary = _wait_counted(stack, calls, tokens, within_s=90)
    assert (summary["total_requests"], summary["total_tokens"]) == (calls, tokens)
    # Every record confirmed stored and let go; still nothing counted twice.
    _wait_until(lambda: _outbox_empty(stack), "the outbox to empty", within_s=60)
    settled = _summary(stack)
    assert (settled["total_requests"], settled["total_tokens"]) == (calls, tokens)


def test_usage_performance_reports_latency(stack: Stack) -> None:
    reply = httpx.get(f"{stack.edge_url}/v1/usage/performance", params={"window": "1h"})
    assert reply.status_code == 200
    body = reply.json()
    assert body["total_requests"] >= 1
    assert 0 < body["latency_ms"]["p50"] <= body["latency_ms"]["p99"]
    assert body["success_rate"] == 1


@pytest.mark.parametrize(
    ("path", "params", "param"),
    [
        ("summary", {"start": "2026-13-01"}, "start"),
        ("summary", {"start": "2026-11-02", "end": "2026-11-01"}, "end"),
        ("performance", {"window": "forever"}, "window"),
    ],
)
def test_usage_api_rejects_bad_input(
    stack: Stack, path: str, params: dict[str, str], param: str
) -> None:
    reply = httpx.get(f"{stack.edge_url}/v1/usage/{path}", params=params)
    assert reply.status_code == 400
    assert reply.json()["error"]["param"] == param


def test_poison_message_goes_to_the_dead_letter_topic(
    stack: Stack, upstream: OpenAIUpstream
) -> None:
    """An undecodable message is set aside with its error and never stalls the sink."""
    poison = b"\x00not a usage event"
    bootstrap = stack.env["KAFKA_BOOTSTRAP"]

    async def publish_then_find_letter() -> events_pb2.UsageDeadLetter:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(USAGE_TOPIC, poison, key=b"poison")
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            DLQ_TOPIC, bootstrap_servers=bootstrap, auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            async with asyncio.timeout(30):
                while True:
                    batches = await consumer.getmany(timeout_ms=500)
                    for messages in batches.values():
                        for message in messages:
                            letter = events_pb2.UsageDeadLetter.FromString(message.value)
                            if letter.key == b"poison":
                                return letter
        finally:
            await consumer.stop()

    letter = asyncio.run(publish_then_find_letter())
    assert letter.value == poison
    assert letter.topic == USAGE_TOPIC
    assert letter.error
    # The partition moved on: a new call is still counted.
    before = _summary(stack)["total_requests"]
    _traffic(stack, 1)
    calls, tokens = _truth(upstream)
    summary = _wait_counted(stack, calls, tokens, within_s=30)
    assert summary["total_requests"] == before + 1 == calls


def test_usage_timeseries_buckets_add_up_to_the_summary(
    stack: Stack, upstream: OpenAIUpstream
) -> None:
    _traffic(stack, 3)
    # All of it counted (earlier tests' calls alone would satisfy a lower bound,
    # and these three could land between the summary and the timeseries read).
    summary = _wait_counted(stack, *_truth(upstream), within_s=30)
    reply = httpx.get(
        f"{stack.edge_url}/v1/usage/timeseries", params={"window": "1h", "interval": "1m"}
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert (body["window"], body["interval"]) == ("1h", "1m")
    points = body["points"]
    assert points
    assert {p["model"] for p in points} == {"metered"}
    assert all(p["time"].endswith(":00Z") for p in points)
    # Everything today is within the hour this module ran in.
    assert sum(p["requests"] for p in points) == summary["total_requests"]
    assert sum(p["tokens"] for p in points) == summary["total_tokens"]

    bad = httpx.get(f"{stack.edge_url}/v1/usage/timeseries", params={"interval": "7s"})
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "interval"


# The broker drills run last: after a restart, the local broker (Tansu, memory
# storage) now and then fails a produce that races another onto the same empty
# partition (UnknownError; the relay retries it, a test's one-off producer would not).


def test_acknowledged_messages_the_broker_loses_are_republished(
    stack: Stack, upstream: OpenAIUpstream
) -> None:
    """Traffic, then the broker dies (restarting empty) at once after the last
    reply, five times: each time the ledger comes back to exactly what the
    upstream served, nothing lost and nothing counted twice.

    Whether a kill catches records the broker acknowledged but the sink had not
    stored yet is timing: the sink flushes every 100 ms (issue 20), so on a fast
    machine it may drain before every kill, and this test cannot require it.
    test_broker_restarted_empty_while_the_sink_is_down makes that loss certain
    and requires the republishing."""
    for _ in range(5):
        _traffic(stack, 8)
        _kill_broker_and_restart_it_empty(stack)
        _assert_ledger_matches_upstream(stack, upstream)


def test_broker_restarted_empty_while_the_sink_is_down(
    stack: Stack, upstream: OpenAIUpstream
) -> None:
    """The sink stores nothing (ClickHouse refuses it) while every record is
    published and acked; the broker then loses them all. Once the sink is back,
    the outbox republishes them and each is counted once."""
    sink_down = stack.home / "sink-down"
    sink_down.touch()
    stack.restart("usage", module=FAULTS, SWITCHBOARD_FAULT_CLICKHOUSE_DOWN_WHILE=str(sink_down))
    try:
        before = _summary(stack)
        _traffic(stack, 10)
        _wait_until(
            lambda: (
                _metric(stack, "switchboard_outbox_records", outbox="usage", state="pending") == 0
                and _metric(stack, "switchboard_outbox_records", outbox="usage", state="published")
                >= 10
            ),
            "every record published",
            within_s=60,
        )
        assert _summary(stack)["total_requests"] == before["total_requests"], "the sink was up"
        _kill_broker_and_restart_it_empty(stack)
    finally:
        sink_down.unlink()
    _assert_ledger_matches_upstream(stack, upstream)
    assert "ClickHouse is unavailable" in stack.log("usage"), "the sink was never down"
    # The ten the broker lost came back through the outbox (this usage process's count).
    assert _metric(stack, "switchboard_outbox_republished_total", outbox="usage") >= 10
    stack.restart("usage")
    _assert_ledger_matches_upstream(stack, upstream)
