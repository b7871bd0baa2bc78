"""Seed 004's WebSocket monitor (/ws/monitor) and its alerts over model
metrics, a client written from the document alone with plain httpx and a
plain `websockets` client, through the real stack (Envoy's upgrade, every
service) and the REAL llama.cpp engine (`make engines`): login -> subscribe
-> create -> start (each status change seen on the socket) -> generate -> an
alert rule over response_time with a threshold below what the engine gives
-> it fires: the socket sees the system_alert, the webhook and the e-mail
arrive -> stop -> delete (seen on the socket too). And the socket's own
rules: GPU readings in the document's shape, a clear close code on a bad
message, heartbeats."""

from __future__ import annotations

import base64
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, ConnectionClosedError
from websockets.sync.client import ClientConnection, connect

from switchboard_common.accounts import hash_password
from switchboard_stack.harness import REPO, Stack, running_stack
from tests.conftest import eventually
from tests.e2e.seeds.keys import ADMIN_KEY, CLIENT_KEY
from tests.e2e.seeds.test_004_config import WEBHOOK_SECRET, _Hook, _Mailbox, mailbox, webhook
from tests.e2e.seeds.test_004_inference_manager import (
    ADMIN_PASSWORD,
    GPU_SCRIPT,
    TIMESTAMP,
    _login,
    _model_path,
)

pytestmark = [pytest.mark.e2e, pytest.mark.serial]
__all__ = ["mailbox", "webhook"]  # module fixtures, shared with test_004_config

WAIT_S = 90.0
MODEL = "smol-ws"
FAKE_VLLM = REPO / "tests" / "support" / "fake_vllm.py"
LIFE = ["created", "starting", "running", "stopping", "stopped", "deleted"]


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, webhook: str, mailbox: tuple[_Mailbox, int]
) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("seed004monitor")
    accounts = home / "accounts.txt"
    accounts.write_text(f"admin:admin:{hash_password(ADMIN_PASSWORD)}\n")
    gpu_script = home / "gpu.json"
    gpu_script.write_text(json.dumps(GPU_SCRIPT))
    # vLLM is the loopback stand-in (tests/support/fake_vllm.py), healthy at once;
    # llama.cpp is the real one.
    vllm = home / "vllm"
    vllm.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_VLLM}" "$@"\n')
    vllm.chmod(0o755)
    (home / "vllm-ready").touch()
    config = {
        "providers": [{"name": "mock", "kind": "mock"}],
        "models": [{"name": "mock-chat", "deployments": [{"provider": "mock", "model": "m"}]}],
        "keys": [{"name": "seed004", "key_env": "SEED004_CLIENT_KEY"}],
    }
    env = {
        "SWITCHBOARD_ADMIN_KEY": ADMIN_KEY,
        "SEED004_CLIENT_KEY": CLIENT_KEY,
        "SWITCHBOARD_ACCOUNTS_FILE": str(accounts),
        "SWITCHBOARD_ENGINE_HEALTH_INTERVAL_S": "0.25",
        "SWITCHBOARD_GPU_SCRIPT": str(gpu_script),
        "SWITCHBOARD_VLLM_BIN": str(vllm),
        "FAKE_VLLM_READY_FILE": str(home / "vllm-ready"),
        "SWITCHBOARD_GPU_INTERVAL_S": "0.5",
        # Model metrics read every half second, over the last minute of traffic.
        "SWITCHBOARD_MODEL_ALERT_INTERVAL_S": "0.5",
        "SWITCHBOARD_MODEL_ALERT_WINDOW": "1m",
        "SWITCHBOARD_GPU_MONITOR_PING_S": "0.5",
        "SWITCHBOARD_ALERT_WEBHOOK_URL": webhook,
        "SWITCHBOARD_ALERT_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "SWITCHBOARD_ALERT_SMTP_HOST": "127.0.0.1",
        "SWITCHBOARD_ALERT_SMTP_PORT": str(mailbox[1]),
        "SWITCHBOARD_ALERT_EMAIL_FROM": "gpu@switchboard.test",
        "SWITCHBOARD_ALERT_EMAIL_TO": "ops@switchboard.test",
    }
    with running_stack(config, home, env) as running:
        yield running


@pytest.fixture(scope="module")
def token(stack: Stack) -> str:
    return _login(stack, "admin", ADMIN_PASSWORD)


@pytest.fixture(scope="module")
def api(stack: Stack, token: str) -> Iterator[httpx.Client]:
    headers = {"authorization": f"Bearer {token}"}
    with httpx.Client(base_url=f"{stack.edge_url}/api", headers=headers, timeout=60) as client:
        yield client


class Feed:
    """The document's JavaScript client, in Python: connect (the token in the
    query, as a browser must), subscribe, and keep every message received."""

    def __init__(self, stack: Stack, token: str, events: list[str]) -> None:
        self.stack, self.token = stack, token
        url = stack.edge_url.replace("http://", "ws://") + f"/ws/monitor?token={token}"
        self.ws: ClientConnection = connect(url, open_timeout=15)
        self.messages: list[dict[str, Any]] = []
        self.closed: ConnectionClosed | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.ws.send(json.dumps({"action": "subscribe", "events": events}))
        eventually(lambda: self.of("subscribed"), timeout=15, what="the subscription")

    def _read(self) -> None:
        try:
            for frame in self.ws:
                self.messages.append(json.loads(frame))
        except ConnectionClosed as closed:
            self.closed = closed

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [m["data"] for m in list(self.messages) if m["type"] == kind]

    def statuses(self, model_id: str) -> list[str]:
        found = [d["status"] for d in self.of("model_status_update") if d["model_id"] == model_id]
        return [s for i, s in enumerate(found) if i == 0 or found[i - 1] != s]

    def close(self) -> None:
        self.ws.close()
        self._reader.join(timeout=10)


@pytest.fixture
def feed(stack: Stack, token: str) -> Iterator[Feed]:
    opened = Feed(stack, token, ["model_status", "gpu_metrics", "system_alerts"])
    try:
        yield opened
    finally:
        opened.close()


def test_gpu_readings_in_the_documents_shape(feed: Feed) -> None:
    readings = eventually(lambda: feed.of("gpu_metrics_update"), timeout=15, what="a reading")
    reading = readings[-1]
    assert reading["gpu_id"] == 0
    assert reading["utilization"] == 78.5
    assert reading["memory_used"] == 12288
    assert reading["temperature"] == 65
    assert TIMESTAMP.match(reading["timestamp"]), reading
    assert set(reading) == {
        "gpu_id",
        "utilization",
        "memory_used",
        "temperature",
        "timestamp",
        "gpu_uuid",
        "hostname",
    }
    # Sampled every 0.5 s: readings keep coming.
    count = len(readings)
    eventually(lambda: len(feed.of("gpu_metrics_update")) > count, timeout=15)
    # The application-level ping, for clients that cannot see protocol pings.
    feed.ws.send(json.dumps({"action": "ping"}))
    eventually(lambda: feed.of("pong"), timeout=15, what="the pong")


def test_heartbeats_close_a_client_that_stops_answering(stack: Stack, token: str) -> None:
    """A protocol ping every 0.5 s (SWITCHBOARD_GPU_MONITOR_PING_S); a client
    that does not answer it is closed within as long again. The client here
    is a bare socket that completes the handshake and then only reads."""
    host, port = stack.edge_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=15) as raw:
        raw.sendall(
            (
                f"GET /ws/monitor?token={token} HTTP/1.1\r\nHost: {host}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        received = b""
        while b"\r\n\r\n" not in received:
            received += raw.recv(4096)
        head, _, received = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        opcodes = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            chunk = raw.recv(4096)
            if not chunk:
                break  # the server hung up
            received += chunk
            # Server frames are unmasked; these are small (length < 126).
            while len(received) >= 2 and len(received) >= 2 + (received[1] & 0x7F):
                opcodes.append(received[0] & 0x0F)
                received = received[2 + (received[1] & 0x7F) :]
    assert opcodes[0] == 0x9, opcodes  # a ping first
    assert opcodes[-1] == 0x8, opcodes  # then, unanswered, a close


@pytest.mark.parametrize(
    ("frame", "code", "reason"),
    [
        (b"\x00\x01", 1003, "binary messages are not supported"),
        ("subscribe me", 1007, "messages must be JSON objects"),
        ("[1, 2]", 1007, "messages must be JSON objects"),
        ('{"action": "dance"}', 4400, "action must be subscribe, unsubscribe or ping"),
        ('{"action": "subscribe", "events": ["weather"]}', 4400, "events must be a list"),
        ('{"action": "subscribe", "events": "gpu_metrics"}', 4400, "events must be a list"),
    ],
)
def test_a_bad_message_closes_with_a_clear_code(
    stack: Stack, token: str, frame: str | bytes, code: int, reason: str
) -> None:
    url = stack.edge_url.replace("http://", "ws://") + "/ws/monitor"
    with connect(url, open_timeout=15, additional_headers={"x-api-key": ADMIN_KEY}) as ws:
        ws.send(frame)
        with pytest.raises(ConnectionClosedError) as closed:
            ws.recv(timeout=15)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == code
    assert closed.value.rcvd.reason.startswith(reason), closed.value.rcvd.reason


def test_a_model_metric_rule_fires_on_live_traffic(
    stack: Stack, feed: Feed, api: httpx.Client
) -> None:
    """Without an engine: the configured mock model's traffic is in the ledger
    too, so a rule that holds for any served request fires on it."""
    rule = api.post(
        "/config/alerts",
        json={"name": "served", "condition": "response_time < 1000", "severity": "info"},
    )
    assert rule.status_code == 201, rule.text
    rule_id = rule.json()["id"]
    reply = httpx.post(
        f"{stack.edge_url}/v1/chat/completions",
        headers={"authorization": f"Bearer {CLIENT_KEY}"},
        json={"model": "mock-chat", "messages": [{"role": "user", "content": "hi"}]},
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    [fired] = eventually(
        lambda: [a for a in _rule_firing(feed, "mock-chat", "firing") if a["rule"] == rule_id],
        timeout=WAIT_S,
        what="the alert on the socket",
    )
    assert fired["severity"] == "info"
    assert fired["metric"] == "response_time"
    assert 0 <= fired["value"] < 1000

    def stored() -> list[dict[str, Any]]:
        reply = httpx.get(
            f"{stack.edge_url}/v1/admin/gpu/alerts",
            headers={"authorization": f"Bearer {ADMIN_KEY}"},
            timeout=30,
        )
        assert reply.status_code == 200, reply.text
        return [a for a in reply.json()["alerts"] if a["alert_id"] == fired["alert_id"]]

    # Stored in ClickHouse like any alert, with its model.
    [kept] = eventually(stored, timeout=WAIT_S, what="the alert in ClickHouse")
    assert kept["model"] == "mock-chat"
    assert kept["rule_name"] == rule_id
    assert api.delete(f"/config/alerts/{rule_id}").status_code == 200
    eventually(
        lambda: [a for a in _rule_firing(feed, "mock-chat", "resolved") if a["rule"] == rule_id],
        timeout=30,
        what="the resolution",
    )


def relaying(feed: Feed, api: httpx.Client) -> None:
    """Wait until the gpu service follows the engine service (it connects once
    both are up): a model created and deleted shows on the socket. A probe
    made before the relay connected never shows; so another is made."""

    def probe() -> bool:
        name = f"probe-{time.monotonic_ns()}"
        created = api.post(
            "/models", json={"name": name, "framework": "vllm", "config": {"model_path": "org/p"}}
        )
        assert created.status_code == 201, created.text
        assert api.delete(f"/models/{name}").status_code == 200
        eventually(lambda: feed.statuses(name)[-1:] == ["deleted"], timeout=5, what=name)
        return True

    eventually(probe, timeout=60, what="the relay of model statuses")


def test_each_model_status_change_on_the_socket(feed: Feed, api: httpx.Client) -> None:
    """A model's life as the socket reports it (on the vLLM stand-in; the
    llama.cpp test below goes through the same with the real engine)."""
    relaying(feed, api)
    created = api.post(
        "/models", json={"name": "vllm-ws", "framework": "vllm", "config": {"model_path": "org/x"}}
    )
    assert created.status_code == 201, created.text
    assert api.post("/models/vllm-ws/start", json={}).status_code == 200
    eventually(lambda: feed.statuses("vllm-ws")[-1:] == ["running"], timeout=WAIT_S)
    running = [
        d
        for d in feed.of("model_status_update")
        if d["model_id"] == "vllm-ws" and d["status"] == "running"
    ]
    assert running[0]["health"] == "healthy"
    assert TIMESTAMP.match(running[0]["timestamp"]), running
    assert api.post("/models/vllm-ws/stop", json={}).status_code == 200
    eventually(lambda: feed.statuses("vllm-ws")[-1:] == ["stopped"], timeout=WAIT_S)
    assert api.delete("/models/vllm-ws").status_code == 200
    eventually(lambda: feed.statuses("vllm-ws")[-1:] == ["deleted"], timeout=30)
    assert feed.statuses("vllm-ws") == LIFE
    # A socket opened now sees the models as they are: this one is gone.
    later = Feed(feed.stack, feed.token, ["model_status"])
    try:
        assert "vllm-ws" not in {d["model_id"] for d in later.of("model_status_update")}
    finally:
        later.close()


def _rule_firing(feed: Feed, rule_model: str, state: str) -> list[dict[str, Any]]:
    return [
        a
        for a in feed.of("system_alert")
        if a.get("model") == rule_model and a.get("state") == state
    ]


@pytest.mark.timeout(400)
def test_model_status_changes_and_a_latency_alert_on_the_socket(
    feed: Feed, api: httpx.Client, mailbox: tuple[_Mailbox, int]
) -> None:
    model_path = _model_path()
    relaying(feed, api)
    created = api.post(
        "/models",
        json={
            "name": MODEL,
            "framework": "llama.cpp",
            "config": {"model_path": model_path, "n_ctx": 2048, "n_threads": 2},
        },
    )
    assert created.status_code == 201, created.text
    started = api.post(f"/models/{MODEL}/start", json={})
    assert started.status_code == 200, started.text
    eventually(lambda: feed.statuses(MODEL)[-1:] == ["running"], timeout=WAIT_S, what="running")
    assert feed.statuses(MODEL) == ["created", "starting", "running"]
    running = next(
        d
        for d in feed.of("model_status_update")
        if d["model_id"] == MODEL and d["status"] == "running"
    )
    assert running["health"] == "healthy"
    assert TIMESTAMP.match(running["timestamp"]), running

    # A rule over a model metric, with a threshold below what the engine gives.
    rule = api.post(
        "/config/alerts",
        json={
            "name": "响应时间过长",
            "condition": "response_time > 0.001",
            "severity": "critical",
            "enabled": True,
            "notification_channels": ["email", "webhook"],
        },
    )
    assert rule.status_code == 201, rule.text
    rule_id = rule.json()["id"]
    assert rule.json()["condition"] == "response_time > 0.001"

    def generated() -> bool:
        reply = api.post(f"/models/{MODEL}/generate", json={"prompt": "Hi", "max_tokens": 4})
        # Until the router has the engine's deployment: 503 MODEL_NOT_RUNNING.
        assert reply.status_code == 200, reply.text
        return True

    eventually(generated, timeout=WAIT_S, what="a generation")
    # Counted in the ledger within about a second; evaluated every half second.
    fired = eventually(
        lambda: _rule_firing(feed, MODEL, "firing"), timeout=WAIT_S, what="the alert on the socket"
    )
    alert = fired[0]
    assert alert["severity"] == "critical"
    assert alert["rule"] == rule_id
    assert alert["metric"] == "response_time"
    assert alert["value"] > 0.001
    assert alert["message"].startswith("response_time ")
    assert f"on model {MODEL}" in alert["message"]
    assert alert["alert_id"]
    assert TIMESTAMP.match(alert["timestamp"]), alert

    def hooked(state: str) -> list[dict[str, Any]]:
        return [
            m["data"]
            for m in _Hook.received
            if m["data"]["rule_name"] == rule_id
            and m["data"]["state"] == state
            # Only the engine's: the rule may fire for other traffic in the window too.
            and m["data"].get("model") == MODEL
        ]

    [sent] = eventually(lambda: hooked("ALERT_STATE_FIRING"), timeout=30, what="the webhook")
    assert sent["alert_id"] == alert["alert_id"]
    assert sent["model"] == MODEL
    mail = eventually(
        lambda: [m for m in mailbox[0].messages if rule_id in str(m["Subject"])],
        timeout=30,
        what="the e-mail",
    )
    assert str(mail[0]["Subject"]).startswith(f"[critical] {rule_id} firing on ")

    # The rule deleted: the alert resolves, on the socket and the webhook.
    assert api.delete(f"/config/alerts/{rule_id}").status_code == 200
    eventually(lambda: _rule_firing(feed, MODEL, "resolved"), timeout=30, what="the resolution")
    eventually(lambda: hooked("ALERT_STATE_RESOLVED"), timeout=30, what="the resolution's webhook")
    assert len(hooked("ALERT_STATE_FIRING")) == 1

    stopped = api.post(f"/models/{MODEL}/stop", json={"force": False, "timeout": 60})
    assert stopped.status_code == 200, stopped.text
    eventually(lambda: feed.statuses(MODEL)[-1:] == ["stopped"], timeout=WAIT_S, what="stopped")
    assert api.delete(f"/models/{MODEL}").status_code == 200
    eventually(lambda: feed.statuses(MODEL)[-1:] == ["deleted"], timeout=30, what="deleted")
    assert feed.statuses(MODEL) == LIFE
    assert feed.closed is None
