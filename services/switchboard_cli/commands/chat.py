"""switchboard chat "…" --model M: the official openai SDK against the edge, the
answer streamed to stdout as it arrives (stdout holds only the answer; the model and
token counts go to stderr)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from rich.text import Text

from switchboard_cli import errors
from switchboard_cli.context import Context
from switchboard_cli.exit_codes import CliError, ExitCode

if TYPE_CHECKING:
    import openai
    from openai.types import CompletionUsage
    from openai.types.chat import ChatCompletionMessageParam

CHAT_TIMEOUT_S = 120.0
# The SDK insists on a key; an edge without keys (local development) ignores it.
NO_KEY = "no-key"


def _messages(args: argparse.Namespace) -> list[ChatCompletionMessageParam]:
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if not prompt.strip():
        raise CliError(ExitCode.USAGE, "the prompt is empty", 'e.g. switchboard chat "hello" -m M')
    messages: list[ChatCompletionMessageParam] = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    messages.append({"role": "user", "content": prompt})
    return messages


def sdk_error(exc: Exception, edge_url: str, timeout_s: float, had_key: bool) -> CliError:
    """The openai SDK's exceptions as CliErrors (401/403/404 explained). Without a key
    the SDK still sends a placeholder, so a 401 then means "this edge needs a key"."""
    import openai

    if isinstance(exc, openai.APITimeoutError):
        return errors.timed_out(edge_url, timeout_s)
    if isinstance(exc, openai.APIConnectionError):
        why = str(exc.__cause__ or exc) or "connection failed"
        return errors.unreachable(edge_url, "connection refused" if "refused" in why else why)
    if isinstance(exc, openai.APIStatusError) and exc.status_code == 401 and not had_key:
        return CliError(
            ExitCode.AUTH,
            "the edge needs an API key and none was given (HTTP 401)",
            errors.client_key_missing_hint(),
        )
    if isinstance(exc, openai.APIStatusError):
        return errors.http_error(
            exc.status_code,
            exc.body if exc.body is not None else exc.response.text,
            realm="client",
            retry_after=exc.response.headers.get("retry-after"),
        )
    if isinstance(exc, openai.APIError):
        # An error event inside a stream that had started: the upstream failed midway.
        fields = errors.error_fields(exc.body)
        return CliError(
            ExitCode.FAILED,
            f"the answer broke off: {fields.get('message') or exc.message}",
            "the model's upstream failed midway; try again",
        )
    return CliError(ExitCode.FAILED, f"the openai SDK failed: {exc}")


def chat(args: argparse.Namespace, ctx: Context) -> int:
    import openai

    messages = _messages(args)
    timeout_s = ctx.target.timeout(CHAT_TIMEOUT_S)
    client = openai.OpenAI(
        base_url=f"{ctx.target.edge_url}/v1",
        api_key=ctx.target.api_key or NO_KEY,
        # A CLI answers now: a refusal or an unreachable edge is reported, not retried.
        max_retries=0,
        timeout=timeout_s,
    )
    stream = not args.no_stream and not ctx.json
    try:
        with client:
            if stream:
                _stream(client, args, messages, ctx)
            else:
                _whole(client, args, messages, ctx)
    except openai.OpenAIError as exc:
        raise sdk_error(exc, ctx.target.edge_url, timeout_s, bool(ctx.target.api_key)) from None
    return ExitCode.OK


def _tokens(usage: CompletionUsage | None) -> str:
    if usage is None:
        return ""
    return f" · {usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens"


def _stream(
    client: openai.OpenAI,
    args: argparse.Namespace,
    messages: list[ChatCompletionMessageParam],
    ctx: Context,
) -> None:
    import openai

    out = ctx.out.file
    model: str = args.model
    usage: CompletionUsage | None = None
    wrote = False
    chunks = client.chat.completions.create(
        model=args.model,
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=openai.omit if args.max_tokens is None else args.max_tokens,
        temperature=openai.omit if args.temperature is None else args.temperature,
    )
    try:
        for chunk in chunks:
            model = chunk.model or model
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                text = choice.delta.content
                if text:
                    out.write(text)
                    out.flush()
                    wrote = True
    finally:
        chunks.close()
        if wrote:
            out.write("\n")
            out.flush()
    ctx.err.print(Text(f"{model}{_tokens(usage)}", style="dim"))


def _whole(
    client: openai.OpenAI,
    args: argparse.Namespace,
    messages: list[ChatCompletionMessageParam],
    ctx: Context,
) -> None:
    import openai

    answer = client.chat.completions.create(
        model=args.model,
        messages=messages,
        max_tokens=openai.omit if args.max_tokens is None else args.max_tokens,
        temperature=openai.omit if args.temperature is None else args.temperature,
    )
    if ctx.json:
        ctx.print_json(answer.model_dump(mode="json"))
        return
    for choice in answer.choices:
        ctx.out.file.write((choice.message.content or "") + "\n")
    ctx.out.file.flush()
    ctx.err.print(Text(f"{answer.model}{_tokens(answer.usage)}", style="dim"))
