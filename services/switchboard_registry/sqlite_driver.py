"""The SQLite driver the registry uses: SQLAlchemy's aiosqlite dialect, with a
hard close that cannot hang.

SQLAlchemy hard-closes ("terminates") a connection whose query was cancelled,
as every in-flight RPC's is when a server stops. Its aiosqlite terminate starts
a shielded graceful `close()` and, if it is cancelled again meanwhile, also
calls aiosqlite's `stop()`. `stop()` ends the connection's worker thread, and
the graceful close, still running, then queues its own stop behind that end
and waits for an answer that never comes: the task hangs forever, and so does
the event loop's shutdown (aiosqlite 0.22.1, SQLAlchemy 2.1; reproduced by
tests/integration/test_registry_cancellation.py).

SQLite is a local file, so a hard close here is one step: ask the worker
thread to close the file and end, and wait for that (a second cancellation
stops the wait, not the close).
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import aiosqlite
from sqlalchemy.dialects import registry
from sqlalchemy.dialects.sqlite.aiosqlite import SQLiteDialect_aiosqlite
from sqlalchemy.util.concurrency import await_, in_greenlet

DRIVER = "switchboard"
"""The URL's driver name: `sqlite+switchboard:///path`."""


class SQLiteDialect(SQLiteDialect_aiosqlite):
    supports_statement_cache = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Hard closes not yet answered, so that the store's close can wait
        # for them: a worker thread answering after its loop closed raises.
        self._stopping: set[asyncio.Future[Any]] = set()

    async def wait_stopped(self, timeout_s: float) -> None:
        """Until every hard close so far has finished, or timeout_s."""
        if self._stopping:
            await asyncio.wait(set(self._stopping), timeout=timeout_s)

    def do_terminate(self, dbapi_connection: Any) -> None:
        # SQLAlchemy types this as its own asyncio protocol; it is aiosqlite's.
        driver_connection = cast(aiosqlite.Connection, self.get_driver_connection(dbapi_connection))
        stopped = driver_connection.stop()
        if stopped is not None:
            self._stopping.add(stopped)
            stopped.add_done_callback(self._stopping.discard)
        # Outside a greenlet this is garbage collection, where nothing may wait.
        if stopped is not None and in_greenlet():
            await_(asyncio.shield(stopped))


registry.register(f"sqlite.{DRIVER}", __name__, "SQLiteDialect")
