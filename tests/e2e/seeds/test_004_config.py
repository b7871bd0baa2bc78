"""Seed 004's config routes (GET/PUT /api/config and /api/v1/config), a client
written from the document alone with plain httpx, through the real stack:
values stored in the registry (the admin API sees the same setting, its etag
moving with each write), partial updates merged, 422 naming the field, and
gpu_monitor_interval followed live by the gpu service's sampler."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import httpx
import pytest
from aiosmtpd.controller import Controller

from switchboard_stack.harness import Stack, free_port, running_stack
from tests.conftest import eventually
from tests.e2e.seeds.keys import ADMIN_KEY, CLIENT_KEY
from tests.e2e.seeds.test_004_inference_manager import GPU_SCRIPT, TIMESTAMP

pytestmark = [pytest.mark.e2e, pytest.mark.serial]

THRESHOLDS_UNSET: dict[str, float | None] = {
    "gpu_utilization_high": None,
    "gpu_temperature_high": None,
    "response_time_high": None,
    "error_rate_high": None,
}
UNSET: dict[str, Any] = {
    "gpu_monitor_interval": None,
    "max_concurrent_models": None,
    "default_model_timeout": None,
    "health_check_interval": None,
    "log_level": None,
    "alert_thresholds": THRESHOLDS_UNSET,
}


WEBHOOK_SECRET = "seed004-webhook-secret-0123456789"


class _Hook(BaseHTTPRequestHandler):
    """A webhook receiver on loopback: keeps each POST whose signature checks out."""

    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        wanted = "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
        if self.headers.get("x-switchboard-signature") == wanted:
            self.received.append(json.loads(body))
            self.send_response(200)
        else:
            self.send_response(401)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test reads what arrived, not the access log."""


@pytest.fixture(scope="module")
def webhook() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


class _Mailbox:
    """aiosmtpd's handler: keeps each message the real SMTP server accepted."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(message_from_bytes(envelope.content))
        return "250 Message accepted for delivery"


@pytest.fixture(scope="module")
def mailbox() -> Iterator[tuple[_Mailbox, int]]:
    box, port = _Mailbox(), free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield box, port
    finally:
        controller.stop()


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, webhook: str, mailbox: tuple[_Mailbox, int]
) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("seed004config")
    gpu_script = home / "gpu.json"
    gpu_script.write_text(json.dumps(GPU_SCRIPT))
    config = {
        "providers": [{"name": "mock", "kind": "mock"}],
        "models": [{"name": "mock-chat", "deployments": [{"provider": "mock", "model": "m"}]}],
        "keys": [{"name": "seed004", "key_env": "SEED004_CLIENT_KEY"}],
    }
    env = {
        "SWITCHBOARD_ADMIN_KEY": ADMIN_KEY,
        "SEED004_CLIENT_KEY": CLIENT_KEY,
        "SWITCHBOARD_GPU_SCRIPT": str(gpu_script),
        "SWITCHBOARD_GPU_INTERVAL_S": "0.2",
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
def api(stack: Stack) -> Iterator[httpx.Client]:
    headers = {"authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(base_url=f"{stack.edge_url}/api", headers=headers, timeout=30) as client:
        yield client


def _refused(reply: httpx.Response, status: int, code: str, path: str) -> dict[str, Any]:
    assert reply.status_code == status, reply.text
    body: dict[str, Any] = reply.json()
    assert set(body) == {"error", "timestamp", "path"}, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    assert body["error"]["code"] == code, body
    assert TIMESTAMP.match(body["timestamp"]), body
    assert body["path"] == path, body
    return body


def _etag(stack: Stack) -> str:
    reply = httpx.get(
        f"{stack.edge_url}/v1/admin/service-settings",
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    etag: str = reply.json()["settings"]["etag"]
    return etag


def test_config_is_stored_merged_and_validated(stack: Stack, api: httpx.Client) -> None:
    got = api.get("/config")
    assert got.status_code == 200, got.text
    assert got.json() == UNSET

    # The document's PUT: some fields, and some of alert_thresholds.
    put = api.put(
        "/config",
        json={
            "gpu_monitor_interval": 60,
            "max_concurrent_models": 15,
            "alert_thresholds": {"gpu_utilization_high": 85, "gpu_temperature_high": 75},
        },
    )
    assert put.status_code == 200, put.text
    first = _etag(stack)
    wanted: dict[str, Any] = {
        **UNSET,
        "gpu_monitor_interval": 60,
        "max_concurrent_models": 15,
        "alert_thresholds": {
            **THRESHOLDS_UNSET,
            "gpu_utilization_high": 85.0,
            "gpu_temperature_high": 75.0,
        },
    }
    assert put.json() == wanted
    assert api.get("/config").json() == wanted

    # A second PUT changes only what it names; /api/v1 is the same resource.
    put = api.put(
        "/v1/config",
        json={
            "log_level": "debug",
            "default_model_timeout": 300,
            "health_check_interval": 60,
            "alert_thresholds": {"response_time_high": 2.0, "error_rate_high": 0.05},
        },
    )
    assert put.status_code == 200, put.text
    wanted = {
        **wanted,
        "log_level": "DEBUG",
        "default_model_timeout": 300,
        "health_check_interval": 60,
        "alert_thresholds": {
            "gpu_utilization_high": 85.0,
            "gpu_temperature_high": 75.0,
            "response_time_high": 2.0,
            "error_rate_high": 0.05,
        },
    }
    assert api.get("/v1/config").json() == wanted
    assert int(_etag(stack)) > int(first)

    # null returns a field to the service's own setting.
    put = api.put("/config", json={"health_check_interval": None, "log_level": None})
    assert put.status_code == 200, put.text
    assert put.json() == {**wanted, "health_check_interval": None, "log_level": None}

    bad: list[tuple[dict[str, Any], str]] = [
        ({"gpu_monitor_interval": 0}, "gpu_monitor_interval"),
        ({"max_concurrent_models": 1.5}, "max_concurrent_models"),
        ({"default_model_timeout": "300"}, "default_model_timeout"),
        ({"health_check_interval": 86_401}, "health_check_interval"),
        ({"log_level": "LOUD"}, "log_level"),
        ({"alert_thresholds": {"error_rate_high": 2}}, "alert_thresholds.error_rate_high"),
        (
            {"alert_thresholds": {"gpu_utilization_high": -1}},
            "alert_thresholds.gpu_utilization_high",
        ),
        ({"alert_thresholds": {"disk_full": 1}}, "alert_thresholds.disk_full"),
        ({"alert_thresholds": 5}, "alert_thresholds"),
        ({"max_models": 3}, "max_models"),
    ]
    for body, field in bad:
        refused = _refused(api.put("/config", json=body), 422, "INVALID_REQUEST", "/api/config")
        assert refused["error"]["details"] == {"field": field}, (body, refused)
        assert field in refused["error"]["message"], refused
    # Nothing of a refused write was kept.
    assert api.get("/config").json() == {**wanted, "health_check_interval": None, "log_level": None}


def test_config_is_for_admins_only(stack: Stack) -> None:
    with httpx.Client(base_url=f"{stack.edge_url}/api", timeout=30) as anonymous:
        _refused(anonymous.get("/config"), 401, "AUTHENTICATION_FAILED", "/api/config")
        client = {"authorization": f"Bearer {CLIENT_KEY}"}
        refused = anonymous.put("/config", headers=client, json={"log_level": "DEBUG"})
        assert refused.status_code in (401, 403), refused.text
        _refused(
            refused,
            refused.status_code,
            "AUTHORIZATION_FAILED" if refused.status_code == 403 else "AUTHENTICATION_FAILED",
            "/api/config",
        )


def test_gpu_monitor_interval_applies_live(api: httpx.Client) -> None:
    def sampled_at() -> str:
        reply = api.get("/system/status")
        assert reply.status_code == 200, reply.text
        nodes = reply.json()["nodes"]
        stamp: str = nodes[0]["sampled_at"]
        return stamp

    # Sampling every 0.2 s (the environment): the stamp moves on.
    assert api.put("/config", json={"gpu_monitor_interval": None}).status_code == 200
    before = sampled_at()
    eventually(lambda: sampled_at() != before, timeout=10, what="a new gpu sample")

    # An hour between samples: once the sampler has taken the setting, the
    # stamp holds still (watched over more than a second, five environment intervals).
    assert api.put("/config", json={"gpu_monitor_interval": 3600}).status_code == 200

    def held_still() -> str | None:
        stamp = sampled_at()
        time.sleep(1.2)  # the window observed: a stamp that does not move in it
        return stamp if sampled_at() == stamp else None

    frozen = eventually(held_still, timeout=15, what="sampling every hour")

    # Cleared: back to the environment's interval at once.
    assert api.put("/config", json={"gpu_monitor_interval": None}).status_code == 200
    eventually(lambda: sampled_at() != frozen, timeout=10, what="sampling resumed")


def _gpu_status(stack: Stack) -> dict[str, Any]:
    reply = httpx.get(
        f"{stack.edge_url}/v1/admin/gpu/status",
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    status: dict[str, Any] = reply.json()
    return status


def test_alert_rules_from_the_documents_conditions(
    stack: Stack, api: httpx.Client, mailbox: tuple[_Mailbox, int]
) -> None:
    # The document's body, as is.
    created = api.post(
        "/config/alerts",
        json={
            "name": "高GPU使用率告警",
            "condition": "gpu_utilization > 90",
            "severity": "warning",
            "enabled": True,
            "notification_channels": ["email", "webhook"],
        },
    )
    assert created.status_code == 201, created.text
    rule = created.json()
    alert_id = rule["id"]
    assert alert_id.startswith("alert-")
    assert rule["name"] == "高GPU使用率告警"
    assert rule["condition"] == "gpu_utilization > 90"
    assert rule["severity"] == "warning"
    assert rule["enabled"] is True
    assert rule["notification_channels"] == ["email", "webhook"]
    assert TIMESTAMP.match(rule["created_at"]), rule

    listed = api.get("/v1/config/alerts").json()
    assert listed["total"] >= 1
    assert listed["page"] == 1
    assert any(r["id"] == alert_id for r in listed["items"])

    # The gpu service evaluates it: 78.5 % is below 90, so nothing fires; lowered
    # to 50, it fires on the scripted GPU.
    def rule_at_gpu(threshold: float) -> bool:
        status = _gpu_status(stack)
        return any(
            r["name"] == alert_id and r["threshold"] == threshold for r in status.get("rules", [])
        )

    eventually(lambda: rule_at_gpu(90), timeout=15, what="the gpu service has the rule")
    assert not any(a["rule_name"] == alert_id for a in _gpu_status(stack).get("active_alerts", []))
    changed = api.put(f"/config/alerts/{alert_id}", json={"condition": "gpu_utilization > 50"})
    assert changed.status_code == 200, changed.text
    assert changed.json()["condition"] == "gpu_utilization > 50"
    assert changed.json()["name"] == "高GPU使用率告警"
    eventually(
        lambda: any(
            a["rule_name"] == alert_id for a in _gpu_status(stack).get("active_alerts", [])
        ),
        timeout=15,
        what="the alert fires",
    )

    # The rule names the webhook channel: the firing arrives, signed.
    def sent(state: str) -> list[dict[str, Any]]:
        return [
            m
            for m in _Hook.received
            if m["data"]["rule_name"] == alert_id and m["data"]["state"] == state
        ]

    eventually(lambda: sent("ALERT_STATE_FIRING"), timeout=15, what="the firing's webhook")
    assert _Hook.received[-1]["type"] == "system_alert"
    # And the e-mail, through the real SMTP server.
    eventually(
        lambda: any(alert_id in str(m["Subject"]) for m in mailbox[0].messages),
        timeout=15,
        what="the firing's e-mail",
    )
    mail = next(m for m in mailbox[0].messages if alert_id in str(m["Subject"]))
    assert (
        mail["Subject"]
        == f"[warning] {alert_id} firing on {_gpu_status(stack)['status']['hostname']}"
    )
    assert mail["To"] == "ops@switchboard.test"

    # The gpu service restarts (killed): it takes the firing alert back and
    # neither notifies it again nor loses the resolution to come.
    stack.restart("gpu", kill=True)
    eventually(lambda: rule_at_gpu(50), timeout=30, what="the restarted gpu service's rules")

    disabled = api.post(f"/config/alerts/{alert_id}/disable", json={})
    assert disabled.status_code == 200, disabled.text
    assert disabled.json()["enabled"] is False
    eventually(
        lambda: (
            not any(a["rule_name"] == alert_id for a in _gpu_status(stack).get("active_alerts", []))
        ),
        timeout=15,
        what="a disabled rule's alert resolves",
    )
    eventually(lambda: sent("ALERT_STATE_RESOLVED"), timeout=15, what="the resolution's webhook")
    # Each once, across the restart: the firing is not sent again.
    assert len(sent("ALERT_STATE_FIRING")) == 1
    assert len(sent("ALERT_STATE_RESOLVED")) == 1

    def mailed() -> list[str]:
        return [
            str(m["Subject"]).split()[2]
            for m in mailbox[0].messages
            if alert_id in str(m["Subject"])
        ]

    eventually(lambda: len(mailed()) >= 2, timeout=15, what="the resolution's e-mail")
    assert mailed() == ["firing", "resolved"]
    enabled = api.post(f"/v1/config/alerts/{alert_id}/enable", json={})
    assert enabled.status_code == 200, enabled.text
    assert enabled.json()["enabled"] is True

    deleted = api.delete(f"/config/alerts/{alert_id}")
    assert deleted.status_code == 200, deleted.text
    missing = _refused(
        api.delete(f"/config/alerts/{alert_id}"),
        404,
        "NOT_FOUND",
        f"/api/config/alerts/{alert_id}",
    )
    assert missing["error"]["details"] == {"alert_id": alert_id}
    _refused(
        api.post("/config/alerts/alert-nope/enable", json={}),
        404,
        "NOT_FOUND",
        "/api/config/alerts/alert-nope/enable",
    )


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"condition": "gpu_utilization > 90"}, "name"),
        ({"name": "x"}, "condition"),
        ({"name": "x", "condition": "gpu_utilization >= 90"}, "condition"),
        ({"name": "x", "condition": "gpu_utilization > ninety"}, "condition"),
        ({"name": "x", "condition": "gpu_utilization > 90 and 1"}, "condition"),
        ({"name": "x", "condition": "disk_usage > 90"}, "condition"),
        ({"name": "x", "condition": "response_time >"}, "condition"),
        ({"name": "x", "condition": "latency > 2"}, "condition"),
        ({"name": "x", "condition": 90}, "condition"),
        ({"name": "x", "condition": "gpu_utilization > 90", "severity": "fatal"}, "severity"),
        ({"name": "x", "condition": "gpu_utilization > 90", "enabled": "yes"}, "enabled"),
        (
            {"name": "x", "condition": "gpu_utilization > 90", "notification_channels": ["sms"]},
            "notification_channels",
        ),
        ({"name": "x", "condition": "gpu_utilization > 90", "colour": "red"}, "colour"),
    ],
)
def test_a_bad_alert_rule_is_422_naming_the_field(
    api: httpx.Client, body: dict[str, Any], field: str
) -> None:
    refused = _refused(
        api.post("/config/alerts", json=body), 422, "INVALID_REQUEST", "/api/config/alerts"
    )
    assert refused["error"]["details"] == {"field": field}, refused


def test_engine_settings_apply_live(stack: Stack, api: httpx.Client) -> None:
    """max_concurrent_models reaches the engine service's admission (what its
    ListEngines reports is what admit() compares with)."""

    def engines_limit() -> int:
        reply = httpx.get(
            f"{stack.edge_url}/v1/admin/engines",
            headers={"authorization": f"Bearer {ADMIN_KEY}"},
            timeout=30,
        )
        assert reply.status_code == 200, reply.text
        limit: int = reply.json()["max_concurrent_models"]
        return limit

    assert api.put("/config", json={"max_concurrent_models": 7}).status_code == 200
    eventually(lambda: engines_limit() == 7, timeout=15, what="the engine service's new limit")
    assert api.put("/config", json={"max_concurrent_models": None}).status_code == 200
    # Back to SWITCHBOARD_ENGINE_MAX_MODELS (4 unless set).
    eventually(lambda: engines_limit() == 4, timeout=15, what="the environment's limit")
