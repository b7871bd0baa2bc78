"""Mixed traffic over every surface (/v1 and the seed APIs 001 to 004, unary
and streamed) is counted in the usage ledger exactly once per call, each row
with the surface it came through. Counted in ClickHouse itself, once the stack
is down (the embedded engine allows one opener at a time)."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

import clickhouse_connect
import httpx
import pytest

from switchboard_stack.harness import running_stack
from tests.e2e.seeds.keys import PROVIDER_KEY
from tests.support.openai_upstream import Behaviour, OpenAIUpstream

pytestmark = pytest.mark.e2e

PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082"
)
MESSAGES = [{"role": "user", "content": "count me once"}]

# path, body (or files), surface, streamed
CALLS: list[tuple[str, dict[str, Any], str]] = [
    ("/v1/chat/completions", {"model": "chat", "messages": MESSAGES}, "openai"),
    ("/v1/chat/completions", {"model": "chat", "messages": MESSAGES, "stream": True}, "openai"),
    ("/api/llm/chat", {"model": "chat", "messages": MESSAGES}, "qwen_chat"),
    ("/api/llm/chat", {"model": "chat", "messages": MESSAGES, "stream": True}, "qwen_chat"),
    ("/api/llm/generate", {"model": "chat", "messages": MESSAGES}, "multi_llm"),
    ("/api/v1/llm/generate/stream", {"model": "chat", "messages": MESSAGES}, "multi_llm"),
    ("/api/v1/chat/completions", {"messages": MESSAGES}, "vision_chat"),
    ("/api/v1/chat/completions", {"messages": MESSAGES, "stream": True}, "vision_chat"),
    ("/api/models/chat/chat/completions", {"messages": MESSAGES}, "inference_manager"),
    (
        "/api/v1/models/chat/chat/completions",
        {"messages": MESSAGES, "stream": True},
        "inference_manager",
    ),
]
ROUNDS = 3


def _summary_requests(edge: str) -> int:
    today = dt.datetime.now(dt.UTC).date().isoformat()
    reply = httpx.get(f"{edge}/v1/usage/summary", params={"start": today, "end": today})
    reply.raise_for_status()
    return int(reply.json()["total_requests"])


def test_every_call_counted_once_with_its_surface(upstream: OpenAIUpstream, tmp_path: Path) -> None:
    config = {
        "providers": [
            {
                "name": "loopback",
                "kind": "openai",
                "base_url": upstream.base_url,
                "api_key_env": "SEEDS_PROVIDER_KEY",
            }
        ],
        "models": [
            {
                "name": "chat",
                "capabilities": ["vision"],
                "deployments": [{"provider": "loopback", "model": "up"}],
            }
        ],
        "defaults": {"chat": "chat", "vision": "chat"},
    }
    env = {"SEEDS_PROVIDER_KEY": PROVIDER_KEY}
    expected: dict[str, int] = {}
    with running_stack(config, tmp_path, env) as stack:
        with httpx.Client(base_url=stack.edge_url, timeout=30) as client:
            for _ in range(ROUNDS):
                for path, body, surface in CALLS:
                    reply = client.post(path, json=body)
                    assert reply.status_code == 200, (path, reply.text)
                    expected[surface] = expected.get(surface, 0) + 1
                upstream.behaviour = Behaviour(
                    reply='{"objects": [{"name": "cat", "description": "a cat"}]}'
                )
                reply = client.post(
                    "/api/v1/vision/completions", files={"image": ("a.png", PNG, "image/png")}
                )
                assert reply.status_code == 200, reply.text
                upstream.behaviour = Behaviour()
                expected["vision_chat"] += 1
        total = sum(expected.values())
        assert len([c for c in upstream.served if c.completed]) == total
        deadline = time.monotonic() + 15
        while _summary_requests(stack.edge_url) < total:
            assert time.monotonic() < deadline, "usage did not reach ClickHouse in time"
            time.sleep(0.2)
        assert _summary_requests(stack.edge_url) == total
    ledger = clickhouse_connect.get_client(dsn=f"chdb://{stack.home / 'clickhouse'}")
    try:
        rows = ledger.query(
            "SELECT surface, count(), uniqExact(request_id) FROM switchboard.usage_events FINAL "
            "GROUP BY surface ORDER BY surface"
        ).result_rows
    finally:
        ledger.close()
    assert {surface: (count, requests) for surface, count, requests in rows} == {
        surface: (n, n) for surface, n in expected.items()
    }
