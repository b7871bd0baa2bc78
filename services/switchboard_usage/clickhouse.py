"""ClickHouse through clickhouse-connect, the same code for the embedded engine
(chdb://path) and a server (http://host:8123).

Rows can also reach ClickHouse still encoded (insert_decoded): ClickHouse
decodes them itself, through a format schema shipped as package data, and an
INSERT … SELECT derives the stored columns. No Python object per value.

The client is synchronous and chdb allows one opener per path, so one client
lives on one worker thread and every call is handed to it: the event loop never
blocks on ClickHouse.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import clickhouse_connect
from google.protobuf import timestamp_pb2

DATABASE = "switchboard"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def ts_datetime(ts: timestamp_pb2.Timestamp) -> dt.datetime:
    """A protobuf Timestamp as the datetime a row's DateTime64 column takes."""
    # Timestamp.ToDatetime is several times slower than this arithmetic.
    return _EPOCH + dt.timedelta(seconds=ts.seconds, microseconds=ts.nanos // 1000)


EMBEDDED = "chdb://"


def _connect(url: str) -> Any:
    if url.startswith(EMBEDDED):
        Path(url.removeprefix(EMBEDDED)).mkdir(parents=True, exist_ok=True)
    return clickhouse_connect.get_client(dsn=url)


@dataclass(frozen=True)
class Decoded:
    """Encoded rows ClickHouse decodes itself: the input format, its schema
    file (a message in it per row), and the input's columns as ClickHouse's
    structure ('name Type, …')."""

    format: str
    schema: Path
    message: str
    structure: str


def quote(text: str) -> str:
    """A ClickHouse string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


class ClickHouse:
    def __init__(self, url: str) -> None:
        self.url = url
        # The engine in this process (chdb): one opener per path, one writer.
        self.embedded = url.startswith(EMBEDDED)
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

    async def insert_decoded(
        self,
        table: str,
        columns: Sequence[str],
        select: str,
        decoded: Decoded,
        data: bytes,
        settings: dict[str, str] | None = None,
    ) -> None:
        """INSERT INTO table (columns) SELECT select FROM the rows in data,
        decoded by ClickHouse (select names the input's columns)."""
        into = f"INSERT INTO {table} ({', '.join(columns)})"
        if self.embedded:
            # The embedded engine reads the rows from a file and the schema from
            # its path (a server reads neither from ours).
            await self._run(self._insert_decoded_file, into, select, decoded, data, settings or {})
            return
        source = f"input({quote(decoded.structure)}) FORMAT {decoded.format}"
        sql = f"{into} SELECT {select} FROM {source}"  # noqa: S608 - the caller's fixed SQL
        schema = {
            "format_schema_source": "string",
            "format_schema": decoded.schema.read_text(),
            "format_schema_message_name": decoded.message,
        }
        await self._run(
            lambda: self._client.command(sql, data=data, settings={**(settings or {}), **schema})
        )

    def _insert_decoded_file(
        self, into: str, select: str, decoded: Decoded, data: bytes, settings: dict[str, str]
    ) -> None:
        every = {
            "format_schema": str(decoded.schema.resolve()),
            "format_schema_message_name": decoded.message,
            **settings,
        }
        fd, path = tempfile.mkstemp(prefix="switchboard-insert-", suffix=f".{decoded.format}")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
            source = f"file({quote(path)}, {quote(decoded.format)}, {quote(decoded.structure)})"
            clause = ", ".join(f"{name} = {quote(value)}" for name, value in every.items())
            sql = f"{into} SETTINGS {clause} SELECT {select} FROM {source}"  # noqa: S608 - fixed SQL
            self._client.command(sql)
        finally:
            os.unlink(path)

    async def close(self) -> None:
        if self._client is not None:
            await self._run(self._client.close)
        self._pool.shutdown(wait=True)
