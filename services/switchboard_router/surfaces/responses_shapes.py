"""OpenAI's Responses API shapes, mapped to and from the canonical chat shapes.

Input items (message, function_call, function_call_output) become chat
messages; function tools become chat tools; a chat answer becomes output items
(a message with output_text, function_call items). The conversation a stored
response continues (previous_response_id) is kept as chat messages.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from google.protobuf import json_format

from switchboard.common.v1 import openai_pb2
from switchboard_common.errors import R, SwitchboardError

_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}


def bad(message: str, param: str | None = None) -> SwitchboardError:
    return SwitchboardError(R.ERROR_REASON_INVALID_REQUEST, message, param=param)


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def input_items(request: dict[str, Any]) -> list[dict[str, Any]]:
    """The request's input as items, each with an id (as input_items lists them)."""
    raw = request.get("input")
    if isinstance(raw, str):
        raw = [{"type": "message", "role": "user", "content": raw}]
    if not isinstance(raw, list) or not raw:
        raise bad("input: a string or a non-empty list of items is required", "input")
    items = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise bad(f"input[{i}]: expected an object", "input")
        item = dict(item)
        item.setdefault("type", "message")
        if item["type"] == "message":
            content = item.get("content")
            if isinstance(content, str):
                kind = "output_text" if item.get("role") == "assistant" else "input_text"
                item["content"] = [{"type": kind, "text": content}]
        item.setdefault("id", new_id("msg" if item["type"] == "message" else "item"))
        items.append(item)
    return items


def _content(parts: Any, where: str) -> Any:
    if not isinstance(parts, list):
        raise bad(f"{where}.content: expected a list of parts", "input")
    out: list[dict[str, Any]] = []
    for part in parts:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text"):
            out.append({"type": "text", "text": str(part.get("text", ""))})
        elif kind == "input_image" and part.get("image_url"):
            out.append({"type": "image_url", "image_url": {"url": part["image_url"]}})
        elif kind == "refusal":
            out.append({"type": "text", "text": str(part.get("refusal", ""))})
        else:
            raise bad(f"{where}.content: part type {kind!r} is not accepted", "input")
    if all(p["type"] == "text" for p in out):
        return "".join(p["text"] for p in out)
    return out


def chat_messages(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Items as chat messages: consecutive function calls join one assistant
    message (after its text, if the assistant message came just before)."""
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        where = f"input[{i}]"
        kind = item.get("type")
        if kind == "message":
            role = _ROLES.get(str(item.get("role")))
            if role is None:
                raise bad(f"{where}.role: expected user, assistant, system or developer", "input")
            messages.append({"role": role, "content": _content(item.get("content"), where)})
        elif kind == "function_call":
            call = {
                "id": str(item.get("call_id", "")),
                "type": "function",
                "function": {
                    "name": str(item.get("name", "")),
                    "arguments": str(item.get("arguments", "")),
                },
            }
            last = messages[-1] if messages else None
            if (
                last is not None
                and last["role"] == "assistant"
                and isinstance(last.get("content") or "", str)
            ):
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output", "")
            text = output if isinstance(output, str) else _content(output, where)
            messages.append(
                {"role": "tool", "tool_call_id": str(item.get("call_id", "")), "content": text}
            )
        elif kind == "reasoning":
            # Another model's reasoning is not input to this one.
            continue
        else:
            raise bad(f"{where}.type: {kind!r} is not accepted", "input")
    return messages


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise bad("tools: expected a list", "tools")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            # Hosted tools (web search, file search, computer use) run at OpenAI.
            raise bad(f"tools[{i}]: only function tools are served", "tools")
        function = {
            k: tool[k] for k in ("name", "description", "parameters", "strict") if k in tool
        }
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: Any) -> Any:
    if isinstance(choice, str):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": choice.get("name", "")}}
    raise bad("tool_choice: expected auto, none, required or a function", "tool_choice")


def chat_params(
    request: dict[str, Any], history: list[dict[str, Any]], items: list[dict[str, Any]]
) -> openai_pb2.ChatCompletionParams:
    """The canonical request: instructions, the continued conversation, the input."""
    model = request.get("model")
    if not isinstance(model, str) or not model:
        raise bad("model: required", "model")
    messages = []
    if request.get("instructions"):
        messages.append({"role": "system", "content": str(request["instructions"])})
    params: dict[str, Any] = {
        "model": model,
        "messages": [*messages, *history, *chat_messages(items)],
    }
    if request.get("max_output_tokens") is not None:
        params["max_tokens"] = request["max_output_tokens"]
    for name in ("temperature", "top_p", "parallel_tool_calls", "user"):
        if request.get(name) is not None:
            params[name] = request[name]
    if request.get("tools"):
        params["tools"] = _tools(request["tools"])
    if request.get("tool_choice") is not None:
        params["tool_choice"] = _tool_choice(request["tool_choice"])
    reasoning = request.get("reasoning")
    if isinstance(reasoning, dict) and reasoning.get("effort"):
        params["reasoning_effort"] = reasoning["effort"]
    text_format = (request.get("text") or {}).get("format") or {}
    if text_format.get("type") == "json_schema":
        schema = {k: text_format[k] for k in ("name", "schema", "strict") if k in text_format}
        params["response_format"] = {"type": "json_schema", "json_schema": schema}
    elif text_format.get("type") == "json_object":
        params["response_format"] = {"type": "json_object"}
    try:
        return json_format.ParseDict(params, openai_pb2.ChatCompletionParams())
    except json_format.ParseError as exc:
        raise bad(f"invalid request: {exc}") from None


def message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {
        "type": "message",
        "id": item_id,
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
        if text or status == "completed"
        else [],
    }


def call_item(
    item_id: str, call_id: str, name: str, arguments: str, status: str = "completed"
) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def output_items(answer: openai_pb2.ChatCompletion) -> list[dict[str, Any]]:
    choice = answer.choices[0] if answer.choices else openai_pb2.ChatCompletionChoice()
    items = []
    if choice.message.content:
        items.append(message_item(new_id("msg"), choice.message.content))
    for call in choice.message.tool_calls:
        items.append(call_item(new_id("fc"), call.id, call.function.name, call.function.arguments))
    return items


def history_of(output: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The output as the chat messages a continuation starts from."""
    return chat_messages([i for i in output if i["type"] in ("message", "function_call")])


def usage(usage: openai_pb2.Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.prompt_tokens_details.cached_tokens},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {
            "reasoning_tokens": usage.completion_tokens_details.reasoning_tokens
        },
        "total_tokens": usage.total_tokens,
    }


def response(
    request: dict[str, Any],
    response_id: str,
    status: str,
    output: list[dict[str, Any]],
    usage_: dict[str, Any] | None,
    finish: str | None = None,
) -> dict[str, Any]:
    """The response object, echoing the request's settings as OpenAI does."""
    incomplete = {"reason": "max_output_tokens"} if finish == "length" else None
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "status": "incomplete" if incomplete and status == "completed" else status,
        "error": None,
        "incomplete_details": incomplete,
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "model": request.get("model"),
        "output": output,
        "parallel_tool_calls": request.get("parallel_tool_calls", True),
        "previous_response_id": request.get("previous_response_id"),
        "reasoning": request.get("reasoning") or {"effort": None, "summary": None},
        "store": request.get("store", True),
        "temperature": request.get("temperature"),
        "text": request.get("text") or {"format": {"type": "text"}},
        "tool_choice": request.get("tool_choice", "auto"),
        "tools": request.get("tools") or [],
        "top_p": request.get("top_p"),
        "truncation": "disabled",
        "usage": usage_,
        "user": request.get("user"),
        "metadata": request.get("metadata") or {},
    }


def failed(
    request: dict[str, Any],
    response_id: str,
    output: list[dict[str, Any]],
    code: str,
    message: str,
) -> dict[str, Any]:
    """The response a stream that failed after it started ends with."""
    out = response(request, response_id, "failed", output, None)
    out["error"] = {"code": code, "message": message}
    return out
