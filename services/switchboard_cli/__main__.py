"""switchboard: the command line entry point (see `switchboard --help`)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import cast

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel

from switchboard_cli.context import Context
from switchboard_cli.exit_codes import CliError, ExitCode
from switchboard_cli.parser import build_parser
from switchboard_cli.target import resolve

Handler = Callable[[argparse.Namespace, Context], int]


def report(err: Console, error: CliError) -> None:
    err.print(f"[bold red]error:[/bold red] {escape(error.message)}", highlight=False)
    if error.detail:
        err.print(Panel(escape(error.detail), border_style="dim", expand=False), highlight=False)
    if error.hint:
        err.print(f"[yellow]hint:[/yellow] {escape(error.hint)}", highlight=False)


def _handler(dotted: str) -> Handler:
    module, _, name = dotted.partition(":")
    return cast(Handler, getattr(importlib.import_module(module), name))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    err = Console(stderr=True)
    if not getattr(args, "handler", None):
        (getattr(args, "group_parser", None) or parser).print_help(sys.stderr)
        return ExitCode.USAGE
    try:
        ctx = Context(
            out=Console(),
            err=err,
            target=resolve(
                os.environ,
                edge_url=getattr(args, "edge_url", None),
                admin_key=getattr(args, "admin_key", None),
                api_key=getattr(args, "api_key", None),
                timeout_s=getattr(args, "timeout", None),
            ),
            json=bool(getattr(args, "json", False)),
        )
        return int(_handler(args.handler)(args, ctx))
    except CliError as error:
        report(err, error)
        return error.code
    except ModuleNotFoundError as missing:
        report(
            err,
            CliError(
                ExitCode.FAILED,
                f"this command needs the Python package {missing.name!r}, which is not installed",
                f"run `make install` in the repository, or `pip install {missing.name}`",
            ),
        )
        return ExitCode.FAILED
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/yellow]")
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        # `switchboard models list | head`: the reader left; nothing more to say.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
