"""switchboard engines list | create | start | stop | restart | logs [--follow]:
self-hosted engines through the engine service's admin routes
(/v1/admin/engines/…). start, stop and restart follow their task
(/v1/admin/engine-tasks/{id}) with a live spinner until it ends, unless --no-wait."""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from typing import Any
from urllib.parse import quote

from rich.table import Table
from rich.text import Text

from switchboard_cli.context import Context
from switchboard_cli.edge import JSON, Edge
from switchboard_cli.exit_codes import CliError, ExitCode

LIST_HINT = "`switchboard engines list` shows this node's engines"
POLL_S = 0.25
# llama.cpp on two CPU cores loads a small model in seconds; big vLLM models take minutes.
WAIT_S = 900.0
STATE_STYLE = {
    "running": "green",
    "starting": "yellow",
    "stopping": "yellow",
    "error": "red",
    "stopped": "dim",
    "created": "dim",
}


def _label(value: object, prefix: str) -> str:
    return str(value or "").removeprefix(prefix).lower()


def _path(name: str, suffix: str = "") -> str:
    return f"/v1/admin/engines/{quote(name, safe='')}{suffix}"


def engines_table(engines: list[JSON]) -> Table:
    table = Table(box=None, pad_edge=False)
    for column in ("engine", "framework", "state", "port", "pid", "rss", "cpu", "restarts"):
        table.add_column(column)
    for e in engines:
        state = _label(e.get("state"), "ENGINE_STATE_")
        usage = e.get("usage") or {}
        rss = int(usage.get("rss_bytes") or 0)
        table.add_row(
            Text(str(e.get("name"))),
            _label((e.get("config") or {}).get("framework"), "ENGINE_FRAMEWORK_"),
            Text(state, style=STATE_STYLE.get(state, "")),
            str(e.get("port") or "—"),
            str(e.get("pid") or "—"),
            f"{rss / 2**20:.0f} MiB" if rss else "—",
            f"{float(usage.get('cpu_percent') or 0):.0f}%" if rss else "—",
            str(e.get("restart_count") or 0),
        )
    return table


def list_engines(args: argparse.Namespace, ctx: Context) -> int:
    with ctx.edge() as edge:
        reply = edge.call("GET", "/v1/admin/engines")
    if ctx.json:
        ctx.print_json(reply)
        return ExitCode.OK
    engines = reply.get("engines") or []
    if not engines:
        ctx.out.print("no engines: `switchboard engines create` adds one")
        return ExitCode.OK
    ctx.out.print(engines_table(engines))
    ctx.out.print(
        f"{reply.get('active_models', 0)} of {reply.get('max_concurrent_models', 0)} "
        "models may run at once on this node",
        style="dim",
    )
    return ExitCode.OK


def create(args: argparse.Namespace, ctx: Context) -> int:
    config: dict[str, Any] = {
        "framework": {"llama.cpp": "ENGINE_FRAMEWORK_LLAMA_CPP", "vllm": "ENGINE_FRAMEWORK_VLLM"}[
            args.framework
        ],
        "model_path": args.model_path,
    }
    for field in ("context_size", "threads", "gpu_layers", "tensor_parallel_size"):
        if getattr(args, field):
            config[field] = getattr(args, field)
    if args.extra_arg:
        config["extra_args"] = list(args.extra_arg)
    if args.gpu:
        config["gpus"] = list(args.gpu)
    if args.gpu_memory_mib or args.memory_mib:
        config["resources"] = {
            "gpu_memory_mib": args.gpu_memory_mib,
            "memory_mib": args.memory_mib,
        }
    if args.start_timeout:
        config["start_timeout_s"] = args.start_timeout
    with ctx.edge() as edge:
        reply = edge.call(
            "POST",
            "/v1/admin/engines",
            body={"name": args.name, "config": config},
            hints={409: f"model {args.name!r} has an engine already; " + LIST_HINT},
        )
    if ctx.json:
        ctx.print_json(reply)
        return ExitCode.OK
    ctx.done(f"created engine {args.name}: `switchboard engines start {args.name}` runs it")
    return ExitCode.OK


def _follow_task(ctx: Context, edge: Edge, task: JSON, verb: str) -> JSON:
    """Poll the task until it ends, with a spinner showing the engine's state."""
    task_id = str(task.get("id"))
    name = str(task.get("engine"))
    deadline = time.monotonic() + WAIT_S
    status = (
        ctx.err.status(f"{verb} {name}…")
        if ctx.err.is_terminal and not ctx.json
        else contextlib.nullcontext()
    )
    started = time.monotonic()
    with status as spinner:
        while time.monotonic() < deadline:
            task = edge.call("GET", f"/v1/admin/engine-tasks/{quote(task_id, safe='')}")["task"]
            if _label(task.get("state"), "TASK_STATE_") in ("succeeded", "failed"):
                return task
            if spinner is not None:
                engine = edge.call("GET", _path(name))["engine"]
                state = _label(engine.get("state"), "ENGINE_STATE_")
                spinner.update(
                    f"{verb} {name}: {state} ({engine.get('state_reason') or '…'}) "
                    f"{time.monotonic() - started:.0f} s"
                )
            time.sleep(POLL_S)
    raise CliError(
        ExitCode.FAILED,
        f"{verb} {name} did not finish within {WAIT_S:g} s",
        f"`switchboard engines list` shows where it is; task {task_id}",
    )


def _operate(args: argparse.Namespace, ctx: Context, op: str, verb: str, body: JSON) -> int:
    started = time.monotonic()
    with ctx.edge() as edge:
        reply = edge.call("POST", _path(args.name, f":{op}"), body=body, hints={404: LIST_HINT})
        task = reply["task"]
        if not args.no_wait:
            task = _follow_task(ctx, edge, task, verb)
    if ctx.json:
        ctx.print_json({"task": task})
    state = _label(task.get("state"), "TASK_STATE_")
    if state == "failed":
        raise CliError(
            ExitCode.FAILED,
            f"{verb} {args.name} failed: {task.get('error')}",
            f"`switchboard engines logs {args.name}` shows its log",
        )
    if not ctx.json:
        if args.no_wait:
            ctx.done(f"{verb} {args.name}: task {task.get('id')}")
        else:
            engine_state = _label(task.get("engine_state"), "ENGINE_STATE_")
            took = time.monotonic() - started
            ctx.done(f"{args.name} is {engine_state} ({took:.1f} s)")
    return ExitCode.OK


def start(args: argparse.Namespace, ctx: Context) -> int:
    return _operate(args, ctx, "start", "starting", {})


def stop(args: argparse.Namespace, ctx: Context) -> int:
    body: JSON = {"force": bool(args.force)}
    if args.grace:
        body["timeout_s"] = args.grace
    return _operate(args, ctx, "stop", "stopping", body)


def restart(args: argparse.Namespace, ctx: Context) -> int:
    return _operate(args, ctx, "restart", "restarting", {})


def logs(args: argparse.Namespace, ctx: Context) -> int:
    params: dict[str, str | int] = {"lines": args.lines}
    if args.follow:
        params["follow"] = "true"
    styles = {"LOG_LEVEL_ERROR": "red", "LOG_LEVEL_WARNING": "yellow", "LOG_LEVEL_DEBUG": "dim"}
    try:
        with (
            ctx.edge() as edge,
            contextlib.closing(
                edge.stream_array(
                    _path(args.name, "/logs"),
                    params=params,
                    read_timeout_s=24 * 3600 if args.follow else 30,
                )
            ) as lines,
        ):
            for item in lines:
                line = item.get("line") or {}
                if ctx.json:
                    ctx.out.file.write(json.dumps(line, sort_keys=True) + "\n")
                    ctx.out.file.flush()
                    continue
                level = str(line.get("level") or "")
                text = Text(f"{line.get('time', '')} ", style="dim")
                text.append(_label(level, "LOG_LEVEL_").upper()[:4].ljust(5), styles.get(level, ""))
                text.append(str(line.get("message") or ""))
                ctx.out.print(text, highlight=False, soft_wrap=True)
    except KeyboardInterrupt:
        return ExitCode.OK
    return ExitCode.OK
