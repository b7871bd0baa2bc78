"""switchboard keys create | revoke | list (the registry's admin API)."""

from __future__ import annotations

import argparse
from typing import Any
from urllib.parse import quote

from switchboard_cli import render
from switchboard_cli.context import Context
from switchboard_cli.exit_codes import ExitCode

LIST_HINT = "`switchboard keys list --all` shows the keys"


def create(args: argparse.Namespace, ctx: Context) -> int:
    body: dict[str, Any] = {"name": args.name}
    if args.models:
        body["models"] = list(args.models)
    if args.rpm:
        body["rpm"] = args.rpm
    if args.tpm:
        body["tpm"] = args.tpm
    if args.budget:
        body["budget"] = args.budget
    with ctx.edge() as edge:
        reply = edge.call(
            "POST",
            "/v1/admin/keys",
            body=body,
            hints={
                409: f"a key named {args.name!r} exists already (revoked keys keep their "
                "name): pick another name; " + LIST_HINT,
                404: "a model in --model does not exist: `switchboard models list`",
            },
        )
    if ctx.json:
        ctx.print_json(reply)
        return ExitCode.OK
    ctx.out.print(render.key_created(reply), highlight=False, soft_wrap=True)
    return ExitCode.OK


def revoke(args: argparse.Namespace, ctx: Context) -> int:
    with ctx.edge() as edge:
        reply = edge.call(
            "POST",
            f"/v1/admin/keys/{quote(args.name, safe='')}:revoke",
            body={},
            hints={404: LIST_HINT},
        )
    if ctx.json:
        ctx.print_json(reply)
        return ExitCode.OK
    ctx.done(f"revoked key {args.name}: calls with it get 401 within a second")
    return ExitCode.OK


def list_keys(args: argparse.Namespace, ctx: Context) -> int:
    params: dict[str, str | int] = {"include_revoked": "true"} if args.include_revoked else {}
    with ctx.edge() as edge:
        keys = edge.list_all("/v1/admin/keys", "keys", params)
    if ctx.json:
        ctx.print_json({"keys": keys})
        return ExitCode.OK
    if not keys:
        ctx.out.print("no keys" + ("" if args.include_revoked else " (--all shows revoked ones)"))
        return ExitCode.OK
    ctx.out.print(render.keys_table(keys))
    return ExitCode.OK
