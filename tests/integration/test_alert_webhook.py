"""Alert webhooks (switchboard_gpu.notify) against a real HTTP receiver on
loopback: signed with HMAC-SHA256, retried with backoff after a failure, each
attempt recorded, and each firing and resolution sent once, across a restart."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web

from switchboard.gpu.v1 import gpu_pb2
from switchboard_gpu.notify import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    Notifier,
    WebhookSettings,
)
from tests.conftest import eventually

pytestmark = pytest.mark.integration

SECRET = "webhook-secret-0123456789"


@dataclass
class Receiver:
    url: str
    # Answers to give, in order; 200 once they run out.
    answers: list[int] = field(default_factory=list)
    received: list[tuple[dict[str, Any], str, str]] = field(default_factory=list)


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[Receiver]:
    got = Receiver(url="")

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert request.headers[SIGNATURE_HEADER] == expected
        got.received.append((json.loads(body), request.headers[DELIVERY_HEADER], expected))
        return web.Response(status=got.answers.pop(0) if got.answers else 200)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    got.url = f"http://127.0.0.1:{port}/hook"
    try:
        yield got
    finally:
        await runner.cleanup()


def _alert(alert_id: str, state: gpu_pb2.AlertState.ValueType, rule: str = "hot") -> gpu_pb2.GpuAlert:
    return gpu_pb2.GpuAlert(
        alert_id=alert_id, rule_name=rule, metric="temperature_c", state=state, value=85
    )


def _settings(url: str, attempts: int = 5) -> WebhookSettings:
    return WebhookSettings(url=url, secret=SECRET, max_attempts=attempts, backoff_s=0.05)


async def _delivered(notifier: Notifier, count: int) -> list[dict[str, object]]:
    def done() -> list[dict[str, object]] | None:
        rows = notifier.deliveries()
        finished = [r for r in rows if r["status"] != "pending"]
        return rows if len(finished) >= count else None

    found: list[dict[str, object]] = await eventually(_async(done), timeout=10)
    return found


def _async(check: Any) -> Any:
    async def run() -> Any:
        return check()

    return run


@pytest.mark.asyncio
async def test_firing_and_resolved_each_notify_once(receiver: Receiver, tmp_path: Path) -> None:
    path = tmp_path / "notifications.sqlite"
    receiver.answers = [500]  # the first attempt fails: retried after a backoff
    notifier = Notifier(path, _settings(receiver.url))
    notifier.start()
    try:
        notifier.enqueue([_alert("a1", gpu_pb2.ALERT_STATE_FIRING)], {"hot": ["email", "webhook"]})
        rows = await _delivered(notifier, 1)
        assert rows[0]["status"] == "delivered"
        assert rows[0]["attempts"] == 2
        assert [key for _, key, _ in receiver.received] == ["a1:ALERT_STATE_FIRING:webhook"] * 2
        body = receiver.received[-1][0]
        assert body["type"] == "system_alert"
        assert body["data"]["alert_id"] == "a1"

        # Announced again (as after a restart): nothing new. The rule deleted,
        # its resolution still goes where the firing went.
        notifier.enqueue([_alert("a1", gpu_pb2.ALERT_STATE_FIRING)], {"hot": ["webhook"]})
        notifier.enqueue([_alert("a1", gpu_pb2.ALERT_STATE_RESOLVED)], {})
        # A rule without the webhook channel sends nothing.
        notifier.enqueue([_alert("b1", gpu_pb2.ALERT_STATE_FIRING, "quiet")], {"quiet": ["email"]})
        rows = await _delivered(notifier, 2)
        assert [r["key"] for r in rows] == [
            "a1:ALERT_STATE_FIRING:webhook",
            "a1:ALERT_STATE_RESOLVED:webhook",
        ]
    finally:
        await notifier.close()

    # A restart: the same deliveries are not sent again; a new one is.
    again = Notifier(path, _settings(receiver.url))
    again.start()
    try:
        again.enqueue([_alert("a1", gpu_pb2.ALERT_STATE_RESOLVED)], {"hot": ["webhook"]})
        again.enqueue([_alert("c1", gpu_pb2.ALERT_STATE_FIRING)], {"hot": ["webhook"]})
        await _delivered(again, 3)
        keys = [key for _, key, _ in receiver.received]
        assert keys == [
            "a1:ALERT_STATE_FIRING:webhook",
            "a1:ALERT_STATE_FIRING:webhook",
            "a1:ALERT_STATE_RESOLVED:webhook",
            "c1:ALERT_STATE_FIRING:webhook",
        ]
    finally:
        await again.close()


@pytest.mark.asyncio
async def test_a_delivery_gives_up_after_its_attempts(receiver: Receiver, tmp_path: Path) -> None:
    receiver.answers = [503, 503, 503]
    notifier = Notifier(tmp_path / "n.sqlite", _settings(receiver.url, attempts=3))
    notifier.start()
    try:
        notifier.enqueue([_alert("d1", gpu_pb2.ALERT_STATE_FIRING)], {"hot": ["webhook"]})
        rows = await _delivered(notifier, 1)
        assert rows[0]["status"] == "failed"
        assert rows[0]["attempts"] == 3
        assert rows[0]["last_error"] == "HTTP 503"
        assert len(receiver.received) == 3
    finally:
        await notifier.close()


def test_the_settings_need_a_secret() -> None:
    assert WebhookSettings.from_env({}) is None
    with pytest.raises(ValueError, match="SECRET"):
        WebhookSettings.from_env({"SWITCHBOARD_ALERT_WEBHOOK_URL": "http://127.0.0.1:1/h"})
