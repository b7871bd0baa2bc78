"""`switchboard`'s arguments (argparse). Each command names its handler as
"module:function" so that only the command that runs is imported (chat needs the
openai SDK, up/down/status the stack manager; neither should slow the others)."""

from __future__ import annotations

import argparse
import datetime as dt

from switchboard_cli import __version__
from switchboard_cli.exit_codes import EXIT_CODES_HELP

# The registry's model kinds (ModelKind), as the CLI spells them.
MODEL_KINDS = ("chat", "embedding", "asr", "tts", "rerank", "image")
# The registry's default-model uses (ModelUse): each kind's own, and Bisheng's.
MODEL_USES = (
    *("chat", "vision", "assistant", "knowledge_base", "evaluation", "workflow"),
    *("embedding", "asr", "tts", "rerank", "image"),
)

# Prices of the kinds priced per unit (Pricing's per_* fields): flag, unit.
MEDIA_PRICES = (
    ("per-audio-second", "second of audio (asr)"),
    ("per-1k-characters", "1,000 input characters (tts)"),
    ("per-search-unit", "search unit (rerank)"),
    ("per-image", "image (image)"),
)

COMMANDS = "switchboard_cli.commands"


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0 or value > 2**32 - 1:
        raise argparse.ArgumentTypeError(f"{value} is out of range (0 to 4294967295)")
    return value


def positive_int(text: str) -> int:
    value = non_negative_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be 0 or more")
    return value


def positive_float(text: str) -> float:
    value = non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def day(text: str) -> dt.date:
    try:
        if len(text) != 10:
            raise ValueError(text)
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date as YYYY-MM-DD") from None


def _common() -> argparse.ArgumentParser:
    """Options every command takes, before or after the command's name. Their defaults
    are SUPPRESS so a subcommand's parser does not overwrite what the top level set."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("connection")
    group.add_argument(
        "--edge-url",
        default=argparse.SUPPRESS,
        metavar="URL",
        help="the Switchboard edge (default: $SWITCHBOARD_EDGE_URL, else "
        "http://127.0.0.1:$SWITCHBOARD_EDGE_PORT, port 8080)",
    )
    group.add_argument(
        "--admin-key",
        default=argparse.SUPPRESS,
        metavar="KEY",
        help="the admin key for models and keys (default: $SWITCHBOARD_ADMIN_KEY)",
    )
    group.add_argument(
        "--api-key",
        default=argparse.SUPPRESS,
        metavar="KEY",
        help="a client API key for chat (default: $SWITCHBOARD_API_KEY; "
        "not needed when the stack has no keys)",
    )
    group.add_argument(
        "--timeout",
        type=positive_float,
        default=argparse.SUPPRESS,
        metavar="S",
        help="seconds to wait for an answer (default: 30; chat: 120)",
    )
    group.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print JSON instead of tables (for scripts)",
    )
    return common


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog="switchboard",
        description="Run and operate a Switchboard LLM gateway.",
        epilog=EXIT_CODES_HELP,
        formatter_class=_Formatter,
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"switchboard {__version__}")
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")

    def command(
        sub: argparse._SubParsersAction[argparse.ArgumentParser],
        name: str,
        handler: str,
        help_text: str,
    ) -> argparse.ArgumentParser:
        leaf = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            parents=[common],
            epilog=EXIT_CODES_HELP,
            formatter_class=_Formatter,
        )
        leaf.set_defaults(handler=f"{COMMANDS}.{handler}")
        return leaf

    def group(name: str, help_text: str) -> argparse._SubParsersAction[argparse.ArgumentParser]:
        node = commands.add_parser(name, help=help_text, description=help_text, parents=[common])
        node.set_defaults(group_parser=node)
        return node.add_subparsers(title="commands", dest="subcommand", metavar="COMMAND")

    # -- the local stack ----------------------------------------------------------
    command(commands, "up", "stack:up", "start the local stack in the background, with progress")
    command(commands, "down", "stack:down", "stop the local stack (safe to run twice)")
    command(commands, "status", "stack:status", "show each component of the local stack")

    # -- models -------------------------------------------------------------------
    models = group(
        "models", "list, add, enable, disable and activate models; their defaults (admin API)"
    )
    listing = command(models, "list", "models:list_models", "list models")
    listing.add_argument("--status", choices=["online", "offline", "all"], default="all")
    listing.add_argument("--tag", help="only models with this tag")
    listing.add_argument("--provider", help="only models with a deployment on this provider")
    listing.add_argument("--kind", choices=list(MODEL_KINDS))

    add = command(
        models, "add", "models:add", "add a model with one deployment, online unless --offline"
    )
    add.add_argument("name", help="the name clients send as `model`")
    add.add_argument("--provider", required=True, help="a provider in the registry, e.g. mock")
    add.add_argument(
        "--upstream-model", required=True, metavar="M", help="the model's name at the provider"
    )
    add.add_argument("--alias", action="append", default=[], help="another name (repeatable)")
    add.add_argument("--tag", action="append", default=[], help="a tag (repeatable)")
    add.add_argument("--kind", choices=list(MODEL_KINDS), default="chat")
    add.add_argument("--description", default="")
    for flag, metavar, tokens in (("input", "X", "prompt"), ("output", "Y", "completion")):
        add.add_argument(
            f"--{flag}-per-1k",
            type=non_negative_float,
            metavar=metavar,
            help=f"price per 1,000 {tokens} tokens",
        )
    for flag, unit in MEDIA_PRICES:
        add.add_argument(
            f"--{flag}", type=non_negative_float, metavar="X", help=f"price per {unit}"
        )
    add.add_argument("--currency", default=None, help="the prices' currency (default USD)")
    for name, kind in (("temperature", non_negative_float), ("top-p", non_negative_float)):
        add.add_argument(
            f"--default-{name}",
            type=kind,
            metavar="X",
            help=f"{name.replace('-', '_')} for calls that leave it out",
        )
    add.add_argument(
        "--default-max-tokens",
        type=positive_int,
        metavar="N",
        help="max_tokens for calls that leave it out",
    )
    add.add_argument("--offline", action="store_true", help="create it offline")

    for verb, online in (("enable", "online"), ("disable", "offline")):
        toggle = command(models, verb, f"models:{verb}", f"switch a model {online}")
        toggle.add_argument("name")

    activate = command(
        models,
        "activate",
        "models:activate",
        "make a model the active one for a use: it serves calls that name no model",
    )
    activate.add_argument("name")
    activate.add_argument(
        "--use",
        choices=list(MODEL_USES),
        default="chat",
        help="which calls it serves (default chat; vision: pictures; a kind's name: "
        "calls of that kind)",
    )
    command(
        models,
        "defaults",
        "models:defaults",
        "show the default (active) model of every use",
    )

    # -- keys ---------------------------------------------------------------------
    keys = group("keys", "create, revoke and list client API keys (admin API)")
    create = command(keys, "create", "keys:create", "create a key and print its secret once")
    create.add_argument("name")
    create.add_argument(
        "--model",
        action="append",
        default=[],
        dest="models",
        metavar="M",
        help="a model the key may use (repeatable; default: all)",
    )
    create.add_argument("--rpm", type=non_negative_int, default=0, help="requests per minute")
    create.add_argument("--tpm", type=non_negative_int, default=0, help="tokens per minute")
    create.add_argument(
        "--budget", type=non_negative_float, default=0.0, help="spend limit (pricing currency)"
    )
    revoke = command(keys, "revoke", "keys:revoke", "revoke a key (its calls get 401)")
    revoke.add_argument("name")
    key_list = command(keys, "list", "keys:list_keys", "list keys")
    key_list.add_argument(
        "--all", action="store_true", dest="include_revoked", help="include revoked keys"
    )

    # -- chat ---------------------------------------------------------------------
    chat = command(commands, "chat", "chat:chat", "chat with a model, streaming the answer")
    chat.add_argument("prompt", help='the message; "-" reads it from stdin')
    chat.add_argument("--model", "-m", required=True)
    chat.add_argument("--system", help="a system message")
    chat.add_argument("--no-stream", action="store_true", help="wait for the whole answer")
    chat.add_argument("--max-tokens", type=positive_int)
    chat.add_argument("--temperature", type=non_negative_float)

    # -- usage --------------------------------------------------------------------
    usage = group("usage", "what was used and what it cost")
    summary = command(usage, "summary", "usage:summary", "requests, tokens and cost by model")
    summary.add_argument("--start", type=day, help="first day, YYYY-MM-DD UTC (default: today)")
    summary.add_argument("--end", type=day, help="last day, inclusive (default: --start)")
    summary.add_argument("--model", help="only this model")

    # -- gpu ----------------------------------------------------------------------
    gpu = group("gpu", "GPU metrics from the gpu service (NVML)")
    command(gpu, "status", "gpu:status", "the GPUs now")
    watch = command(gpu, "watch", "gpu:watch", "a live view of the GPUs; Ctrl-C ends it (exit 0)")
    watch.add_argument(
        "--interval-ms",
        type=non_negative_int,
        default=0,
        help="sample interval (default: the service's)",
    )
    watch.add_argument("--count", type=positive_int, help="stop after this many samples")

    # -- engines ----------------------------------------------------------------
    engines = group("engines", "self-hosted llama.cpp and vLLM engines on a node (admin API)")
    command(engines, "list", "engines:list_engines", "the engines, their state and resource use")
    new = command(engines, "create", "engines:create", "create a model with its engine")
    new.add_argument("name", help="the model's name (created when it does not exist)")
    new.add_argument("--framework", choices=["llama.cpp", "vllm"], required=True)
    new.add_argument("--model-path", required=True, help="a GGUF file, or a vLLM model")
    new.add_argument("--context-size", type=non_negative_int, default=0)
    new.add_argument("--threads", type=non_negative_int, default=0)
    new.add_argument("--gpu-layers", type=non_negative_int, default=0, help="llama.cpp")
    new.add_argument("--tensor-parallel-size", type=non_negative_int, default=0, help="vLLM")
    new.add_argument("--gpu", action="append", default=[], help="a GPU index or UUID (repeatable)")
    new.add_argument("--gpu-memory-mib", type=non_negative_int, default=0)
    new.add_argument("--memory-mib", type=non_negative_int, default=0)
    new.add_argument("--start-timeout", type=non_negative_float, default=0.0, metavar="S")
    new.add_argument(
        "--extra-arg", action="append", default=[], help="passed to the engine (repeatable)"
    )
    for verb, help_text in (
        ("start", "start an engine and wait until it runs"),
        ("stop", "stop an engine (SIGTERM, then SIGKILL after the grace period)"),
        ("restart", "restart an engine"),
    ):
        op = command(engines, verb, f"engines:{verb}", help_text)
        op.add_argument("name")
        op.add_argument("--no-wait", action="store_true", help="return once the task is queued")
        if verb == "stop":
            op.add_argument("--force", action="store_true", help="SIGKILL at once")
            op.add_argument("--grace", type=non_negative_float, default=0.0, metavar="S")
    log_cmd = command(engines, "logs", "engines:logs", "an engine's log, parsed")
    log_cmd.add_argument("name")
    log_cmd.add_argument("--lines", "-n", type=positive_int, default=100)
    log_cmd.add_argument("--follow", "-f", action="store_true", help="keep printing new lines")
    return parser
