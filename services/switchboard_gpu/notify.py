"""Alert notifications: each firing and each resolution of an alert whose
rule names a configured channel is sent once, retried with backoff, and every
attempt recorded. "webhook" POSTs the alert as JSON, signed; "email" sends a
plain-text message through an SMTP server.

Deliveries live in a SQLite table keyed by (alert_id, state, channel): an
alert announced again (a restart that re-reads it, a resolution recorded
twice) inserts nothing, so it never notifies twice; a delivery still pending
when the service stops is sent after it starts again. The receiver checks
`X-Switchboard-Signature: sha256=<hex HMAC-SHA256 of the body>` with the shared
secret, and may use `X-Switchboard-Delivery` (the key) to drop a repeat of a
delivery whose answer was lost."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import smtplib
import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import httpx
from google.protobuf import json_format

from switchboard.gpu.v1 import gpu_pb2
from switchboard_common import env as values
from switchboard_common.env import SettingsError
from switchboard_common.logs import log_fields

log = logging.getLogger(__name__)
WEBHOOK = "webhook"
EMAIL = "email"
SIGNATURE_HEADER = "X-Switchboard-Signature"
DELIVERY_HEADER = "X-Switchboard-Delivery"
_STATUS = {
    "pending": gpu_pb2.DELIVERY_STATUS_PENDING,
    "delivered": gpu_pb2.DELIVERY_STATUS_DELIVERED,
    "failed": gpu_pb2.DELIVERY_STATUS_FAILED,
}
_SCHEMA = """CREATE TABLE IF NOT EXISTS deliveries (
    key TEXT PRIMARY KEY, alert_id TEXT NOT NULL, state TEXT NOT NULL, channel TEXT NOT NULL,
    payload BLOB NOT NULL, status TEXT NOT NULL, attempts INTEGER NOT NULL,
    last_error TEXT NOT NULL, next_at REAL NOT NULL, done_at REAL)"""


@dataclass(frozen=True)
class WebhookSettings:
    url: str
    secret: str
    timeout_s: float = 10.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> WebhookSettings | None:
        url = values.text(env, "SWITCHBOARD_ALERT_WEBHOOK_URL")
        if not url:
            return None
        secret = env.get("SWITCHBOARD_ALERT_WEBHOOK_SECRET", "")
        if not secret:
            raise SettingsError(
                "SWITCHBOARD_ALERT_WEBHOOK_URL needs SWITCHBOARD_ALERT_WEBHOOK_SECRET"
            )
        return cls(url=url, secret=secret)


@dataclass(frozen=True)
class EmailSettings:
    """A plain SMTP relay (no login: a relay on the node or the cluster's)."""

    host: str
    port: int
    sender: str
    recipients: tuple[str, ...]
    timeout_s: float = 10.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> EmailSettings | None:
        host = values.text(env, "SWITCHBOARD_ALERT_SMTP_HOST")
        if not host:
            return None
        recipients = tuple(
            r.strip() for r in env.get("SWITCHBOARD_ALERT_EMAIL_TO", "").split(",") if r.strip()
        )
        sender = values.text(env, "SWITCHBOARD_ALERT_EMAIL_FROM")
        if not recipients or not sender:
            raise SettingsError(
                "SWITCHBOARD_ALERT_SMTP_HOST needs SWITCHBOARD_ALERT_EMAIL_FROM and "
                "SWITCHBOARD_ALERT_EMAIL_TO"
            )
        port = values.integer(env, "SWITCHBOARD_ALERT_SMTP_PORT", 25, minimum=1)
        return cls(host=host, port=port, sender=sender, recipients=recipients)


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Notifier:
    def __init__(
        self,
        path: Path,
        webhook: WebhookSettings | None = None,
        email: EmailSettings | None = None,
        *,
        max_attempts: int = 8,
        backoff_s: float = 1.0,
        max_backoff_s: float = 300.0,
    ) -> None:
        """max_attempts: before a delivery is marked failed; backoff_s: the first
        retry's delay, doubling each time up to max_backoff_s."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute(_SCHEMA)
        self._webhook = webhook
        self._email = email
        self._channels = [c for c, on in ((WEBHOOK, webhook), (EMAIL, email)) if on is not None]
        self._max_attempts = max_attempts
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._http = httpx.AsyncClient(timeout=webhook.timeout_s if webhook else 10.0)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="gpu-notifier")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._http.aclose()
        self._db.close()

    def enqueue(
        self, alerts: Sequence[gpu_pb2.GpuAlert], channels: Mapping[str, Sequence[str]]
    ) -> None:
        """channels: each rule's notification channels, by rule name. A
        resolution whose rule is gone goes where its firing went."""
        for alert in alerts:
            state = gpu_pb2.AlertState.Name(alert.state)
            named = channels.get(alert.rule_name, ())
            payload = json.dumps(
                {
                    "type": "system_alert",
                    "data": json_format.MessageToDict(alert, preserving_proto_field_name=True),
                },
                ensure_ascii=False,
            ).encode()
            for channel in self._channels:
                if channel not in named and not self._fired_to(alert.alert_id, channel):
                    continue
                self._db.execute(
                    "INSERT OR IGNORE INTO deliveries "
                    "VALUES (?, ?, ?, ?, ?, 'pending', 0, '', 0, NULL)",
                    (
                        f"{alert.alert_id}:{state}:{channel}",
                        alert.alert_id,
                        state,
                        channel,
                        payload,
                    ),
                )
        self._wake.set()

    def _fired_to(self, alert_id: str, channel: str) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM deliveries WHERE alert_id = ? AND channel = ?", (alert_id, channel)
        ).fetchone()
        return row is not None

    @property
    def channels(self) -> list[str]:
        """The channels configured on this node."""
        return list(self._channels)

    def deliveries(self) -> list[dict[str, object]]:
        """Every delivery with its status (pending, delivered, failed) and attempts."""
        rows = self._db.execute(
            "SELECT key, alert_id, state, channel, status, attempts, last_error, done_at "
            "FROM deliveries ORDER BY rowid"
        )
        names = (
            "key",
            "alert_id",
            "state",
            "channel",
            "status",
            "attempts",
            "last_error",
            "done_at",
        )
        return [dict(zip(names, row, strict=True)) for row in rows]

    def notifications(self, limit: int) -> list[gpu_pb2.AlertNotification]:
        """The newest `limit` deliveries as the API shows them, with the alert
        each announces (read from the payload it sends)."""
        rows = self._db.execute(
            "SELECT key, alert_id, state, channel, status, attempts, last_error, done_at, "
            "next_at, payload FROM deliveries ORDER BY rowid DESC LIMIT ?",
            (limit,),
        ).fetchall()
        found = []
        for key, alert_id, state, channel, status, attempts, error, done_at, next_at, raw in rows:
            alert = json.loads(raw).get("data", {})
            item = gpu_pb2.AlertNotification(
                key=key,
                alert_id=alert_id,
                alert_state=gpu_pb2.AlertState.Value(state),
                channel=channel,
                status=_STATUS[status],
                attempts=attempts,
                last_error=error,
                rule_name=str(alert.get("rule_name", "")),
                message=str(alert.get("message", "")),
                gpu_uuid=str(alert.get("gpu_uuid", "")),
            )
            if done_at is not None:
                item.done_time.FromNanoseconds(int(done_at * 1e9))
            if status == "pending" and next_at:
                item.next_attempt_time.FromNanoseconds(int(next_at * 1e9))
            found.append(item)
        return found

    async def _run(self) -> None:
        while True:
            now = time.time()
            due = self._db.execute(
                "SELECT key, channel, payload, attempts FROM deliveries "
                "WHERE status = 'pending' AND next_at <= ? ORDER BY rowid",
                (now,),
            ).fetchall()
            for key, channel, payload, attempts in due:
                await self._deliver(key, channel, payload, attempts)
            soonest = self._db.execute(
                "SELECT MIN(next_at) FROM deliveries WHERE status = 'pending'"
            ).fetchone()[0]
            wait = None if soonest is None else max(0.0, soonest - time.time())
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    async def _deliver(self, key: str, channel: str, payload: bytes, attempts: int) -> None:
        try:
            if channel == WEBHOOK and self._webhook is not None:
                error = await self._post(self._webhook, key, payload)
            elif channel == EMAIL and self._email is not None:
                await asyncio.to_thread(_mail, self._email, key, payload)
                error = ""
            else:
                error = f"the {channel} channel is not configured"
        except (httpx.HTTPError, smtplib.SMTPException, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        attempts += 1
        if not error:
            self._db.execute(
                "UPDATE deliveries SET status = 'delivered', attempts = ?, last_error = '', "
                "done_at = ? WHERE key = ?",
                (attempts, time.time(), key),
            )
            return
        failed = attempts >= self._max_attempts
        delay = min(self._backoff_s * 2 ** (attempts - 1), self._max_backoff_s)
        self._db.execute(
            "UPDATE deliveries SET status = ?, attempts = ?, last_error = ?, next_at = ?, "
            "done_at = ? WHERE key = ?",
            (
                "failed" if failed else "pending",
                attempts,
                error,
                time.time() + delay,
                time.time() if failed else None,
                key,
            ),
        )
        (log.error if failed else log.warning)(
            "alert notification failed",
            extra=log_fields(delivery=key, attempts=attempts, error=error, gave_up=failed),
        )

    async def _post(self, webhook: WebhookSettings, key: str, payload: bytes) -> str:
        headers = {
            "content-type": "application/json",
            SIGNATURE_HEADER: sign(webhook.secret, payload),
            DELIVERY_HEADER: key,
        }
        reply = await self._http.post(webhook.url, content=payload, headers=headers)
        return "" if reply.is_success else f"HTTP {reply.status_code}"


def _mail(email: EmailSettings, key: str, payload: bytes) -> None:
    alert = json.loads(payload)["data"]
    state = "resolved" if alert.get("state") == "ALERT_STATE_RESOLVED" else "firing"
    message = EmailMessage()
    message["From"] = email.sender
    message["To"] = ", ".join(email.recipients)
    message["Subject"] = (
        f"[{alert.get('severity', 'SEVERITY_WARNING').removeprefix('SEVERITY_').lower()}] "
        f"{alert.get('rule_name', '')} {state} on {alert.get('hostname', '')}"
    )
    message["X-Switchboard-Delivery"] = key
    message.set_content(
        f"{alert.get('message', '')}\n\n" + json.dumps(alert, ensure_ascii=False, indent=2)
    )
    with smtplib.SMTP(email.host, email.port, timeout=email.timeout_s) as smtp:
        smtp.send_message(message)
