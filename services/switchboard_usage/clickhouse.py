"""ClickHouse through clickhouse-connect, the same code for the embedded engine
(chdb://path) and a server (http://host:8123).

The client is synchronous and chdb allows one opener per path, so one client
lives on one worker thread and every call is handed to it: the event loop never
blocks on ClickHouse.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import clickhouse_connect

DATABASE = "switchboard"


def _connect(url: str) -> Any:
    if url.startswith("chdb://"):
        Path(url.removeprefix("chdb://")).mkdir(parents=True, exist_ok=True)
        return clickhouse_connect.get_client(dsn=url)
    return clickhouse_connect.get_client(dsn=url)


class ClickHouse:
    def __init__(self, url: str) -> None:
        self.url = url
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="clickhouse")
        self._client: Any = None

    async def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))

    async def open(self) -> None:
        def connect() -> None:
            client = _connect(self.url)
            client.command(f"CREATE DATABASE IF NOT EXISTS {DATABASE} ENGINE = Atomic")
            client.database = DATABASE
            self._client = client

        await self._run(connect)

    async def command(self, sql: str, parameters: dict[str, Any] | None = None) -> Any:
        return await self._run(lambda: self._client.command(sql, parameters=parameters))

    async def rows(
        self,
        sql: str,
        parameters: dict[str, Any] | None = None,
        settings: dict[str, Any] | None = None,
    ) -> list[tuple[Any, ...]]:
        def query() -> list[tuple[Any, ...]]:
            result = self._client.query(sql, parameters=parameters, settings=settings)
            return list(result.result_rows)

        rows: list[tuple[Any, ...]] = await self._run(query)
        return rows

    async def insert(
        self,
        table: str,
        rows: Sequence[Sequence[Any]],
        columns: Sequence[str],
        settings: dict[str, Any] | None = None,
    ) -> None:
        await self._run(
            lambda: self._client.insert(table, rows, column_names=list(columns), settings=settings)
        )

    async def close(self) -> None:
        if self._client is not None:
            await self._run(self._client.close)
        self._pool.shutdown(wait=True)
