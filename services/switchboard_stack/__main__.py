"""python -m switchboard_stack {run,up,down,status}"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import uvloop

from switchboard_common.config import ConfigError, load_config
from switchboard_common.settings import Settings
from switchboard_stack.supervisor import Stack, StackError, restart, running, stop_pids


def _banner(settings: Settings) -> str:
    edge = f"http://127.0.0.1:{settings.edge_port}"
    return (
        f"[stack] Switchboard is up: {edge}/v1 (OpenAI-compatible), "
        f"gRPC router on {settings.address('router')}; state in {settings.home}\n"
        f"[stack] try: curl {edge}/v1/models"
    )


async def _run(settings: Settings) -> int:
    stack = Stack(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        start = asyncio.create_task(stack.start(foreground=True))
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({start, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if not start.done():
            start.cancel()
            stack.say("[stack] interrupted while starting; stopping")
            return 130
        start.result()
        stack.say(_banner(settings) + "\n[stack] Ctrl-C stops everything")
        exited = asyncio.create_task(stack.wait_any_exit())
        await asyncio.wait({exited, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if exited.done():
            stack.say(f"[stack] {exited.result()} exited unexpectedly; stopping the stack")
            return 1
        stack.say("[stack] stopping")
        return 0
    except StackError as exc:
        stack.say(f"[stack] {exc}")
        return 1
    finally:
        await stack.stop()
        stack.say("[stack] stopped")


async def _up(settings: Settings) -> int:
    already = running(settings)
    if already:
        print(f"[stack] already running: {', '.join(sorted(already))} (make down stops it)")
        return 0
    stack = Stack(settings)
    try:
        await stack.start(foreground=False)
    except StackError as exc:
        print(f"[stack] {exc}", file=sys.stderr)
        await stack.stop()
        return 1
    print(_banner(settings) + "\n[stack] 'make down' stops it")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="switchboard-stack", description=__doc__)
    parser.add_argument("command", choices=["run", "up", "down", "status", "restart"])
    parser.add_argument("component", nargs="?", help="for restart: which component")
    parser.add_argument("--kill", action="store_true", help="for restart: SIGKILL, not SIGTERM")
    parser.add_argument(
        "--module", help="for restart: run the service from this entry module (fault drills)"
    )
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    if args.command == "down":
        return stop_pids(settings)
    if args.command == "restart":
        if not args.component:
            parser.error("restart needs a component, e.g. restart usage")
        try:
            uvloop.run(restart(settings, args.component, kill=args.kill, module=args.module))
        except StackError as exc:
            print(f"[stack] {exc}", file=sys.stderr)
            return 1
        print(f"[stack] restarted {args.component}")
        return 0
    if args.command == "status":
        pids = running(settings)
        for name, pid in sorted(pids.items()):
            print(f"{name:10} running (pid {pid})")
        return 0 if pids else 3
    try:
        load_config(settings.config_path)
    except ConfigError as exc:
        print(f"[stack] {exc}", file=sys.stderr)
        return 2
    if args.command == "run":
        return uvloop.run(_run(settings))
    return uvloop.run(_up(settings))


if __name__ == "__main__":
    sys.exit(main())
