"""Engine logs: the engine appends to `engine.log` itself (so logging goes on
while this service restarts); rotation is copy-then-truncate, which an
O_APPEND writer survives. Lines are parsed into time, level and message for
llama.cpp's `--log-timestamps --log-prefix` format and vLLM's logger format."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import re
import shutil
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path

from switchboard.engine.v1 import engine_pb2 as pb

MAX_BYTES = 10 * 1024 * 1024
BACKUPS = 3
FOLLOW_POLL_S = 0.2
# Written by the service before each launch: "<MARKER> <ISO time> <argv>".
MARKER = "# switchboard: engine launched at"

# llama.cpp: "1.02.345.678 I message" = minutes.seconds.millis.micros since the
# process started, then a level letter.
_LLAMA = re.compile(r"^(\d+)\.(\d{2})\.(\d{3})\.(\d{3}) ([DIWE]) ?(.*)$")
# vLLM: "INFO 12-06 08:00:01 [api_server.py:1] message", maybe after "(APIServer pid=1) ".
_VLLM = re.compile(
    r"^(?:\([^)]*\)\s+)?(DEBUG|INFO|WARNING|ERROR|CRITICAL)\s+"
    r"(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2})(?:\.\d+)?\s+(?:\[[^\]]*\]\s+)?(.*)$"
)
_LETTER = {
    "D": pb.LOG_LEVEL_DEBUG,
    "I": pb.LOG_LEVEL_INFO,
    "W": pb.LOG_LEVEL_WARNING,
    "E": pb.LOG_LEVEL_ERROR,
}
_WORD = {
    "DEBUG": pb.LOG_LEVEL_DEBUG,
    "INFO": pb.LOG_LEVEL_INFO,
    "WARNING": pb.LOG_LEVEL_WARNING,
    "ERROR": pb.LOG_LEVEL_ERROR,
    "CRITICAL": pb.LOG_LEVEL_ERROR,
}
_ERRORISH = re.compile(r"\b(error|failed|fatal|abort(ed)?|exception|traceback)\b", re.I)
_WARNISH = re.compile(r"\bwarn(ing)?\b", re.I)


@dataclass(frozen=True)
class Parsed:
    time: dt.datetime
    level: pb.LogLevel.ValueType
    message: str

    def to_proto(self) -> pb.LogLine:
        line = pb.LogLine(level=self.level, message=self.message)
        line.time.FromDatetime(self.time)
        return line


class Parser:
    """Parses lines in order: a launch marker resets the time llama.cpp's
    offsets count from, so lines of earlier runs in the same file keep their times."""

    def __init__(self, started_at: float) -> None:
        self.started_at = started_at

    def parse(self, raw: str, seen_at: dt.datetime) -> Parsed:
        text = raw.rstrip("\r\n")
        if text.startswith(MARKER):
            stamp = text[len(MARKER) :].split(maxsplit=1)
            with contextlib.suppress(ValueError, IndexError):
                when = dt.datetime.fromisoformat(stamp[0])
                self.started_at = when.timestamp()
                return Parsed(when, pb.LOG_LEVEL_INFO, text.removeprefix("# "))
        return parse(text, started_at=self.started_at, seen_at=seen_at)


def parse(raw: str, *, started_at: float, seen_at: dt.datetime) -> Parsed:
    """One log line. `started_at` is when the engine was launched (llama.cpp
    counts from it); `seen_at` stands in for lines that carry no time."""
    text = raw.rstrip("\r\n")
    m = _LLAMA.match(text)
    if m:
        minutes, seconds, millis, micros = (int(g) for g in m.groups()[:4])
        offset = minutes * 60 + seconds + millis / 1e3 + micros / 1e6
        when = dt.datetime.fromtimestamp(started_at + offset, dt.UTC)
        return Parsed(when, _LETTER[m.group(5)], m.group(6))
    m = _VLLM.match(text)
    if m:
        month, day, hour, minute, second = (int(g) for g in m.groups()[1:6])
        year = seen_at.year - (1 if month > seen_at.month else 0)
        local = dt.datetime(year, month, day, hour, minute, second).astimezone()
        return Parsed(local.astimezone(dt.UTC), _WORD[m.group(1)], m.group(7))
    level = (
        pb.LOG_LEVEL_ERROR
        if _ERRORISH.search(text)
        else pb.LOG_LEVEL_WARNING
        if _WARNISH.search(text)
        else pb.LOG_LEVEL_INFO
    )
    return Parsed(seen_at, level, text)


def rotate_if_needed(path: Path, max_bytes: int = MAX_BYTES, backups: int = BACKUPS) -> bool:
    """Copy engine.log to engine.log.1 (shifting older ones) and truncate it, once
    it is over max_bytes. Lines written between the copy and the truncation are
    lost; the engine keeps its file open, so renaming would lose everything after."""
    try:
        if path.stat().st_size <= max_bytes:
            return False
    except FileNotFoundError:
        return False
    for i in range(backups - 1, 0, -1):
        older = path.with_name(f"{path.name}.{i}")
        if older.exists():
            os.replace(older, path.with_name(f"{path.name}.{i + 1}"))
    shutil.copyfile(path, path.with_name(f"{path.name}.1"))
    with path.open("r+b") as f:
        f.truncate(0)
    return True


def _last_lines(path: Path, count: int) -> list[str]:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            end = f.tell()
            block = 64 * 1024
            data = b""
            while end > 0 and data.count(b"\n") <= count:
                start = max(0, end - block)
                f.seek(start)
                data = f.read(end - start) + data
                end = start
    except FileNotFoundError:
        return []
    lines = data.decode("utf-8", "replace").splitlines()
    return lines[-count:] if count else []


def tail(path: Path, count: int) -> list[str]:
    """The last `count` lines, reaching into engine.log.1 if the live file has fewer."""
    lines = _last_lines(path, count)
    if len(lines) < count:
        lines = _last_lines(path.with_name(f"{path.name}.1"), count - len(lines)) + lines
    return lines


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _read_from(path: Path, position: int) -> tuple[int, bytes]:
    """What was appended after `position`: (new position, bytes); a file that
    shrank was rotated, so it is read again from its start."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return 0, b""
    if size < position:
        position = 0
    if size == position:
        return position, b""
    with path.open("rb") as f:
        f.seek(position)
        chunk = f.read(size - position)
    return position + len(chunk), chunk


async def follow(path: Path) -> AsyncGenerator[str, None]:
    """Lines appended to `path` from now on, across truncations (rotation)."""
    position = await asyncio.to_thread(_size, path)
    pending = b""
    while True:
        before = position
        position, chunk = await asyncio.to_thread(_read_from, path, position)
        if position < before:
            pending = b""
        if not chunk:
            await asyncio.sleep(FOLLOW_POLL_S)
            continue
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for line in complete:
            yield line.decode("utf-8", "replace")
