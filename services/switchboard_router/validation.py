"""Request validation at the front door: every rejection names the field."""

from __future__ import annotations

from google.protobuf import struct_pb2

from switchboard.common.v1 import openai_pb2
from switchboard_common.errors import R, SwitchboardError
from switchboard_common.values import to_python

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
MAX_MESSAGES = 4096
MAX_N = 16
MAX_TOKENS_LIMIT = 1_000_000
MAX_STOP = 4


def _bad(param: str, message: str) -> SwitchboardError:
    return SwitchboardError(R.ERROR_REASON_INVALID_REQUEST, message, param=param)


def _check_common(
    model: str,
    temperature: float | None,
    top_p: float | None,
    n: int | None,
    max_tokens: tuple[str, int] | None,
    stop: struct_pb2.Value | None,
) -> None:
    if not model.strip():
        raise _bad("model", "you must provide a model parameter")
    if temperature is not None and not 0 <= temperature <= 2:
        raise _bad("temperature", "temperature must be between 0 and 2")
    if top_p is not None and not 0 <= top_p <= 1:
        raise _bad("top_p", "top_p must be between 0 and 1")
    if n is not None and not 1 <= n <= MAX_N:
        raise _bad("n", f"n must be between 1 and {MAX_N}")
    if max_tokens is not None:
        name, value = max_tokens
        if not 1 <= value <= MAX_TOKENS_LIMIT:
            raise _bad(name, f"{name} must be between 1 and {MAX_TOKENS_LIMIT}")
    if stop is not None:
        stops = to_python(stop)
        if stops is None or isinstance(stops, str):
            return
        if (
            not isinstance(stops, list)
            or len(stops) > MAX_STOP
            or not all(isinstance(s, str) for s in stops)
        ):
            raise _bad("stop", f"stop must be a string or an array of at most {MAX_STOP} strings")


def validate_chat(params: openai_pb2.ChatCompletionParams) -> None:
    max_tokens: tuple[str, int] | None = None
    if params.HasField("max_completion_tokens"):
        max_tokens = ("max_completion_tokens", params.max_completion_tokens)
    elif params.HasField("max_tokens"):
        max_tokens = ("max_tokens", params.max_tokens)
    _check_common(
        params.model,
        params.temperature if params.HasField("temperature") else None,
        params.top_p if params.HasField("top_p") else None,
        params.n if params.HasField("n") else None,
        max_tokens,
        params.stop if params.HasField("stop") else None,
    )
    if not params.messages:
        raise _bad("messages", "messages must be a non-empty array")
    if len(params.messages) > MAX_MESSAGES:
        raise _bad("messages", f"messages must have at most {MAX_MESSAGES} entries")
    for i, message in enumerate(params.messages):
        where = f"messages[{i}]"
        if message.role not in ROLES:
            raise _bad(
                f"{where}.role",
                f"{where}.role must be one of {', '.join(sorted(ROLES))}; got {message.role!r}",
            )
        if message.HasField("content"):
            _check_content(where, to_python(message.content))
        elif message.role in ("user", "system", "developer"):
            raise _bad(f"{where}.content", f"{where}.content is required for role {message.role}")


def _check_content(where: str, content: object) -> None:
    if content is None or isinstance(content, str):
        return
    if not isinstance(content, list):
        raise _bad(f"{where}.content", f"{where}.content must be a string or an array of parts")
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            continue
        if kind == "image_url" and isinstance(part.get("image_url"), dict):
            url = part["image_url"].get("url")
            if isinstance(url, str) and url.startswith(("https://", "http://", "data:image/")):
                continue
        if kind in ("input_audio", "file") and isinstance(part.get(kind), dict):
            continue
        if kind == "refusal" and isinstance(part.get(kind, ""), dict | str):
            continue
        raise _bad(
            f"{where}.content[{j}]",
            f"{where}.content[{j}] must be a text part, or an image_url part "
            "with an http(s) or data: URL",
        )


def validate_completion(params: openai_pb2.CompletionParams) -> None:
    _check_common(
        params.model,
        params.temperature if params.HasField("temperature") else None,
        params.top_p if params.HasField("top_p") else None,
        params.n if params.HasField("n") else None,
        ("max_tokens", params.max_tokens) if params.HasField("max_tokens") else None,
        params.stop if params.HasField("stop") else None,
    )
    prompt = to_python(params.prompt) if params.HasField("prompt") else None
    if not _is_prompt(prompt):
        raise _bad("prompt", "prompt must be a string, an array of strings, or token arrays")


def _is_prompt(value: object) -> bool:
    if isinstance(value, str):
        return True
    if isinstance(value, list) and value:
        return all(isinstance(v, str | float | int | list) for v in value)
    return False


def validate_embedding(params: openai_pb2.EmbeddingParams) -> None:
    if not params.model.strip():
        raise _bad("model", "you must provide a model parameter")
    value = to_python(params.input) if params.HasField("input") else None
    if not _is_prompt(value) or value == "" or (isinstance(value, list) and "" in value):
        raise _bad("input", "input must be a non-empty string or array")
    if params.encoding_format not in ("", "float", "base64"):
        raise _bad("encoding_format", "encoding_format must be 'float' or 'base64'")
    if params.HasField("dimensions") and params.dimensions < 1:
        raise _bad("dimensions", "dimensions must be a positive integer")
