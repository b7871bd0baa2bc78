"""SWITCHBOARD_WORKERS=N: N processes of one service on one port.

One Python process uses about one core. With N > 1 a service's main() becomes
this small supervisor: it starts N workers (the same command line, each a
normal serve() with SO_REUSEPORT, so the kernel spreads connections across
them), forwards SIGTERM to them (each drains as a single process does:
NOT_SERVING, then stop(grace)), and restarts a worker that dies. A worker dies
with its supervisor (PR_SET_PDEATHSIG): a SIGKILL of the supervisor leaves no
orphan holding the port.

What the workers share they must not keep per process: a service opts in
(main(workers=...)) with a check that refuses N > 1 when its settings would
make per-process state wrong (the router's rate limits without Redis).

Metrics: the workers write prometheus_client's multiprocess files, and the
supervisor serves their sum on the service's one metrics port (gauges carry a
`pid` label). Log lines carry the worker's index."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, multiprocess, start_http_server

from switchboard_common.logs import log_fields
from switchboard_common.settings import Settings

log = logging.getLogger(__name__)

WORKERS_VAR = "SWITCHBOARD_WORKERS"
# Set by the supervisor for its workers (not for users to set).
INDEX_VAR = "SWITCHBOARD_WORKER_INDEX"
PARENT_VAR = "SWITCHBOARD_WORKER_PARENT"
READY_FD_VAR = "SWITCHBOARD_WORKER_READY_FD"
MULTIPROC_VAR = "PROMETHEUS_MULTIPROC_DIR"

_PR_SET_PDEATHSIG = 1
# A worker that keeps dying is restarted after a growing pause, up to this.
MAX_BACKOFF_S = 5.0
# A worker that served this long before it died starts again at once.
STABLE_S = 10.0

# Returns why N workers would be wrong for this service's settings, or None.
WorkersCheck = Callable[[Settings], str | None]


class WorkersRefused(Exception):
    pass


def metrics_dir(settings: Settings, name: str) -> Path:
    """Where a supervisor's workers write their metrics (one supervisor per service and home)."""
    return settings.home / "run" / f"{name}-metrics"


def worker_count() -> int:
    raw = os.environ.get(WORKERS_VAR) or "1"
    try:
        count = int(raw)
    except ValueError:
        raise WorkersRefused(f"{WORKERS_VAR} must be a whole number, got {raw!r}") from None
    if count < 1:
        raise WorkersRefused(f"{WORKERS_VAR} must be at least 1, got {count}")
    return count


def worker_index() -> int | None:
    """This process's index among its supervisor's workers; None when it is not one."""
    raw = os.environ.get(INDEX_VAR)
    return int(raw) if raw else None


def die_with_parent() -> None:
    """SIGKILL this worker when its supervisor dies, however it dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    # The supervisor may have died before prctl: then nobody would kill us.
    if os.getppid() != int(os.environ[PARENT_VAR]):
        os._exit(1)


def report_ready() -> None:
    """Tell the supervisor this worker is serving (a byte on its inherited pipe)."""
    raw = os.environ.get(READY_FD_VAR)
    if raw:
        with contextlib.suppress(OSError):
            os.write(int(raw), b"1")
            os.close(int(raw))


def _metrics(registry: CollectorRegistry) -> tuple[Counter, Gauge]:
    """The supervisor's own metrics (kept in its memory, served beside the workers')."""
    restarts = Counter(
        "switchboard_worker_restarts_total",
        "Workers of this service started again after they died.",
        ["service"],
        registry=registry,
    )
    alive = Gauge(
        "switchboard_workers", "Workers of this service running.", ["service"], registry=registry
    )
    return restarts, alive


@dataclass
class _Worker:
    index: int
    proc: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    ready: bool = False
    failures: int = 0
    ready_fd: int = -1


@dataclass
class Supervisor:
    name: str
    settings: Settings
    count: int
    argv: list[str] = field(default_factory=lambda: [sys.executable, *sys.orig_argv[1:]])
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.metrics_dir = metrics_dir(self.settings, self.name)
        self.workers = [_Worker(i) for i in range(self.count)]
        self.registry = CollectorRegistry()
        self.restarts, self.alive = _metrics(self.registry)
        self.any_ready = False

    async def run(self) -> int:
        """Start the workers, keep them running until SIGTERM/SIGINT, then drain them."""
        # A fresh directory: files of an earlier supervisor's workers would be summed in.
        shutil.rmtree(self.metrics_dir, ignore_errors=True)
        self.metrics_dir.mkdir(parents=True)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        try:
            metrics_port = self.settings.metrics_port(self.name)
            if metrics_port:
                multiprocess.MultiProcessCollector(self.registry, path=str(self.metrics_dir))  # type: ignore[no-untyped-call]
                start_http_server(
                    metrics_port, addr=self.settings.metrics_host, registry=self.registry
                )
            log.info(
                "supervising workers",
                extra=log_fields(workers=self.count, metrics_port=metrics_port),
            )
            for worker in self.workers:
                await self._start(worker)
            return await self._watch()
        finally:
            await self._stop_all()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
            log.info("stopped")

    async def _start(self, worker: _Worker) -> None:
        read_fd, write_fd = os.pipe()
        env = dict(os.environ)
        env[INDEX_VAR] = str(worker.index)
        env[PARENT_VAR] = str(os.getpid())
        env[READY_FD_VAR] = str(write_fd)
        env[MULTIPROC_VAR] = str(self.metrics_dir)
        try:
            worker.proc = await asyncio.create_subprocess_exec(
                *self.argv, env=env, pass_fds=(write_fd,), stdin=asyncio.subprocess.DEVNULL
            )
        finally:
            os.close(write_fd)
        worker.started_at = time.monotonic()
        worker.ready = False
        worker.ready_fd = read_fd
        asyncio.get_running_loop().add_reader(read_fd, self._on_ready, worker)
        self.alive.labels(self.name).set(sum(w.proc is not None for w in self.workers))
        log.info(
            "worker started", extra=log_fields(worker=worker.index, worker_pid=worker.proc.pid)
        )

    def _on_ready(self, worker: _Worker) -> None:
        with contextlib.suppress(OSError):
            worker.ready = os.read(worker.ready_fd, 1) == b"1" or worker.ready
        self._close_ready(worker)
        if worker.ready:
            self.any_ready = True

    def _close_ready(self, worker: _Worker) -> None:
        if worker.ready_fd >= 0:
            asyncio.get_running_loop().remove_reader(worker.ready_fd)
            os.close(worker.ready_fd)
            worker.ready_fd = -1

    async def _watch(self) -> int:
        """Restart workers that die; return once stopping (0), or when a worker
        fails before any worker ever served (its exit status: the start failed)."""
        stopping = asyncio.create_task(self.stop.wait())
        try:
            while not self.stop.is_set():
                waits = {asyncio.create_task(w.proc.wait()): w for w in self.workers if w.proc}
                done, _ = await asyncio.wait(
                    {*waits, stopping}, return_when=asyncio.FIRST_COMPLETED
                )
                for task in waits:
                    if task not in done:
                        task.cancel()
                for task in done:
                    if task is stopping:
                        continue
                    worker = waits[task]
                    code = task.result()
                    failed = await self._died(worker, code)
                    if failed is not None:
                        return failed
            return 0
        finally:
            stopping.cancel()

    async def _died(self, worker: _Worker, code: int) -> int | None:
        assert worker.proc is not None
        pid = worker.proc.pid
        self._close_ready(worker)
        self._forget(pid)
        worker.proc = None
        self.alive.labels(self.name).set(sum(w.proc is not None for w in self.workers))
        if self.stop.is_set():
            return None
        if not worker.ready and not self.any_ready:
            log.error(
                "worker failed to start; stopping",
                extra=log_fields(worker=worker.index, worker_pid=pid, exit_code=code),
            )
            return code or 1
        stable = time.monotonic() - worker.started_at >= STABLE_S
        worker.failures = 0 if stable else worker.failures + 1
        pause = min(MAX_BACKOFF_S, 0.1 * 2**worker.failures) if worker.failures else 0.0
        log.warning(
            "worker died; starting it again",
            extra=log_fields(worker=worker.index, worker_pid=pid, exit_code=code, after_s=pause),
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), pause)
        if not self.stop.is_set():
            self.restarts.labels(self.name).inc()
            await self._start(worker)
        return None

    def _forget(self, pid: int) -> None:
        """A dead worker's gauges are gone with it; its counters still count."""
        multiprocess.mark_process_dead(pid, str(self.metrics_dir))  # type: ignore[no-untyped-call]
        for path in self.metrics_dir.glob(f"gauge_*_{pid}.db"):
            path.unlink(missing_ok=True)

    async def _stop_all(self) -> None:
        """SIGTERM to every worker (each drains), then wait for all of them."""
        running = [w for w in self.workers if w.proc is not None and w.proc.returncode is None]
        for worker in running:
            assert worker.proc is not None
            with contextlib.suppress(ProcessLookupError):
                worker.proc.send_signal(signal.SIGTERM)
        for worker in running:
            assert worker.proc is not None
            await worker.proc.wait()
            self._close_ready(worker)


def supervise(name: str, settings: Settings, count: int) -> int:
    import uvloop

    return uvloop.run(Supervisor(name, settings, count).run())
