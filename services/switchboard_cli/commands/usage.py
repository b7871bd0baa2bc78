"""switchboard usage summary: GET /v1/usage/summary, as a table by model."""

from __future__ import annotations

import argparse

from switchboard_cli import render
from switchboard_cli.context import Context
from switchboard_cli.errors import Realm
from switchboard_cli.exit_codes import CliError, ExitCode


def summary(args: argparse.Namespace, ctx: Context) -> int:
    params: dict[str, str | int] = {}
    if args.start:
        params["start"] = args.start.isoformat()
    if args.end:
        if not args.start:
            raise CliError(
                ExitCode.USAGE, "--end needs --start", "e.g. --start 2025-01-01 --end 2025-01-31"
            )
        if args.end < args.start:
            raise CliError(ExitCode.USAGE, f"--end {args.end} is before --start {args.start}")
        params["end"] = args.end.isoformat()
    if args.model:
        params["model"] = args.model
    with ctx.edge() as edge:
        # The admin key sees every key's usage; a client key sees its own.
        realm: Realm = "admin" if ctx.target.admin_key else "client"
        reply = edge.call("GET", "/v1/usage/summary", realm=realm, params=params)
    if ctx.json:
        ctx.print_json(reply)
        return ExitCode.OK
    ctx.out.print(render.usage_table(reply))
    ctx.out.print(
        "calls are counted within about a second of their end", style="dim", highlight=False
    )
    return ExitCode.OK
