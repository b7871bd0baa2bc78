"""One engine on this node: its config, state, process and files."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from pathlib import Path

from switchboard.engine.v1 import engine_pb2 as pb
from switchboard.registry.v1 import engine_config_pb2 as cfg
from switchboard_engine import logs as engine_logs
from switchboard_engine import states
from switchboard_engine.process import CpuSample, EngineProcess, cpu_percent, rss_bytes

LOG_TAIL_LINES = 20


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


class Slot:
    def __init__(
        self,
        name: str,
        config: cfg.EngineConfig,
        directory: Path,
        on_change: Callable[[Slot], None] = lambda slot: None,
    ) -> None:
        self.name = name
        # Told of every state change (the engine feed).
        self.on_change = on_change
        self.config = config
        self.dir = directory
        self.state: states.State = states.CREATED
        self.reason = ""
        self.state_time = states.now()
        self.process: EngineProcess | None = None
        self.port = 0
        self.restart_count = 0
        # Crash restarts in a row (against the restart limit), and since when it
        # last answered after a (re)start.
        self.attempts = 0
        self.healthy_since = 0.0
        self.last_crash = ""
        self.deployment_id = ""
        self.registered = False
        self.task_id = ""
        # When the current (or last) process was launched: llama.cpp's log times count from it.
        self.started_at = 0.0
        self.lock = asyncio.Lock()
        self.supervisor: asyncio.Task[None] | None = None
        # The launch a start operation waits on, while it waits.
        self.launching: asyncio.Future[None] | None = None
        self._cpu: CpuSample | None = None
        if self.read_desired() == "stopped":
            self.state = states.STOPPED

    @property
    def log_path(self) -> Path:
        return self.dir / "engine.log"

    @property
    def pid_path(self) -> Path:
        return self.dir / "engine.pid"

    @property
    def local_url(self) -> str:
        return f"http://{self._connect_host()}:{self.port}"

    def _connect_host(self) -> str:
        if self.process is None:
            return "127.0.0.1"
        argv = self.process.record.argv
        host = argv[argv.index("--host") + 1] if "--host" in argv else "127.0.0.1"
        return "127.0.0.1" if host in ("0.0.0.0", "") else host

    def set_state(self, state: states.State, reason: str) -> None:
        self.state = state
        self.reason = reason
        self.state_time = states.now()
        self.on_change(self)

    def alive(self) -> bool:
        return self.process is not None and self.process.exit_status() is None

    def adopt_process(self, process: EngineProcess) -> None:
        self.process = process
        self.port = process.record.port
        self.started_at = process.record.started_at
        self._cpu = None
        process.record.save(self.pid_path)

    def forget_process(self) -> None:
        self.process = None
        self.port = 0
        self.registered = False
        self.pid_path.unlink(missing_ok=True)

    def mark_launch(self, argv: list[str]) -> None:
        """A line in the log before each launch: where a run starts, and when."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("a") as f:
            f.write(f"{engine_logs.MARKER} {states.now().isoformat()} {' '.join(argv)}\n")

    def write_desired(self, desired: str) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "desired").write_text(desired)

    def read_desired(self) -> str:
        try:
            return (self.dir / "desired").read_text().strip()
        except OSError:
            return ""

    def remove_files(self) -> None:
        self.pid_path.unlink(missing_ok=True)
        (self.dir / "desired").unlink(missing_ok=True)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return "\n".join(engine_logs.tail(self.log_path, lines))

    def to_proto(
        self, node: str, advertise_host: str, gpu_memory: list[tuple[str, int]]
    ) -> pb.Engine:
        engine = pb.Engine(
            name=self.name,
            config=self.config,
            state=self.state,
            state_reason=self.reason,
            node=node,
            restart_count=self.restart_count,
            last_crash=self.last_crash,
            deployment_id=self.deployment_id,
            task_id=self.task_id,
        )
        engine.state_time.FromDatetime(self.state_time)
        if self.process is not None and self.alive():
            engine.pid = self.process.pid
            engine.port = self.port
            engine.base_url = f"http://{advertise_host}:{self.port}/v1"
            engine.usage.rss_bytes = rss_bytes(self.process.pid)
            engine.usage.cpu_percent, self._cpu = cpu_percent(self.process.pid, self._cpu)
            for uuid, used in gpu_memory:
                engine.usage.gpu_memory.add(gpu_uuid=uuid, used_mib=used)
        return engine
