"""The whole local stack (broker, services, Envoy) as `make up` starts it, on
free ports and a private SWITCHBOARD_HOME: for end-to-end tests and the benchmark."""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from switchboard_stack.supervisor import read_pid_file

REPO = Path(__file__).resolve().parents[2]


# Ports are handed out below the kernel's ephemeral range, from a block of
# their own per test worker. A port the kernel picks (a bind to port 0, an
# outgoing connection) is never one of these, nor is one another worker hands
# out: with the kernel's picks, another worker could take a port between the
# check here and its user's bind, and then answer that user's probes.
_POOL_FIRST = 10000
_BLOCK = 2000


def _ephemeral_first() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _own_ports() -> Iterator[int]:
    """This process's block, in turn from a random start: the block is chosen by
    the pytest-xdist worker number (the first is shared by the processes
    outside pytest-xdist's workers)."""
    blocks = max(1, (_ephemeral_first() - _POOL_FIRST) // _BLOCK)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    slot = int(worker[2:]) + 1 if worker[2:].isdigit() else 0
    first, start = _POOL_FIRST + (slot % blocks) * _BLOCK, secrets.randbelow(_BLOCK)
    return (first + (start + i) % _BLOCK for i in itertools.count())


_ports: Iterator[int] | None = None


def free_port() -> int:
    """A port nothing listens on, from this process's block, never handed out
    again before the block wraps around."""
    global _ports
    if _ports is None:
        _ports = _own_ports()
    for port in itertools.islice(_ports, _BLOCK):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise OSError(f"no free port among {_BLOCK} in this process's block")


@dataclass(frozen=True)
class Stack:
    edge_url: str
    router_address: str
    home: Path
    env: dict[str, str]

    def log(self, component: str) -> str:
        return (self.home / "logs" / f"{component}.log").read_text(errors="replace")

    def restart(
        self, component: str, kill: bool = False, module: str | None = None, **env: str
    ) -> None:
        """Stop one component (SIGKILL with kill=True) and start it again with
        `env` added (from entry module `module` if given), waiting until it is ready."""
        command = ["restart", component] + (["--kill"] if kill else [])
        command += ["--module", module] if module else []
        done = _run(command, {**self.env, **env}, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"restart {component} failed:\n{done.stdout}\n{done.stderr}")

    def pids(self) -> dict[str, int]:
        run = self.home / "run"
        return {p.stem: read_pid_file(p)[0] for p in run.glob("*.pid")}


def _run(
    command: str | list[str], env: Mapping[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    args = [command] if isinstance(command, str) else command
    return subprocess.run(
        [sys.executable, "-m", "switchboard_stack", *args],
        env=dict(env),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# A process outside this scheme (no other test worker hands out these ports)
# can still take one between free_port() and the bind: `make up` then fails,
# and is tried again on new ports.
UP_ATTEMPTS = 3
_PORT_TAKEN = "Address already in use"
# `make up` gives each stage READY_TIMEOUT_S; past this it is stuck, not slow.
UP_TIMEOUT_S = 120.0


def _up(env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """`make up`; one that does not finish is stopped (what it started too,
    which would otherwise outlive the test) and reported with all it printed."""
    try:
        return _run("up", env, timeout=UP_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        _run("down", env, timeout=60)
        printed = "\n".join(_text(out) for out in (exc.stdout, exc.stderr) if out)
        raise RuntimeError(f"make up did not finish in {UP_TIMEOUT_S:.0f}s:\n{printed}") from None


def _text(out: str | bytes) -> str:
    # TimeoutExpired keeps bytes even from a run in text mode.
    return out.decode(errors="replace") if isinstance(out, bytes) else out


def _stack_env(
    config_path: Path, home: Path, extra_env: Mapping[str, str] | None
) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "SWITCHBOARD_HOME": str(home),
            "SWITCHBOARD_CONFIG": str(config_path),
            "SWITCHBOARD_EDGE_PORT": str(free_port()),
            "SWITCHBOARD_EDGE_HOST": "127.0.0.1",
            "SWITCHBOARD_ENVOY_ADMIN_PORT": str(free_port()),
            "SWITCHBOARD_GRPC_PORT": str(free_port()),
            "KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
            "PYTHONPATH": os.pathsep.join([str(REPO / "services"), str(REPO / "gen")]),
        }
    )
    for name in ("registry", "provider", "usage", "gpu", "engine", "router"):
        if name != "router":
            env[f"SWITCHBOARD_{name.upper()}_PORT"] = str(free_port())
        env[f"SWITCHBOARD_{name.upper()}_METRICS_PORT"] = str(free_port())
    env["SWITCHBOARD_GPU_MONITOR_PORT"] = str(free_port())
    env.update(extra_env or {})
    return env


@contextlib.contextmanager
def running_stack(
    config: Mapping[str, Any], tmp: Path, extra_env: Mapping[str, str] | None = None
) -> Iterator[Stack]:
    tmp.mkdir(parents=True, exist_ok=True)
    config_path = tmp / "switchboard.yaml"
    config_path.write_text(yaml.safe_dump(dict(config)))
    home = tmp / "home"
    for attempt in range(UP_ATTEMPTS):
        env = _stack_env(config_path, home, extra_env)
        up = _up(env)
        if up.returncode == 0:
            break
        down = _run("down", env, timeout=60)
        assert down.returncode == 0, down.stdout + down.stderr
        if _PORT_TAKEN not in up.stdout + up.stderr or attempt == UP_ATTEMPTS - 1:
            raise RuntimeError(f"make up failed ({up.returncode}):\n{up.stdout}\n{up.stderr}")
    try:
        yield Stack(
            edge_url=f"http://127.0.0.1:{env['SWITCHBOARD_EDGE_PORT']}",
            router_address=f"127.0.0.1:{env['SWITCHBOARD_GRPC_PORT']}",
            home=home,
            env=env,
        )
    finally:
        down = _run("down", env, timeout=60)
        assert down.returncode == 0, down.stdout + down.stderr
