"""Engine processes: launched in their own session (so they outlive a crash of
this service and can be adopted), with stdout and stderr appended to a log
file, a pid file under SWITCHBOARD_HOME, and readings from /proc.

A pid alone could name another process after the engine died and the kernel
reused it; every pid here travels with the process's start time (field 22 of
/proc/<pid>/stat), and a process whose start time differs is not ours."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from switchboard_engine.commands import Launch, engine_environment

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class PidRecord:
    """What the pid file holds: enough to adopt the engine after a restart."""

    pid: int
    start_ticks: int
    port: int
    # When it was launched (epoch seconds): llama.cpp's log times count from it.
    started_at: float
    argv: list[str]

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self)))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> PidRecord | None:
        try:
            raw = json.loads(path.read_text())
            return cls(
                pid=int(raw["pid"]),
                start_ticks=int(raw["start_ticks"]),
                port=int(raw["port"]),
                started_at=float(raw["started_at"]),
                argv=[str(a) for a in raw["argv"]],
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after it.
    return raw[raw.rindex(")") + 2 :].split()


def start_ticks(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def is_alive(pid: int, ticks: int) -> bool:
    """The process `pid` that started at `ticks` still runs (a zombie does not)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z" and int(fields[19]) == ticks


@dataclass
class CpuSample:
    ticks: int
    at: float


def rss_bytes(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return 0


def cpu_percent(pid: int, previous: CpuSample | None) -> tuple[float, CpuSample | None]:
    """CPU use of `pid` since `previous`, in percent of one core, and the new sample."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0, None
    now = CpuSample(int(fields[11]) + int(fields[12]), time.monotonic())
    if previous is None or now.at <= previous.at:
        return 0.0, now
    used_s = (now.ticks - previous.ticks) / CLOCK_TICKS
    return max(0.0, 100.0 * used_s / (now.at - previous.at)), now


class EngineProcess:
    """One launched (or adopted) engine server."""

    def __init__(self, record: PidRecord, popen: subprocess.Popen[bytes] | None) -> None:
        self.record = record
        # None for an adopted process: it is not our child, so we cannot wait for it.
        self._popen = popen

    @property
    def pid(self) -> int:
        return self.record.pid

    @classmethod
    def spawn(cls, launch: Launch, log_path: Path, port: int) -> EngineProcess:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        # O_APPEND: the log can be rotated by copy-and-truncate under a running engine.
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        try:
            popen = subprocess.Popen(
                launch.argv,
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=subprocess.STDOUT,
                env=engine_environment(launch.env),
                # Its own session and process group: it survives this service's
                # crash (to be adopted) and is stopped as a group (vLLM forks workers).
                start_new_session=True,
                close_fds=True,
            )
        finally:
            os.close(fd)
        ticks = start_ticks(popen.pid)
        record = PidRecord(popen.pid, ticks or 0, port, time.time(), launch.argv)
        return cls(record, popen)

    @classmethod
    def adopt(cls, record: PidRecord) -> EngineProcess | None:
        return cls(record, None) if is_alive(record.pid, record.start_ticks) else None

    def exit_status(self) -> str | None:
        """None while it runs; else how it ended, for people."""
        if self._popen is not None:
            code = self._popen.poll()
            if code is None:
                return None
            return f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
        return None if is_alive(self.record.pid, self.record.start_ticks) else "exited"

    def signal_group(self, sig: int) -> None:
        if self._popen is not None and self._popen.poll() is not None:
            return
        if not is_alive(self.record.pid, self.record.start_ticks):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.record.pid, sig)

    async def wait_exit(self, timeout_s: float) -> bool:
        """Wait up to timeout_s for the process to end; True if it did."""
        deadline = time.monotonic() + timeout_s
        while self.exit_status() is None:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def terminate(self, timeout_s: float, *, force: bool = False) -> str:
        """SIGTERM, then SIGKILL after timeout_s (at once with force); the whole
        process group. Returns how it ended."""
        if not force:
            self.signal_group(signal.SIGTERM)
            if await self.wait_exit(timeout_s):
                self._kill_leftovers()
                return self.exit_status() or "exited"
        self.signal_group(signal.SIGKILL)
        await self.wait_exit(10.0)
        self._kill_leftovers()
        return self.exit_status() or "killed"

    def _kill_leftovers(self) -> None:
        # Workers of the group that outlived their leader (vLLM) go too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.record.pid, signal.SIGKILL)
