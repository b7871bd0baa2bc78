"""The `gemini` kind's request mapping: OpenAI chat and completion params as
Gemini contents and GenerateContentConfig. What Gemini cannot do is refused
(400), never dropped."""

from __future__ import annotations

import base64
import binascii
import mimetypes
from typing import Any
from urllib.parse import unquote_to_bytes, urlparse

from google.genai import types
from google.protobuf import json_format

from switchboard.common.v1 import openai_pb2
from switchboard_common.errors import R, SwitchboardError
from switchboard_common.values import texts, to_python
from switchboard_provider.adapters.base import message_text
from switchboard_provider.adapters.gemini import tools as gemini_tools


def unsupported(what: str, param: str) -> SwitchboardError:
    # Rejected rather than dropped: silently ignoring tools or logprobs would
    # give the caller a different kind of answer than the one asked for.
    return SwitchboardError(
        R.ERROR_REASON_INVALID_REQUEST,
        f"the gemini provider kind does not support {what}",
        param=param,
    )


def _data_url(url: str) -> types.Part:
    header, sep, payload = url.removeprefix("data:").partition(",")
    if not sep:
        raise SwitchboardError(
            R.ERROR_REASON_INVALID_REQUEST, "malformed data: URL", param="messages"
        )
    mime, *flags = header.split(";")
    try:
        data = (
            base64.b64decode(payload, validate=True)
            if "base64" in flags
            else unquote_to_bytes(payload)
        )
    except binascii.Error:
        raise SwitchboardError(
            R.ERROR_REASON_INVALID_REQUEST, "data: URL is not valid base64", param="messages"
        ) from None
    return types.Part(inline_data=types.Blob(data=data, mime_type=mime or "image/jpeg"))


def image_part(url: str) -> types.Part:
    if url.startswith("data:"):
        return _data_url(url)
    guessed = mimetypes.guess_type(urlparse(url).path)[0]
    return types.Part(file_data=types.FileData(file_uri=url, mime_type=guessed or "image/jpeg"))


def content_parts(content: object) -> list[types.Part]:
    """OpenAI message content (a string or a list of parts) as Gemini parts."""
    if isinstance(content, str):
        return [types.Part(text=content)] if content else []
    if content is None:
        return []
    if not isinstance(content, list):
        raise unsupported("this message content", "messages")
    parts: list[types.Part] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            parts.append(types.Part(text=str(part.get("text", ""))))
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            parts.append(image_part(str(url or "")))
        elif kind == "input_audio":
            audio = part.get("input_audio") or {}
            parts.append(
                _data_url(f"data:audio/{audio.get('format', 'wav')};base64,{audio.get('data', '')}")
            )
        else:
            raise unsupported(f"content parts of type {kind!r}", "messages")
    return parts


def _stop(value: object) -> list[str] | None:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [str(v) for v in value]
    return None


def _config(params: Any) -> types.GenerateContentConfig:
    """The sampling fields both params messages share."""
    config = types.GenerateContentConfig(
        # No Python callables are ever passed; disabling AFC keeps the SDK on
        # its direct path (one request, no per-call INFO log).
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
    )
    if params.HasField("temperature"):
        config.temperature = params.temperature
    if params.HasField("top_p"):
        config.top_p = params.top_p
    if params.HasField("top_k"):
        config.top_k = params.top_k
    if params.HasField("n"):
        config.candidate_count = params.n
    if params.HasField("seed"):
        config.seed = params.seed
    if params.HasField("presence_penalty"):
        config.presence_penalty = params.presence_penalty
    if params.HasField("frequency_penalty"):
        config.frequency_penalty = params.frequency_penalty
    if params.HasField("max_tokens"):
        config.max_output_tokens = params.max_tokens
    if params.HasField("stop"):
        config.stop_sequences = _stop(to_python(params.stop))
    if params.logit_bias:
        raise unsupported("logit_bias", "logit_bias")
    return config


# OpenAI's reasoning_effort as Gemini's thinking level; "none" turns thinking off.
_THINKING_LEVELS = {"minimal": "MINIMAL", "low": "LOW", "medium": "MEDIUM", "high": "HIGH"}


def _thinking(effort: str) -> types.ThinkingConfig | None:
    if effort == "none":
        return types.ThinkingConfig(thinking_budget=0)
    level = _THINKING_LEVELS.get(effort) or effort.upper()
    if level not in types.ThinkingLevel.__members__:
        raise unsupported(f"reasoning_effort {effort!r}", "reasoning_effort")
    return types.ThinkingConfig(thinking_level=types.ThinkingLevel(level))


def _response_format(fmt: dict[str, Any], config: types.GenerateContentConfig) -> None:
    kind = fmt.get("type")
    if kind in ("json_object", "json_schema"):
        config.response_mime_type = "application/json"
    if kind == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema")
        if schema is not None:
            config.response_json_schema = schema


def chat_request(
    params: openai_pb2.ChatCompletionParams,
) -> tuple[list[types.Content], types.GenerateContentConfig]:
    if params.logprobs or params.HasField("top_logprobs"):
        raise unsupported("logprobs", "logprobs")
    if params.HasField("audio") or "audio" in params.modalities:
        raise unsupported("audio output", "modalities")
    config = _config(params)
    gemini_tools.declare(params, config)
    if params.reasoning_effort:
        config.thinking_config = _thinking(params.reasoning_effort)
    if params.HasField("max_completion_tokens"):
        config.max_output_tokens = params.max_completion_tokens
    if params.HasField("response_format"):
        _response_format(json_format.MessageToDict(params.response_format), config)
    system: list[types.Part] = []
    contents: list[types.Content] = []
    tool_names: dict[str, str] = {}  # a function response names its function
    for message in params.messages:
        content = to_python(message.content) if message.HasField("content") else None
        if message.role in ("system", "developer"):
            text = message_text(content)
            if text:
                system.append(types.Part(text=text))
        elif message.role == "tool":
            gemini_tools.add_result(contents, message, tool_names)
        elif message.role in ("user", "assistant"):
            parts = content_parts(content) + gemini_tools.call_parts(list(message.tool_calls))
            gemini_tools.call_names(list(message.tool_calls), tool_names)
            if parts:
                role = "model" if message.role == "assistant" else "user"
                contents.append(types.Content(role=role, parts=parts))
        else:
            raise unsupported(f"messages with role {message.role!r}", "messages")
    if system:
        config.system_instruction = types.Content(parts=system)
    return contents, config


def completion_request(
    params: openai_pb2.CompletionParams,
) -> tuple[list[types.Content], types.GenerateContentConfig]:
    if params.echo or params.HasField("logprobs") or params.suffix:
        raise unsupported("echo, logprobs or suffix", "prompt")
    if params.HasField("best_of") and params.best_of != (params.n if params.HasField("n") else 1):
        raise unsupported("best_of", "best_of")
    prompt = to_python(params.prompt) if params.HasField("prompt") else ""
    if isinstance(prompt, list) and not all(isinstance(p, str) for p in prompt):
        raise unsupported("token-id prompts", "prompt")
    prompts = texts(prompt)
    if len(prompts) > 1:
        raise unsupported("more than one prompt per request", "prompt")
    contents = [types.Content(role="user", parts=[types.Part(text=prompts[0] if prompts else "")])]
    return contents, _config(params)
