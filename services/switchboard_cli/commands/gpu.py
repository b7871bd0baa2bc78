"""switchboard gpu status | watch: the gpu service's NVML view through the edge
(GET /v1/admin/gpu/status, and /v1/admin/gpu/watch, which streams WatchGpuMetrics
as a JSON array). A node without a GPU says so, with NVML's reason, never zeros."""

from __future__ import annotations

import argparse
import collections
import contextlib
import json

from rich.console import RenderableType
from rich.live import Live
from rich.text import Text

from switchboard_cli import render
from switchboard_cli.context import Context
from switchboard_cli.edge import JSON
from switchboard_cli.exit_codes import CliError, ExitCode

# The watch's read timeout: samples come every interval (1 s by default).
IDLE_S = 30.0
RECENT_ALERTS = 10


def status(args: argparse.Namespace, ctx: Context) -> int:
    with ctx.edge() as edge:
        reply = edge.call("GET", "/v1/admin/gpu/status", realm="admin")
    if ctx.json:
        ctx.print_json(reply)
        return ExitCode.OK
    ctx.out.print(render.gpu_view(reply.get("status") or {}, reply.get("active_alerts") or []))
    return ExitCode.OK


class WatchState:
    """What the live view shows: the latest sample, the recent alerts, a count."""

    def __init__(self) -> None:
        self.status: JSON = {}
        self.alerts: collections.deque[JSON] = collections.deque(maxlen=RECENT_ALERTS)
        self.samples = 0

    def apply(self, event: JSON) -> bool:
        """Take one stream message; True when it was a sample."""
        if "metrics_update" in event:
            self.status = event["metrics_update"] or {}
            self.samples += 1
            return True
        if "alert" in event:
            self.alerts.appendleft(event["alert"] or {})
        return False

    def view(self) -> RenderableType:
        footer = f"{self.samples} sample(s) · Ctrl-C ends the watch"
        return render.gpu_view(self.status, list(self.alerts), footer=footer)


def watch(args: argparse.Namespace, ctx: Context) -> int:
    params: dict[str, str | int] = {"interval_ms": args.interval_ms} if args.interval_ms else {}
    read_timeout = max(IDLE_S, 5 * args.interval_ms / 1000)
    state = WatchState()
    live = ctx.out.is_terminal and not ctx.json
    try:
        with (
            ctx.edge() as edge,
            contextlib.closing(
                edge.stream_array(
                    "/v1/admin/gpu/watch",
                    realm="admin",
                    params=params,
                    read_timeout_s=read_timeout,
                )
            ) as events,
        ):
            if live:
                waiting = Text(f"waiting for the first sample from {ctx.target.edge_url}…")
                with Live(waiting, console=ctx.out, refresh_per_second=4) as view:
                    for event in events:
                        state.apply(event)
                        view.update(state.view())
                        if args.count and state.samples >= args.count:
                            return ExitCode.OK
            else:
                for event in events:
                    sample = state.apply(event)
                    if ctx.json:
                        # One JSON object per line (NDJSON), flushed as it arrives.
                        ctx.out.file.write(json.dumps(event, sort_keys=True) + "\n")
                        ctx.out.file.flush()
                    elif sample:
                        line = render.gpu_line(state.status)
                        ctx.out.print(line, highlight=False, soft_wrap=True, markup=False)
                    else:
                        line = f"alert: {json.dumps(event.get('alert'))}"
                        ctx.out.print(line, highlight=False, soft_wrap=True, markup=False)
                    if args.count and state.samples >= args.count:
                        return ExitCode.OK
    except KeyboardInterrupt:
        # Ctrl-C is how a watch ends.
        return ExitCode.OK
    raise CliError(
        ExitCode.FAILED,
        "the gpu service ended the watch (it is stopping or restarting)",
        "`switchboard status` shows whether it runs; run the watch again",
    )
