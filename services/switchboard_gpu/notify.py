"""Alert notifications by webhook: each firing and each resolution of an
alert whose rule names the "webhook" channel is POSTed once, signed, retried
with backoff, and every attempt recorded.

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
import os
import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
from google.protobuf import json_format

from switchboard.gpu.v1 import gpu_pb2
from switchboard_common.logs import log_fields

log = logging.getLogger(__name__)
WEBHOOK = "webhook"
SIGNATURE_HEADER = "X-Switchboard-Signature"
DELIVERY_HEADER = "X-Switchboard-Delivery"
_SCHEMA = """CREATE TABLE IF NOT EXISTS deliveries (
    key TEXT PRIMARY KEY, alert_id TEXT NOT NULL, state TEXT NOT NULL, channel TEXT NOT NULL,
    payload BLOB NOT NULL, status TEXT NOT NULL, attempts INTEGER NOT NULL,
    last_error TEXT NOT NULL, next_at REAL NOT NULL, done_at REAL)"""


@dataclass(frozen=True)
class WebhookSettings:
    url: str
    secret: str
    # Attempts before a delivery is marked failed, and the first retry's delay
    # (doubling each time, at most max_backoff_s).
    max_attempts: int = 8
    backoff_s: float = 1.0
    max_backoff_s: float = 300.0
    timeout_s: float = 10.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WebhookSettings | None:
        env = os.environ if env is None else env
        url = env.get("SWITCHBOARD_ALERT_WEBHOOK_URL", "")
        if not url:
            return None
        secret = env.get("SWITCHBOARD_ALERT_WEBHOOK_SECRET", "")
        if not secret:
            raise ValueError("SWITCHBOARD_ALERT_WEBHOOK_URL needs SWITCHBOARD_ALERT_WEBHOOK_SECRET")
        return cls(url=url, secret=secret)


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Notifier:
    def __init__(self, path: Path, settings: WebhookSettings) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute(_SCHEMA)
        self._settings = settings
        self._http = httpx.AsyncClient(timeout=settings.timeout_s)
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
            wanted = WEBHOOK in channels.get(alert.rule_name, ()) or self._fired_to(alert.alert_id)
            if not wanted:
                continue
            payload = json.dumps(
                {
                    "type": "system_alert",
                    "data": json_format.MessageToDict(alert, preserving_proto_field_name=True),
                },
                ensure_ascii=False,
            ).encode()
            self._db.execute(
                "INSERT OR IGNORE INTO deliveries "
                "VALUES (?, ?, ?, ?, ?, 'pending', 0, '', 0, NULL)",
                (f"{alert.alert_id}:{state}:{WEBHOOK}", alert.alert_id, state, WEBHOOK, payload),
            )
        self._wake.set()

    def _fired_to(self, alert_id: str) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM deliveries WHERE alert_id = ? AND channel = ?", (alert_id, WEBHOOK)
        ).fetchone()
        return row is not None

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

    async def _run(self) -> None:
        while True:
            now = time.time()
            due = self._db.execute(
                "SELECT key, payload, attempts FROM deliveries "
                "WHERE status = 'pending' AND next_at <= ? ORDER BY rowid",
                (now,),
            ).fetchall()
            for key, payload, attempts in due:
                await self._deliver(key, payload, attempts)
            soonest = self._db.execute(
                "SELECT MIN(next_at) FROM deliveries WHERE status = 'pending'"
            ).fetchone()[0]
            wait = None if soonest is None else max(0.0, soonest - time.time())
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    async def _deliver(self, key: str, payload: bytes, attempts: int) -> None:
        s = self._settings
        headers = {
            "content-type": "application/json",
            SIGNATURE_HEADER: sign(s.secret, payload),
            DELIVERY_HEADER: key,
        }
        try:
            reply = await self._http.post(s.url, content=payload, headers=headers)
            error = "" if reply.is_success else f"HTTP {reply.status_code}"
        except httpx.HTTPError as exc:
            error = type(exc).__name__
        attempts += 1
        if not error:
            self._db.execute(
                "UPDATE deliveries SET status = 'delivered', attempts = ?, last_error = '', "
                "done_at = ? WHERE key = ?",
                (attempts, time.time(), key),
            )
            return
        failed = attempts >= s.max_attempts
        delay = min(s.backoff_s * 2 ** (attempts - 1), s.max_backoff_s)
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
            "alert webhook delivery failed",
            extra=log_fields(delivery=key, attempts=attempts, error=error, gave_up=failed),
        )
