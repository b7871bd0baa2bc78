"""Start, watch and stop the stack's processes.

Every child runs in its own session, so Ctrl-C reaches only the supervisor,
which then stops the children in reverse start order (SIGTERM, then SIGKILL
after a grace period). Pid files under $SWITCHBOARD_HOME/run let `down` stop
what `up` started, from another process.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from switchboard_common.settings import Settings
from switchboard_stack import envoy
from switchboard_stack.components import SERVICES, Component, plan

READY_TIMEOUT_S = 60.0
# One readiness probe's longest wait: past it the component is not ready yet.
PROBE_TIMEOUT_S = 3.0
STOP_GRACE_S = 15.0
TAIL_LINES = 40
REPO = Path(__file__).resolve().parents[2]


class StackError(Exception):
    pass


def _env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env["SWITCHBOARD_HOME"] = str(settings.home)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO / "services"), str(REPO / "gen"), env.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def tail(path: Path, lines: int = TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


async def _probe(component: Component) -> bool:
    """Whether the component is ready. A probe that hangs (its own timeouts
    notwithstanding: a health check once never returned, and `make up` waited
    past every deadline) is a "not yet", so the stack's deadline still holds."""
    try:
        return await asyncio.wait_for(component.ready(), PROBE_TIMEOUT_S)
    except TimeoutError:
        return False


class Stack:
    def __init__(self, settings: Settings, out: TextIO = sys.stdout) -> None:
        self.settings = settings
        self.out = out
        self.logs = settings.home / "logs"
        self.run_dir = settings.home / "run"
        self.components = plan(settings)
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self._pumps: list[asyncio.Task[None]] = []

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def pid_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    async def start(self, foreground: bool) -> None:
        self.check_ports_free(self.components)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        envoy.render(self.settings, self.settings.home / "envoy" / "envoy.yaml")
        env = _env(self.settings)
        width = max(len(c.name) for c in self.components)
        for stage in sorted({c.stage for c in self.components}):
            group = [c for c in self.components if c.stage == stage]
            for component in group:
                await self._spawn(component, env, foreground, width)
            await self._await_ready(group)

    @staticmethod
    def check_ports_free(components: Sequence[Component]) -> None:
        """Refuse to start over something already listening: its readiness
        probe would answer for us and the stack would look healthy."""
        for component in components:
            for port in component.ports:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                    probe.settimeout(0.5)
                    taken = probe.connect_ex(("127.0.0.1", port)) == 0
                if taken:
                    raise StackError(
                        f"port {port} ({component.name}) is already in use: is another stack "
                        "running? `make down` stops it, or set SWITCHBOARD_*_PORT"
                    )

    async def _spawn(
        self, component: Component, env: dict[str, str], foreground: bool, width: int
    ) -> None:
        log_path = self.logs / f"{component.name}.log"
        if foreground:
            proc = await asyncio.create_subprocess_exec(
                *component.argv,
                env=env,
                cwd=REPO,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
            self._pumps.append(
                asyncio.create_task(self._pump(component.name.ljust(width), proc, log_path))
            )
        else:
            with log_path.open("ab") as log:
                proc = await asyncio.create_subprocess_exec(
                    *component.argv,
                    env=env,
                    cwd=REPO,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,
                )
        self.procs[component.name] = proc
        # The pid, and what its command line names: how a later `down` or
        # `restart` knows the pid is still this component (pids get reused).
        self.pid_file(component.name).write_text(f"{proc.pid}\n{_marker(component)}\n")

    async def _pump(self, prefix: str, proc: asyncio.subprocess.Process, log_path: Path) -> None:
        assert proc.stdout is not None
        with log_path.open("ab") as log:
            async for line in proc.stdout:
                log.write(line)
                log.flush()
                self.out.write(f"{prefix} | {line.decode(errors='replace')}")
                self.out.flush()

    async def _await_ready(self, group: Sequence[Component]) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        pending = list(group)
        while pending:
            for component in list(pending):
                proc = self.procs[component.name]
                if proc.returncode is not None:
                    raise StackError(self._failure(component, f"exited with {proc.returncode}"))
                if await _probe(component):
                    pending.remove(component)
                    self.say(f"[stack] {component.name} is ready")
            if pending and time.monotonic() > deadline:
                raise StackError(
                    self._failure(pending[0], f"not ready after {READY_TIMEOUT_S:.0f}s")
                )
            if pending:
                await asyncio.sleep(0.1)

    def _failure(self, component: Component, why: str) -> str:
        log_path = self.logs / f"{component.name}.log"
        return f"{component.name} {why}. Last lines of {log_path}:\n{tail(log_path)}"

    async def wait_any_exit(self) -> str:
        waits = {asyncio.create_task(p.wait()): n for n, p in self.procs.items()}
        done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        return waits[done.pop()]

    async def stop(self) -> None:
        for component in reversed(self.components):
            proc = self.procs.get(component.name)
            if proc is None:
                continue
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), STOP_GRACE_S)
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await proc.wait()
            self.pid_file(component.name).unlink(missing_ok=True)
        for pump in self._pumps:
            with contextlib.suppress(asyncio.CancelledError):
                await pump


def _default_marker(name: str) -> str:
    return {"broker": "tansu", "envoy": "envoy"}.get(name, f"switchboard_{name}")


def _marker(component: Component) -> str:
    """What the component's command line names: its module for `python -m`
    (a fault drill's wrapper module too), else the binary's name."""
    argv = list(component.argv)
    if "-m" in argv[:-1]:
        return str(argv[argv.index("-m") + 1])
    return _default_marker(component.name)


def _alive(pid: int, marker: str) -> bool:
    """True when pid is still the component we started (pids get reused)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    return marker in cmdline


def read_pid_file(path: Path) -> tuple[int, str]:
    """The pid and the marker of a pid file (older files hold the pid alone)."""
    fields = path.read_text().split()
    return int(fields[0]), fields[1] if len(fields) > 1 else _default_marker(path.stem)


def _wait_gone(pid: int, marker: str, timeout_s: float) -> bool:
    """Wait for another process (not our child: nothing to await) to exit."""
    deadline = time.monotonic() + timeout_s
    while _alive(pid, marker):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _running(settings: Settings) -> dict[str, tuple[int, str]]:
    found: dict[str, tuple[int, str]] = {}
    run_dir = settings.home / "run"
    for pid_file in sorted(run_dir.glob("*.pid")) if run_dir.exists() else []:
        try:
            pid, marker = read_pid_file(pid_file)
        except (OSError, ValueError, IndexError):
            pid_file.unlink(missing_ok=True)
            continue
        if _alive(pid, marker):
            found[pid_file.stem] = (pid, marker)
        else:
            pid_file.unlink(missing_ok=True)
    return found


def running(settings: Settings) -> dict[str, int]:
    return {name: pid for name, (pid, _) in _running(settings).items()}


def stop_pids(settings: Settings, out: TextIO = sys.stdout) -> int:
    """Stop what `up` started (in reverse start order); safe to call twice."""
    pids = _running(settings)
    if not pids:
        print("[stack] nothing is running", file=out)
        return 0
    order = [c.name for c in reversed(plan(settings))]
    for name in sorted(pids, key=lambda n: order.index(n) if n in order else -1):
        pid, marker = pids[name]
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not _wait_gone(pid, marker, STOP_GRACE_S):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        (settings.home / "run" / f"{name}.pid").unlink(missing_ok=True)
        print(f"[stack] stopped {name}", file=out)
    return 0


async def restart(
    settings: Settings, name: str, kill: bool = False, module: str | None = None
) -> None:
    """Stop one component of a running stack (SIGTERM, or SIGKILL with kill=True)
    and start it again in the background with the current environment. `module`
    runs a service from another entry module (`python -m module`): the fault
    drills start the usage service wrapped in their faults this way."""
    components = {c.name: c for c in plan(settings)}
    if name not in components:
        raise StackError(f"unknown component {name!r}; one of {', '.join(components)}")
    if module is not None:
        if name not in SERVICES:
            raise StackError(f"--module applies to a service, not {name!r}")
        components[name] = dataclasses.replace(
            components[name], argv=[sys.executable, "-m", module]
        )
    current = _running(settings).get(name)
    if current is not None:
        pid, marker = current
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL if kill else signal.SIGTERM)
        await asyncio.to_thread(_wait_gone, pid, marker, STOP_GRACE_S)
    stack = Stack(settings)
    stack.components = [components[name]]
    await stack._spawn(components[name], _env(settings), foreground=False, width=len(name))
    await stack._await_ready(stack.components)
