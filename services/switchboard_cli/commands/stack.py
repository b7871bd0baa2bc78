"""switchboard up | down | status: the local stack, through switchboard_stack's own
functions (the same Stack, pid files and readiness probes as `make up`), so there is
one way to start and stop it. `up` shows each component as it becomes ready."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import io
import os
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TextIO, cast

from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from switchboard_cli import render
from switchboard_cli.context import Context
from switchboard_cli.exit_codes import CliError, ExitCode

if TYPE_CHECKING:
    from switchboard_common.settings import Settings
    from switchboard_stack.components import Component


def _settings() -> Settings:
    from switchboard_common.settings import Settings

    try:
        return Settings.from_env()
    except ValueError as exc:
        raise CliError(ExitCode.USAGE, str(exc), "fix the variable, or unset it") from None


def _plan(settings: Settings) -> list[Component]:
    from switchboard_stack.components import plan

    try:
        return plan(settings)
    except (FileNotFoundError, ImportError) as exc:
        raise CliError(
            ExitCode.FAILED,
            f"the stack's tools are missing: {exc}",
            "run `make install` (it installs Envoy and the broker into .venv)",
        ) from None


def listening(host: str, port: int) -> bool:
    """True when something accepts connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=0.3):
            return True
    except OSError:
        return False


def wanted_ports(settings: Settings) -> list[tuple[str, str, int]]:
    """(what, host, port) for every port the stack is about to listen on."""
    from switchboard_stack import envoy
    from switchboard_stack.components import SERVICES, broker_address

    ports = [
        ("the edge (SWITCHBOARD_EDGE_PORT)", "127.0.0.1", settings.edge_port),
        ("Envoy's admin (SWITCHBOARD_ENVOY_ADMIN_PORT)", "127.0.0.1", envoy.admin_port()),
    ]
    broker = broker_address(settings)
    if broker is not None:
        ports.append(("the broker (KAFKA_BOOTSTRAP)", broker[0], broker[1]))
    for name in SERVICES:
        variable = f"SWITCHBOARD_{name.upper()}_PORT"
        if name == "router":
            variable = "SWITCHBOARD_GRPC_PORT"
        ports.append((f"the {name} service ({variable})", settings.host, settings.ports[name]))
        metrics = settings.metrics_port(name)
        if metrics:
            metrics_variable = f"SWITCHBOARD_{name.upper()}_METRICS_PORT"
            ports.append((f"{name} metrics ({metrics_variable})", settings.metrics_host, metrics))
    return ports


def check_ports_free(
    ports: list[tuple[str, str, int]], is_listening: Callable[[str, int], bool] = listening
) -> None:
    """Refuse to start over ports something else holds: the readiness probes would
    find that other program (another stack, say) and report this one healthy."""
    busy = [(what, host, port) for what, host, port in ports if is_listening(host, port)]
    if busy:
        lines = "\n".join(f"{host}:{port} {what}" for what, host, port in busy)
        raise CliError(
            ExitCode.FAILED,
            f"{len(busy)} port(s) the stack needs are in use",
            "stop what holds them (another stack: `switchboard down` with its "
            "SWITCHBOARD_HOME), or choose other ports with the variables named above",
            detail=lines,
        )


class ReadyBoard:
    """One progress row per component: waiting, starting (its probe runs), ready."""

    def __init__(self, progress: Progress, components: list[Component]) -> None:
        self.progress = progress
        self.tasks: dict[str, TaskID] = {
            c.name: progress.add_task(c.name, total=1, start=False, state="[dim]waiting")
            for c in components
        }
        self.started: set[str] = set()
        self.ready: set[str] = set()

    def watch(self, component: Component) -> Component:
        """The same component, its readiness probe reporting to the board."""
        probe: Callable[[], Awaitable[bool]] = component.ready
        task = self.tasks[component.name]

        async def ready() -> bool:
            if component.name not in self.started:
                self.started.add(component.name)
                self.progress.start_task(task)
                self.progress.update(task, state="[yellow]starting")
            ok = await probe()
            if ok and component.name not in self.ready:
                self.ready.add(component.name)
                self.progress.update(task, completed=1, state="[green]ready")
            return ok

        return dataclasses.replace(component, ready=ready)

    def failed(self) -> None:
        for name, task in self.tasks.items():
            if name in self.ready:
                continue
            state = "[red]failed" if name in self.started else "[dim]not started"
            self.progress.update(task, state=state)
            self.progress.stop_task(task)


def _banner(settings: Settings, chat_model: str | None, ctx: Context) -> None:
    edge = f"http://127.0.0.1:{settings.edge_port}"
    ctx.done(f"Switchboard is up: {edge}/v1 (OpenAI-compatible); state in {settings.home}")
    lines = [
        "  switchboard models list       (the admin API: needs SWITCHBOARD_ADMIN_KEY)",
        "  switchboard status            switchboard down",
    ]
    if chat_model:
        lines.insert(0, f'  switchboard chat "hello" --model {chat_model}')
    if not os.environ.get("SWITCHBOARD_ADMIN_KEY"):
        lines.append(
            "  the admin API is off: export SWITCHBOARD_ADMIN_KEY=<a secret> before "
            "`switchboard up` to manage models and keys"
        )
    ctx.out.print("try:\n" + "\n".join(lines), style="dim", markup=False, highlight=False)


async def _start(settings: Settings, components: list[Component], ctx: Context) -> None:
    from switchboard_stack.supervisor import Stack, StackError

    # The supervisor's own "[stack] … is ready" lines are replaced by the board.
    stack = Stack(settings, out=io.StringIO())
    progress = Progress(
        SpinnerColumn(finished_text="[green]✓"),
        TextColumn("{task.description:<10}"),
        TextColumn("{task.fields[state]}"),
        TimeElapsedColumn(),
        console=ctx.out,
    )
    board = ReadyBoard(progress, components)
    stack.components = [board.watch(c) for c in components]
    ctx.out.print(f"starting Switchboard (state in {settings.home})", style="dim", markup=False)
    try:
        with progress:
            try:
                await stack.start(foreground=False)
            except BaseException:
                board.failed()
                raise
    except StackError as exc:
        await stack.stop()
        first, _, rest = str(exc).partition("\n")
        raise CliError(
            ExitCode.FAILED,
            f"the stack did not start: {first}",
            f"fix the cause, then `switchboard up` again; logs are in {settings.home / 'logs'}",
            detail=rest or None,
        ) from None
    except (asyncio.CancelledError, KeyboardInterrupt):
        ctx.err.print("interrupted: stopping what was started", style="yellow")
        await stack.stop()
        raise
    except Exception as exc:
        # Whatever else went wrong (a port in use, an unwritable home, a broken
        # template), `up` never leaves half a stack running, and says what it was.
        await stack.stop()
        raise CliError(
            ExitCode.FAILED,
            f"the stack did not start: {type(exc).__name__}: {exc}",
            f"logs are in {settings.home / 'logs'}; fix the cause, then `switchboard up` again",
        ) from None


def up(args: argparse.Namespace, ctx: Context) -> int:
    import uvloop

    from switchboard_common.config import ConfigError, load_config
    from switchboard_stack.supervisor import running

    settings = _settings()
    try:
        config = load_config(settings.config_path)
    except ConfigError as exc:
        raise CliError(
            ExitCode.USAGE,
            str(exc),
            "fix the file, or point SWITCHBOARD_CONFIG at another one",
        ) from None
    components = _plan(settings)
    already = running(settings)
    if already:
        missing = [c.name for c in components if c.name not in already]
        if missing:
            raise CliError(
                ExitCode.FAILED,
                f"the stack is partly running: {', '.join(missing)} not",
                f"`switchboard down && switchboard up` restarts it; logs are in "
                f"{settings.home / 'logs'}",
            )
        ctx.done(
            f"already running: {', '.join(sorted(already))} "
            "(`switchboard status` checks them, `switchboard down` stops them)"
        )
        return ExitCode.OK
    check_ports_free(wanted_ports(settings))
    uvloop.run(_start(settings, components, ctx))
    chat_models = [m.name for m in config.models if m.kind == "chat"]
    _banner(settings, chat_models[0] if chat_models else None, ctx)
    return ExitCode.OK


class _Lines(io.TextIOBase):
    """A text stream that hands each complete line to a callback."""

    def __init__(self, line: Callable[[str], None]) -> None:
        self._line = line
        self._partial = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._partial += text
        *lines, self._partial = self._partial.split("\n")
        for line in lines:
            self._line(line)
        return len(text)


def down(args: argparse.Namespace, ctx: Context) -> int:
    from switchboard_stack.supervisor import stop_pids

    settings = _settings()

    def line(text: str) -> None:
        text = text.removeprefix("[stack] ").strip()
        if text.startswith("stopped "):
            ctx.done(text)
        elif text == "nothing is running":
            ctx.out.print(f"nothing is running (state in {settings.home})", markup=False)
        elif text:
            ctx.out.print(text, highlight=False, markup=False)

    with ctx.err.status("stopping the stack…"):
        code = stop_pids(settings, out=cast(TextIO, _Lines(line)))
    return ExitCode.OK if code == 0 else ExitCode.FAILED


async def _probe(components: list[Component], pids: dict[str, int]) -> list[bool]:
    async def one(component: Component) -> bool:
        return component.name in pids and await component.ready()

    return list(await asyncio.gather(*(one(c) for c in components)))


def _address(settings: Settings, name: str) -> str:
    if name == "broker":
        return settings.kafka_bootstrap
    if name == "envoy":
        return f"http://127.0.0.1:{settings.edge_port}"
    return settings.address(name)


def status(args: argparse.Namespace, ctx: Context) -> int:
    import uvloop

    from switchboard_stack.supervisor import running

    settings = _settings()
    components = _plan(settings)
    pids = running(settings)
    healthy = uvloop.run(_probe(components, pids)) if pids else [False] * len(components)
    rows = [
        render.ComponentState(c.name, pids.get(c.name), ok, _address(settings, c.name))
        for c, ok in zip(components, healthy, strict=True)
    ]
    if ctx.json:
        ctx.print_json(
            {
                "home": str(settings.home),
                "components": [dataclasses.asdict(row) for row in rows],
            }
        )
    if not pids:
        raise CliError(
            ExitCode.UNREACHABLE,
            f"the stack is not running (state in {settings.home})",
            "`switchboard up` starts it",
        )
    if not ctx.json:
        ctx.out.print(render.stack_table(rows, str(settings.home)))
    unhealthy = [row.name for row in rows if not row.healthy]
    if unhealthy:
        raise CliError(
            ExitCode.FAILED,
            f"not healthy: {', '.join(unhealthy)}",
            f"their logs are in {settings.home / 'logs'}; "
            "`switchboard down && switchboard up` restarts the stack",
        )
    return ExitCode.OK
