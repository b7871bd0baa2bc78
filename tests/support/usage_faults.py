"""The usage service with faults injected at its ClickHouse seam
(switchboard_usage.service.make_setup), for the accounting drills. The stack
starts it in place of the service: `Stack.restart("usage", module=FAULTS, ...)`.

Faults, each from an environment variable the drill sets on that restart:
- SWITCHBOARD_FAULT_CLICKHOUSE_DOWN_S: inserts are refused for this long after start.
- SWITCHBOARD_FAULT_CLICKHOUSE_DOWN_WHILE: inserts are refused while this file exists
  (the sink is down, for as long as the drill needs).
- SWITCHBOARD_FAULT_SINK_CRASH_AFTER_INSERT=1: the process exits hard right after
  a usage insert, before the sink confirms or commits anything.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from switchboard_common.server import main
from switchboard_usage.clickhouse import ClickHouse, Decoded
from switchboard_usage.service import make_setup

log = logging.getLogger(__name__)
MODULE = "tests.support.usage_faults"


class FaultyClickHouse(ClickHouse):
    def __init__(self, url: str) -> None:
        super().__init__(url)
        down_s = float(os.environ.get("SWITCHBOARD_FAULT_CLICKHOUSE_DOWN_S") or 0)
        self.down_until = time.monotonic() + down_s
        flag = os.environ.get("SWITCHBOARD_FAULT_CLICKHOUSE_DOWN_WHILE")
        self.down_while = Path(flag) if flag else None
        self.crash_after_insert = os.environ.get("SWITCHBOARD_FAULT_SINK_CRASH_AFTER_INSERT") == "1"

    def _down(self) -> bool:
        if time.monotonic() < self.down_until:
            return True
        return self.down_while is not None and self.down_while.exists()

    def _before_insert(self) -> None:
        if self._down():
            raise ConnectionError("fault injection: ClickHouse is unavailable")

    def _after_insert(self, table: str) -> None:
        if self.crash_after_insert and table == "usage_events":
            log.error("fault injection: exiting between insert and offset commit")
            os._exit(137)

    # Both ways in: rows (the gpu sink) and rows ClickHouse decodes (the usage sink).
    async def insert(
        self,
        table: str,
        rows: Sequence[Sequence[Any]],
        columns: Sequence[str],
        settings: dict[str, Any] | None = None,
    ) -> None:
        self._before_insert()
        await super().insert(table, rows, columns, settings)
        self._after_insert(table)

    async def insert_decoded(
        self,
        table: str,
        columns: Sequence[str],
        select: str,
        decoded: Decoded,
        data: bytes,
        settings: dict[str, str] | None = None,
    ) -> None:
        self._before_insert()
        await super().insert_decoded(table, columns, select, decoded, data, settings)
        self._after_insert(table)


if __name__ == "__main__":
    main("usage", make_setup(FaultyClickHouse))
