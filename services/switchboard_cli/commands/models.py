"""switchboard models list | add | enable | disable | activate | defaults (the registry's
admin API)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from switchboard_cli import render
from switchboard_cli.context import Context
from switchboard_cli.edge import JSON, Edge
from switchboard_cli.exit_codes import CliError, ExitCode
from switchboard_cli.parser import MEDIA_PRICES, MODEL_KINDS, MODEL_USES

STATUS_FILTER = {"online": "ONLINE_FILTER_ONLINE", "offline": "ONLINE_FILTER_OFFLINE"}
KIND = {kind: f"MODEL_KIND_{kind.upper()}" for kind in MODEL_KINDS}
# The registry's default-model uses: `models activate --use`.
USES = {use: f"MODEL_USE_{use.upper()}" for use in MODEL_USES}
LIST_HINT = "`switchboard models list` shows the models"


def _path(name: str) -> str:
    return f"/v1/admin/models/{quote(name, safe='')}"


def list_models(args: argparse.Namespace, ctx: Context) -> int:
    params: dict[str, str | int] = {}
    if args.status in STATUS_FILTER:
        params["status"] = STATUS_FILTER[args.status]
    if args.tag:
        params["tag"] = args.tag
    if args.provider:
        params["provider"] = args.provider
    if args.kind:
        params["kind"] = KIND[args.kind]
    with ctx.edge() as edge:
        models = edge.list_all("/v1/admin/models", "models", params)
    if ctx.json:
        ctx.print_json({"models": models})
        return ExitCode.OK
    if not models:
        ctx.out.print("no models match" if params else "no models yet: `switchboard models add`")
        return ExitCode.OK
    ctx.out.print(render.models_table(models))
    online = sum(1 for m in models if m.get("online", True))
    ctx.out.print(f"{len(models)} model(s), {online} online", style="dim")
    return ExitCode.OK


def model_body(args: argparse.Namespace) -> JSON:
    """The Model JSON for `models add` (created offline; see add())."""
    body: dict[str, Any] = {
        "name": args.name,
        "kind": KIND[args.kind],
        "online": False,
    }
    if args.description:
        body["description"] = args.description
    if args.alias:
        body["aliases"] = list(args.alias)
    if args.tag:
        body["tags"] = list(args.tag)
    pricing: dict[str, Any] = {}
    if args.input_per_1k is not None:
        pricing["input_per_1k"] = args.input_per_1k
    if args.output_per_1k is not None:
        pricing["output_per_1k"] = args.output_per_1k
    for flag, _ in MEDIA_PRICES:
        price = getattr(args, flag.replace("-", "_"))
        if price is not None:
            pricing[flag.replace("-", "_")] = price
    if args.currency:
        pricing["currency"] = args.currency
    if pricing:
        body["pricing"] = pricing
    parameters = {
        name: value
        for name in ("temperature", "max_tokens", "top_p")
        if (value := getattr(args, f"default_{name}")) is not None
    }
    if parameters:
        body["default_parameters"] = parameters
    return body


def add_model(
    edge: Edge, args: argparse.Namespace, step: Callable[[str], None] | None = None
) -> JSON:
    """Create the model offline, add its deployment, then switch it online (unless
    --offline): clients never see it online without a deployment. If the deployment
    is refused (unknown provider, say), the model is deleted again, so a failed `add`
    leaves nothing behind. `step(text)` reports progress."""

    def say(text: str) -> None:
        if step is not None:
            step(text)

    say(f"creating model {args.name}")
    edge.call(
        "POST",
        "/v1/admin/models",
        body=model_body(args),
        hints={409: "pick another name; " + LIST_HINT},
    )
    say(f"adding deployment {args.provider}/{args.upstream_model}")
    try:
        edge.call(
            "POST",
            f"{_path(args.name)}/deployments",
            body={"provider": args.provider, "upstream_model": args.upstream_model},
            hints=dict.fromkeys(
                (400, 404),
                f"check --provider {args.provider!r}: it must be a provider in the registry "
                "(the config file's `providers:`, or GET /v1/admin/providers)",
            ),
        )
    except CliError as error:
        try:
            edge.call("DELETE", _path(args.name))
        except CliError as cleanup:
            error.hint = (error.hint or "") + (
                f"; the model {args.name!r} was created but could not be removed again "
                f"({cleanup.message}): remove it with DELETE /v1/admin/models/{args.name}"
            )
        else:
            error.message += "; the model was not added"
        raise
    if args.offline:
        return edge.call("GET", _path(args.name))
    say(f"switching {args.name} online")
    return edge.call("PATCH", _path(args.name), body={"online": True})


def add(args: argparse.Namespace, ctx: Context) -> int:
    with ctx.edge() as edge, ctx.err.status("adding model…") as spinner:
        reply = add_model(edge, args, step=lambda text: spinner.update(f"{text}…"))
    model = reply.get("model") or {}
    if ctx.json:
        ctx.print_json(reply)
        return ExitCode.OK
    ctx.out.print(render.models_table([model]))
    state = "offline (`switchboard models enable` puts it online)" if args.offline else "online"
    ctx.done(f"added model {args.name}, {state}; routers serve changes within a second")
    if not args.offline:
        ctx.out.print(
            f'try: switchboard chat "hello" --model {args.name}', style="dim", markup=False
        )
    return ExitCode.OK


def _switch(args: argparse.Namespace, ctx: Context, online: bool) -> int:
    with ctx.edge() as edge:
        reply = edge.call(
            "PATCH",
            _path(args.name),
            body={"online": online},
            hints={404: LIST_HINT},
        )
    if ctx.json:
        ctx.print_json(reply)
        return ExitCode.OK
    if online:
        ctx.done(f"model {args.name} is online")
    else:
        ctx.done(f"model {args.name} is offline: calls to it get 404 until it is enabled again")
    return ExitCode.OK


def enable(args: argparse.Namespace, ctx: Context) -> int:
    return _switch(args, ctx, online=True)


def disable(args: argparse.Namespace, ctx: Context) -> int:
    return _switch(args, ctx, online=False)


def activate(args: argparse.Namespace, ctx: Context) -> int:
    """Set the registry's default model for a use (the "active" model)."""
    with ctx.edge() as edge:
        reply = edge.call(
            "PUT",
            f"/v1/admin/defaults/{USES[args.use]}",
            body={"model": args.name},
            hints={400: LIST_HINT},
        )
    if ctx.json:
        ctx.print_json(reply)
        return ExitCode.OK
    ctx.done(f"model {args.name} is now the active {args.use} model")
    return ExitCode.OK


def defaults(args: argparse.Namespace, ctx: Context) -> int:
    """The registry's default model per use (`models activate` sets one)."""
    with ctx.edge() as edge:
        reply = edge.call("GET", "/v1/admin/defaults")
    if ctx.json:
        ctx.print_json(reply)
        return ExitCode.OK
    by_use = {
        str(d.get("use", "")).removeprefix("MODEL_USE_").lower(): str(d.get("model", ""))
        for d in reply.get("defaults") or []
    }
    ctx.out.print(render.defaults_table(by_use, MODEL_USES))
    ctx.out.print(
        "calls that name no model go to their use's model; "
        "`switchboard models activate NAME --use USE` sets one",
        style="dim",
        markup=False,
    )
    return ExitCode.OK
