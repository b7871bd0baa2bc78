"""Alert events on local disk until ClickHouse has them, and the alerts firing
now, so that neither is lost to a broker outage, a broker that loses what it
acked, or a restart.

Samples are telemetry and may be dropped when the broker is away; an alert
event is a record someone may be paged on, so it is written to the gpu
service's outbox (switchboard_common.pipeline.outbox) before it is announced,
and leaves only once the usage service's gpu sink confirmed it stored (on the
confirmations topic). A restarted service takes the firing alerts back, so they
resolve under their own alert_id instead of firing twice.

Past its disk quota the outbox deletes the oldest events, loudly
(switchboard_outbox_dropped_total{outbox="gpu_alerts"}): the monitor must keep
evaluating, and refusing the newest would lose the most relevant.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

from switchboard.gpu.v1 import events_pb2, gpu_pb2
from switchboard_common.pipeline.outbox import Outbox, Overflow
from switchboard_common.pipeline.topics import ALERTS_TOPIC

DEFAULT_MAX_BYTES = 64 << 20
_FIRING = "CREATE TABLE IF NOT EXISTS firing (alert_id TEXT PRIMARY KEY, payload BLOB NOT NULL)"


class AlertStore:
    def __init__(self, path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.outbox = Outbox(path, "gpu_alerts", ALERTS_TOPIC, max_bytes, Overflow.DROP_OLDEST)

    @property
    def depth(self) -> int:
        return self.outbox.depth

    async def open(self) -> list[gpu_pb2.GpuAlert]:
        """Open (creating it) and return the alerts that were firing."""
        await self.outbox.open([_FIRING], before=_set_legacy_aside)
        legacy = await self.outbox.read(_legacy_payloads)
        if legacy:
            await self.outbox.append(
                [(e.event_id, e.alert.alert_id.encode(), p) for e, p in _decoded(legacy)]
            )
        await self.outbox.read(lambda db: db.execute("DROP TABLE IF EXISTS outbox_legacy"))
        payloads = await self.outbox.read(
            lambda db: [bytes(r[0]) for r in db.execute("SELECT payload FROM firing ORDER BY 1")]
        )
        return [gpu_pb2.GpuAlert.FromString(payload) for payload in payloads]

    async def append(self, events: Sequence[events_pb2.GpuAlertEvent]) -> None:
        """Durably queue `events` for the broker and, in the same transaction,
        track which alerts fire."""
        if not events:
            return

        def track(db: sqlite3.Connection) -> None:
            for event in events:
                alert = event.alert
                if alert.state == gpu_pb2.ALERT_STATE_FIRING:
                    db.execute(
                        "INSERT OR REPLACE INTO firing (alert_id, payload) VALUES (?, ?)",
                        (alert.alert_id, alert.SerializeToString()),
                    )
                else:
                    db.execute("DELETE FROM firing WHERE alert_id = ?", (alert.alert_id,))

        await self.outbox.append(
            [(e.event_id, e.alert.alert_id.encode(), e.SerializeToString()) for e in events],
            within=track,
        )

    async def close(self) -> None:
        await self.outbox.close()


def _set_legacy_aside(db: sqlite3.Connection) -> None:
    """A store written before the shared outbox (keyed by alert_id, without an
    event id column): set its table aside; open() carries its events over, and
    drops it only after they are in the outbox."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(outbox)")}
    if "alert_id" in columns and "event_id" not in columns:
        db.execute("ALTER TABLE outbox RENAME TO outbox_legacy")


def _legacy_payloads(db: sqlite3.Connection) -> list[bytes]:
    found = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'outbox_legacy'").fetchone()
    if found is None:
        return []
    return [bytes(r[0]) for r in db.execute("SELECT payload FROM outbox_legacy ORDER BY seq")]


def _decoded(payloads: list[bytes]) -> list[tuple[events_pb2.GpuAlertEvent, bytes]]:
    return [(events_pb2.GpuAlertEvent.FromString(p), p) for p in payloads]
