"""Alert notifications (switchboard_gpu.notify): webhooks against a real HTTP
receiver on loopback (signed with HMAC-SHA256, retried with backoff after a
failure, each attempt recorded, each firing and resolution sent once, across a
restart) and e-mail through a real SMTP server on loopback (aiosmtpd)."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiosmtpd.controller import Controller

from switchboard.gpu.v1 import gpu_pb2
from switchboard.registry.v1 import registry_pb2
from switchboard_gpu.notify import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    EmailSettings,
    Notifier,
    WebhookSettings,
)
from switchboard_stack.harness import free_port
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


def _alert(
    alert_id: str, state: gpu_pb2.AlertState.ValueType, rule: str = "hot"
) -> gpu_pb2.GpuAlert:
    return gpu_pb2.GpuAlert(
        alert_id=alert_id, rule_name=rule, metric="temperature_c", state=state, value=85
    )


def _notifier(path: Path, url: str, attempts: int = 5) -> Notifier:
    return Notifier(
        path, WebhookSettings(url=url, secret=SECRET), max_attempts=attempts, backoff_s=0.05
    )


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
    notifier = _notifier(path, receiver.url)
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
        # Newest first, as many as asked for, each with the alert it announces.
        shown = notifier.notifications(1)
        assert [n.key for n in shown] == ["a1:ALERT_STATE_RESOLVED:webhook"]
        assert shown[0].status == gpu_pb2.DELIVERY_STATUS_DELIVERED
        assert shown[0].alert_state == gpu_pb2.ALERT_STATE_RESOLVED
        assert [n.key for n in notifier.notifications(10)] == [r["key"] for r in reversed(rows)]
        assert notifier.channels == ["webhook"]
    finally:
        await notifier.close()

    # A restart: the same deliveries are not sent again; a new one is.
    again = _notifier(path, receiver.url)
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
    notifier = _notifier(tmp_path / "n.sqlite", receiver.url, attempts=3)
    notifier.start()
    try:
        notifier.enqueue([_alert("d1", gpu_pb2.ALERT_STATE_FIRING)], {"hot": ["webhook"]})
        rows = await _delivered(notifier, 1)
        assert rows[0]["status"] == "failed"
        assert rows[0]["attempts"] == 3
        assert rows[0]["last_error"] == "HTTP 503"
        assert len(receiver.received) == 3
        # As the API (ListAlertNotifications) shows it: given up, with when and why.
        (shown,) = notifier.notifications(10)
        assert shown.status == gpu_pb2.DELIVERY_STATUS_FAILED
        assert (shown.attempts, shown.last_error) == (3, "HTTP 503")
        assert (shown.rule_name, shown.channel) == ("hot", "webhook")
        assert shown.alert_state == gpu_pb2.ALERT_STATE_FIRING
        assert shown.HasField("done_time")
        assert not shown.HasField("next_attempt_time")
    finally:
        await notifier.close()


def test_the_settings_need_a_secret() -> None:
    assert WebhookSettings.from_env({}) is None
    with pytest.raises(ValueError, match="SECRET"):
        WebhookSettings.from_env({"SWITCHBOARD_ALERT_WEBHOOK_URL": "http://127.0.0.1:1/h"})


class _Mailbox:
    """aiosmtpd's handler: keeps each message the real SMTP server accepted."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 Message accepted for delivery"


@pytest.fixture
def mailbox() -> Iterator[tuple[_Mailbox, int]]:
    box = _Mailbox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield box, port
    finally:
        controller.stop()


@pytest.mark.asyncio
async def test_email_through_a_real_smtp_server(
    mailbox: tuple[_Mailbox, int], tmp_path: Path
) -> None:
    box, port = mailbox
    email = EmailSettings(
        host="127.0.0.1", port=port, sender="gpu@switchboard.test", recipients=("ops@x.test",)
    )
    notifier = Notifier(tmp_path / "n.sqlite", email=email, backoff_s=0.05)
    notifier.start()
    try:
        alert = _alert("e1", gpu_pb2.ALERT_STATE_FIRING)
        alert.hostname = "node-1"
        alert.message = "temperature_c 85 > 80"
        alert.severity = registry_pb2.SEVERITY_CRITICAL
        notifier.enqueue([alert], {"hot": ["email"]})
        rows = await _delivered(notifier, 1)
        assert rows[0]["status"] == "delivered", rows
        assert rows[0]["channel"] == "email"
        # Announced again: not mailed twice.
        notifier.enqueue([alert], {"hot": ["email"]})
        resolved = _alert("e1", gpu_pb2.ALERT_STATE_RESOLVED)
        notifier.enqueue([resolved], {"hot": ["email"]})
        await _delivered(notifier, 2)
    finally:
        await notifier.close()
    assert len(box.messages) == 2
    sender, recipients, content = box.messages[0]
    assert sender == "gpu@switchboard.test"
    assert recipients == ["ops@x.test"]
    first = message_from_bytes(content)
    assert first["Subject"] == "[critical] hot firing on node-1"
    assert first["X-Switchboard-Delivery"] == "e1:ALERT_STATE_FIRING:email"
    assert "temperature_c 85 > 80" in first.get_payload()
    assert message_from_bytes(box.messages[1][2])["Subject"] == "[warning] hot resolved on "


def test_email_settings_need_a_sender_and_recipients() -> None:
    assert EmailSettings.from_env({}) is None
    with pytest.raises(ValueError, match="EMAIL_TO"):
        EmailSettings.from_env({"SWITCHBOARD_ALERT_SMTP_HOST": "127.0.0.1"})
    got = EmailSettings.from_env(
        {
            "SWITCHBOARD_ALERT_SMTP_HOST": "mail",
            "SWITCHBOARD_ALERT_SMTP_PORT": "2525",
            "SWITCHBOARD_ALERT_EMAIL_FROM": "a@b",
            "SWITCHBOARD_ALERT_EMAIL_TO": "x@y, z@w",
        }
    )
    assert got == EmailSettings(host="mail", port=2525, sender="a@b", recipients=("x@y", "z@w"))
