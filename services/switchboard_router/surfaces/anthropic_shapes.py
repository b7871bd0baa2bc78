"""Anthropic's Messages wire format, mapped to and from the canonical chat shapes.

A Messages request becomes ChatCompletionParams (system prompt first, tool_use
blocks as assistant tool_calls, tool_result blocks as tool messages, image
blocks as image_url parts); a chat answer becomes a message object. The
streamed events are built in anthropic_messages.py from the same pieces.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from google.protobuf import json_format

from switchboard.common.v1 import openai_pb2
from switchboard.usage.v1 import usage_pb2
from switchboard_common.errors import R, SwitchboardError

# finish_reason -> stop_reason.
STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}

# Anthropic's error types per HTTP status (its documented set); a status
# outside it is answered as Anthropic's own 500.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def bad(message: str, param: str | None = None) -> SwitchboardError:
    return SwitchboardError(R.ERROR_REASON_INVALID_REQUEST, message, param=param)


def error(err: SwitchboardError) -> tuple[int, dict[str, Any]]:
    status = err.http_status
    if status == 503:
        # Nothing can serve now: Anthropic's "overloaded", which its SDKs retry.
        status = 529
    elif status not in _ERROR_TYPES:
        status = 500
    return status, {
        "type": "error",
        "error": {"type": _ERROR_TYPES[status], "message": err.message},
    }


def error_event(err: SwitchboardError) -> dict[str, Any]:
    return error(err)[1]


def _text_of(content: Any, where: str) -> str:
    """The text of a string or of a list of text blocks (system prompts, tool results)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad(f"{where}: expected a string or a list of text blocks", where)
    texts = []
    for i, block in enumerate(content):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise bad(f"{where}.{i}: only text blocks are accepted here", f"{where}.{i}")
        texts.append(str(block.get("text", "")))
    return "\n".join(texts)


def _system(content: Any) -> Any:
    """The system prompt as chat content: text parts when a block carries
    cache_control (which the anthropic provider passes on), else one string."""
    text = _text_of(content, "system")  # which also refuses blocks other than text
    if isinstance(content, list) and any("cache_control" in block for block in content):
        return [_text_part(block) for block in content]
    return text


def _text_part(block: dict[str, Any]) -> dict[str, Any]:
    part: dict[str, Any] = {"type": "text", "text": str(block.get("text", ""))}
    if isinstance(block.get("cache_control"), dict):
        part["cache_control"] = block["cache_control"]
    return part


def _image_part(block: dict[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source")
    if not isinstance(source, dict):
        raise bad(f"{where}.source: required", where)
    if source.get("type") == "base64":
        url = f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"
    elif source.get("type") == "url":
        url = str(source.get("url", ""))
    else:
        raise bad(f"{where}.source.type: expected 'base64' or 'url'", where)
    return {"type": "image_url", "image_url": {"url": url}}


def _user_messages(content: Any, where: str) -> list[dict[str, Any]]:
    """One user turn: its tool results become tool messages (which must follow
    the assistant's tool calls directly), the rest one user message."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    if not isinstance(content, list):
        raise bad(f"{where}.content: expected a string or a list of blocks", where)
    tools: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for i, block in enumerate(content):
        at = f"{where}.content.{i}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append(_text_part(block))
        elif kind == "image":
            parts.append(_image_part(block, at))
        elif kind == "tool_result":
            text = _text_of(block.get("content", ""), f"{at}.content")
            if block.get("is_error"):
                text = f"Error: {text}"
            tools.append(
                {"role": "tool", "tool_call_id": str(block.get("tool_use_id", "")), "content": text}
            )
        else:
            raise bad(f"{at}.type: {kind!r} is not accepted in a user turn", at)
    if parts:
        plain = all(p["type"] == "text" and "cache_control" not in p for p in parts)
        body: Any = "\n".join(p["text"] for p in parts) if plain else parts
        return [*tools, {"role": "user", "content": body}]
    return tools


def _assistant_message(content: Any, where: str) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    if not isinstance(content, list):
        raise bad(f"{where}.content: expected a string or a list of blocks", where)
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for i, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "tool_use":
            arguments = json.dumps(block.get("input") or {}, separators=(",", ":"))
            calls.append(
                {
                    "id": str(block.get("id", "")),
                    "type": "function",
                    "function": {"name": str(block.get("name", "")), "arguments": arguments},
                }
            )
        elif kind in ("thinking", "redacted_thinking"):
            # Another model's reasoning is not input to this one.
            continue
        else:
            raise bad(f"{where}.content.{i}.type: {kind!r} is not accepted in an assistant turn")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        message["tool_calls"] = calls
    return message


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise bad("tools: expected a list", "tools")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or "input_schema" not in tool:
            # Anthropic's server tools (web search, code execution) run at Anthropic.
            raise bad(f"tools.{i}: only client tools (name, input_schema) are served", "tools")
        function = {"name": tool.get("name", ""), "parameters": tool["input_schema"]}
        if tool.get("description"):
            function["description"] = tool["description"]
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: Any, params: dict[str, Any]) -> None:
    if not isinstance(choice, dict):
        raise bad("tool_choice: expected an object", "tool_choice")
    kind = choice.get("type")
    if kind == "auto":
        params["tool_choice"] = "auto"
    elif kind == "any":
        params["tool_choice"] = "required"
    elif kind == "none":
        params["tool_choice"] = "none"
    elif kind == "tool":
        params["tool_choice"] = {"type": "function", "function": {"name": choice.get("name", "")}}
    else:
        raise bad(f"tool_choice.type: {kind!r} is not one of auto, any, tool, none", "tool_choice")
    if choice.get("disable_parallel_tool_use"):
        params["parallel_tool_calls"] = False


def chat_messages(request: dict[str, Any]) -> list[dict[str, Any]]:
    """The system prompt and turns as chat messages."""
    messages: list[dict[str, Any]] = []
    if request.get("system"):
        messages.append({"role": "system", "content": _system(request["system"])})
    turns = request.get("messages")
    if not isinstance(turns, list) or not turns:
        raise bad("messages: at least one message is required", "messages")
    for i, turn in enumerate(turns):
        where = f"messages.{i}"
        role = turn.get("role") if isinstance(turn, dict) else None
        if role == "user":
            messages.extend(_user_messages(turn.get("content", ""), where))
        elif role == "assistant":
            messages.append(_assistant_message(turn.get("content", ""), where))
        else:
            raise bad(f"{where}.role: expected 'user' or 'assistant'", where)
    return messages


def chat_params(
    request: dict[str, Any], *, counting: bool = False
) -> openai_pb2.ChatCompletionParams:
    """The canonical request for a Messages request (`counting`: for
    count_tokens, which takes no max_tokens)."""
    model = request.get("model")
    if not isinstance(model, str) or not model:
        raise bad("model: Field required", "model")
    params: dict[str, Any] = {"model": model, "messages": chat_messages(request)}
    if not counting:
        max_tokens = request.get("max_tokens")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise bad("max_tokens: Field required (a positive integer)", "max_tokens")
        params["max_tokens"] = max_tokens
    for name in ("temperature", "top_p"):
        if request.get(name) is not None:
            params[name] = request[name]
    if request.get("stop_sequences"):
        params["stop"] = request["stop_sequences"]
    if request.get("tools"):
        params["tools"] = _tools(request["tools"])
    if request.get("tool_choice") is not None:
        _tool_choice(request["tool_choice"], params)
    metadata = request.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        params["user"] = metadata["user_id"]
    try:
        return json_format.ParseDict(params, openai_pb2.ChatCompletionParams())
    except json_format.ParseError as exc:
        raise bad(f"invalid request: {exc}") from None


def message_id() -> str:
    return "msg_" + uuid.uuid4().hex


def arguments_object(arguments: str) -> Any:
    """A tool call's input: its arguments as JSON, {} when the model sent none."""
    try:
        return json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        return {}


def usage(usage: openai_pb2.Usage, records: list[usage_pb2.UsageRecord]) -> dict[str, int]:
    """Anthropic counts cache reads and writes apart from input_tokens; OpenAI's
    prompt_tokens includes both. Writes come from the attempt's usage record."""
    cached = usage.prompt_tokens_details.cached_tokens
    written = records[-1].cache_write_tokens if records else 0
    return {
        "input_tokens": max(usage.prompt_tokens - cached - written, 0),
        "output_tokens": usage.completion_tokens,
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": written,
    }


def message(
    answer: openai_pb2.ChatCompletion, model: str, records: list[usage_pb2.UsageRecord]
) -> dict[str, Any]:
    choice = answer.choices[0] if answer.choices else openai_pb2.ChatCompletionChoice()
    content: list[dict[str, Any]] = []
    if choice.message.content:
        content.append({"type": "text", "text": choice.message.content})
    for call in choice.message.tool_calls:
        content.append(
            {
                "type": "tool_use",
                "id": call.id,
                "name": call.function.name,
                "input": arguments_object(call.function.arguments),
            }
        )
    return {
        "id": message_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": STOP_REASONS.get(choice.finish_reason or "stop", "end_turn"),
        "stop_sequence": None,
        "usage": usage(answer.usage, records),
    }
