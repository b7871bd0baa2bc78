"""No secret is ever written down. The stack runs at DEBUG with a provider key,
a client key from the config file and a client key created through the admin
API; after chats, streams, embeddings, upstream errors (including one that
echoes the key) and admin calls, every byte the stack kept is searched: each
component's log, every Kafka message, every ClickHouse row, the registry's
database and the usage outbox. Zero matches."""

from __future__ import annotations

import functools
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import clickhouse_connect
import httpx
import openai
import pytest
from aiokafka import AIOKafkaConsumer
from openai.types.chat import ChatCompletionMessageParam

from switchboard_common.pipeline.topics import TOPICS as DECLARED
from switchboard_stack.components import SERVICES
from switchboard_stack.harness import Stack, running_stack
from tests.conftest import UPSTREAM_KEY, eventually, process_gone
from tests.support.openai_upstream import Behaviour, OpenAIUpstream

pytestmark = pytest.mark.e2e

PROVIDER_KEY = UPSTREAM_KEY
CLIENT_KEY = "client-secret-from-the-config-file-4242"
ADMIN_KEY = "admin-secret-never-logged-2424"
TOPICS = tuple(t.name for t in DECLARED)


@pytest.fixture(scope="module")
def stack(upstream: OpenAIUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    config = {
        "providers": [
            {
                "name": "loopback",
                "kind": "openai",
                "base_url": upstream.base_url,
                "api_key_env": "SECRETS_E2E_PROVIDER_KEY",
                "timeout_s": 2,
            }
        ],
        "models": [
            {
                "name": "chat",
                "deployments": [{"provider": "loopback", "model": "up"}],
                "pricing": {"input_per_1k": 1, "output_per_1k": 1},
            },
            {
                "name": "embed",
                "kind": "embedding",
                "deployments": [{"provider": "loopback", "model": "emb"}],
            },
        ],
        "keys": [{"name": "team", "key_env": "SECRETS_E2E_CLIENT_KEY"}],
    }
    env = {
        "SECRETS_E2E_PROVIDER_KEY": PROVIDER_KEY,
        "SECRETS_E2E_CLIENT_KEY": CLIENT_KEY,
        "SWITCHBOARD_ADMIN_KEY": ADMIN_KEY,
        "SWITCHBOARD_LOG_LEVEL": "DEBUG",
        "SWITCHBOARD_BREAKER_CONSECUTIVE_FAILURES": "1000",
    }
    with running_stack(config, tmp_path_factory.mktemp("secrets"), env) as running:
        yield running


def _traffic(stack: Stack, upstream: OpenAIUpstream) -> str:
    """Exercise every path that could leak; returns the admin-created key's secret."""
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    created = httpx.post(
        f"{stack.edge_url}/v1/admin/keys", json={"name": "made-live"}, headers=admin, timeout=10
    )
    created.raise_for_status()
    live_secret: str = created.json()["secret"]
    clients: list[openai.OpenAI] = []
    for key in (CLIENT_KEY, live_secret):
        client = openai.OpenAI(base_url=f"{stack.edge_url}/v1", api_key=key, max_retries=0)
        clients.append(client)
        # The live key reaches the router within a second.
        eventually(functools.partial(_accepted, client), timeout=5, what="the new key accepted")
        messages: list[ChatCompletionMessageParam] = [
            {"role": "user", "content": "keep my secrets"}
        ]
        client.chat.completions.create(model="chat", messages=messages)
        for _ in client.chat.completions.create(
            model="chat",
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
        ):
            pass
        client.embeddings.create(model="embed", input=["secret-free text"])
        # Upstream errors: a 500, and a 401 (the upstream complains about our key).
        for status in (500, 401):
            upstream.behaviour = Behaviour(mode="status", status=status)
            with pytest.raises(openai.APIStatusError):
                client.chat.completions.create(model="chat", messages=messages)
        upstream.behaviour = Behaviour()
    # Wrong keys are logged as failures, never as the presented value.
    with (
        openai.OpenAI(
            base_url=f"{stack.edge_url}/v1", api_key=CLIENT_KEY + "x", max_retries=0
        ) as wrong,
        pytest.raises(openai.AuthenticationError),
    ):
        wrong.models.list()
    for client in clients:
        client.close()
    httpx.get(f"{stack.edge_url}/v1/admin/models", headers=admin, timeout=10).raise_for_status()
    return live_secret


def _kafka_payloads(stack: Stack) -> bytes:
    import asyncio

    async def read() -> bytes:
        consumer = AIOKafkaConsumer(
            *TOPICS,
            bootstrap_servers=stack.env["KAFKA_BOOTSTRAP"],
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
        )
        await consumer.start()
        out = bytearray()
        try:
            while True:
                batch = await consumer.getmany(timeout_ms=1000)
                if not batch:
                    break
                for messages in batch.values():
                    for m in messages:
                        out += (m.key or b"") + (m.value or b"")
        finally:
            await consumer.stop()
        return bytes(out)

    return asyncio.run(read())


def _clickhouse_rows(home: Path) -> tuple[str, set[int]]:
    """Every row of every table, read with the usage service stopped (the
    embedded engine allows one process at a time); and the registry versions
    the usage rows were served under."""
    client = clickhouse_connect.get_client(dsn=f"chdb://{home / 'clickhouse'}")
    try:
        versions = {
            int(v)
            for (v,) in client.query(
                "SELECT DISTINCT config_version FROM switchboard.usage_events"
            ).result_rows
        }
        text = []
        for (table,) in client.query(
            "SELECT name FROM system.tables WHERE database = 'switchboard' "
            "AND engine NOT LIKE '%View%'"
        ).result_rows:
            # Table names come from system.tables, not from input.
            result = client.query(f"SELECT * FROM switchboard.`{table}`")  # noqa: S608
            text.append(repr(result.result_rows))
        return "\n".join(text), versions
    finally:
        client.close()


def _stop(stack: Stack, component: str) -> None:
    pid = stack.pids()[component]
    os.kill(pid, signal.SIGTERM)
    eventually(lambda: process_gone(pid), timeout=30, what=f"{component} stopping")


def _accepted(client: openai.OpenAI) -> bool:
    try:
        client.models.list()
    except openai.AuthenticationError:
        return False
    return True


def test_no_secret_in_logs_kafka_clickhouse_or_databases(
    stack: Stack, upstream: OpenAIUpstream
) -> None:
    live_secret = _traffic(stack, upstream)
    secrets = {
        "provider key": PROVIDER_KEY,
        "config client key": CLIENT_KEY,
        "admin key": ADMIN_KEY,
        "admin-created client key": live_secret,
    }

    # Usage lands in ClickHouse within seconds: wait for it before looking.
    def landed() -> bool:
        summary = httpx.get(
            f"{stack.edge_url}/v1/usage/summary",
            headers={"authorization": f"Bearer {ADMIN_KEY}"},
            timeout=10,
        ).json()
        assert summary["total_requests"] >= 6, summary
        return True

    eventually(landed, timeout=30, interval=0.2, what="usage in ClickHouse")

    kept: dict[str, bytes] = {
        component: stack.log(component).encode() for component in (*SERVICES, "envoy", "broker")
    }
    kept["kafka"] = _kafka_payloads(stack)
    assert kept["kafka"], "no Kafka payloads were read: the search would prove nothing"
    _stop(stack, "usage")
    _stop(stack, "registry")
    rows, versions = _clickhouse_rows(stack.home)
    kept["clickhouse"] = rows.encode()
    # Every usage record says which registry version served it (the bootstrap is 1,
    # the admin-created key made later ones).
    assert versions
    assert 0 not in versions
    assert b"chat" in kept["clickhouse"], "no usage rows were read"
    for path in stack.home.rglob("*"):
        if path.is_file() and path.suffix in {".db", ".sqlite", ".db-wal", ".sqlite-wal", ".wal"}:
            kept[str(path.relative_to(stack.home))] = path.read_bytes()
    assert any("registry" in name for name in kept), sorted(kept)
    found = [
        f"{what} in {where}"
        for where, data in kept.items()
        for what, secret in secrets.items()
        if secret.encode() in data
    ]
    assert found == []
    stack.restart("registry")
    stack.restart("usage")
