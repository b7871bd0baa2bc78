"""OpenAI chat parameters as an Anthropic Messages request body.

System and developer messages become `system` blocks; tool calls become
`tool_use` blocks on the assistant turn and tool messages `tool_result`
blocks on a user turn; consecutive turns of one role merge into one (the
Messages API wants user and assistant to alternate). `cache_control` on a
content part is copied onto its block, which is how prompt caching passes
through. What Messages cannot express is refused with a 400 rather than
dropped, so the caller never gets a different kind of answer than asked for.
"""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import json_format

from switchboard.common.v1 import openai_pb2
from switchboard_common.errors import R, SwitchboardError
from switchboard_common.values import to_python

# Messages requires max_tokens; OpenAI's default is "as much as the model allows".
DEFAULT_MAX_TOKENS = 4096
# OpenAI's effort levels; "minimal" is the nearest Anthropic has to low, and
# "none" asks for no extra effort, i.e. the model's default.
# Sampling fields this SDK release no longer names (newer models reject them);
# they still go out, through extra_body, for the models that take them.
EXTRA_BODY = ("temperature", "top_p")
_EFFORTS = {"minimal": "low", "low": "low", "medium": "medium", "high": "high", "xhigh": "xhigh"}


def unsupported(what: str, param: str) -> SwitchboardError:
    return SwitchboardError(
        R.ERROR_REASON_INVALID_REQUEST,
        f"the anthropic provider kind does not support {what}",
        param=param,
    )


def _image(url: str) -> dict[str, Any]:
    if not url.startswith("data:"):
        return {"type": "url", "url": url}
    header, sep, payload = url.removeprefix("data:").partition(",")
    mime, *flags = header.split(";")
    if not sep or "base64" not in flags:
        raise SwitchboardError(
            R.ERROR_REASON_INVALID_REQUEST,
            "images for the anthropic provider kind must be base64 data: URLs or http(s) URLs",
            param="messages",
        )
    return {"type": "base64", "media_type": mime or "image/jpeg", "data": payload}


def _block(part: object) -> dict[str, Any]:
    if not isinstance(part, dict):
        raise unsupported("this message content", "messages")
    kind = part.get("type")
    if kind == "text":
        block: dict[str, Any] = {"type": "text", "text": str(part.get("text", ""))}
    elif kind == "image_url":
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        block = {"type": "image", "source": _image(str(url or ""))}
    else:
        raise unsupported(f"content parts of type {kind!r}", "messages")
    if isinstance(part.get("cache_control"), dict):
        block["cache_control"] = part["cache_control"]
    return block


def content_blocks(content: object) -> list[dict[str, Any]]:
    """OpenAI message content (a string, a list of parts or null) as blocks."""
    if content is None or content == "":
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list):
        return [_block(part) for part in content]
    raise unsupported("this message content", "messages")


def _tool_use(call: openai_pb2.ToolCall) -> dict[str, Any]:
    try:
        arguments = json.loads(call.function.arguments or "{}")
    except ValueError:
        arguments = None
    if not isinstance(arguments, dict):
        raise SwitchboardError(
            R.ERROR_REASON_INVALID_REQUEST,
            f"tool call {call.id!r}: arguments must be a JSON object",
            param="messages",
        )
    return {"type": "tool_use", "id": call.id, "name": call.function.name, "input": arguments}


def _tool_result(message: openai_pb2.ChatMessage) -> dict[str, Any]:
    content = to_python(message.content) if message.HasField("content") else ""
    result: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.tool_call_id}
    if content:
        result["content"] = content if isinstance(content, str) else content_blocks(content)
    return result


def _turns(params: openai_pb2.ChatCompletionParams) -> tuple[list[Any], list[dict[str, Any]]]:
    system: list[Any] = []
    turns: list[dict[str, Any]] = []
    for message in params.messages:
        content = to_python(message.content) if message.HasField("content") else None
        if message.role in ("system", "developer"):
            system.extend(content_blocks(content))
            continue
        if message.role == "tool":
            role, blocks = "user", [_tool_result(message)]
        elif message.role == "user":
            role, blocks = "user", content_blocks(content)
        elif message.role == "assistant":
            blocks = content_blocks(content) + [_tool_use(c) for c in message.tool_calls]
            role = "assistant"
        else:
            raise unsupported(f"messages with role {message.role!r}", "messages")
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        elif blocks:
            turns.append({"role": role, "content": blocks})
    return system, turns


def _tool_choice(params: openai_pb2.ChatCompletionParams) -> dict[str, Any] | None:
    choice: dict[str, Any] | None = None
    if params.HasField("tool_choice"):
        value = to_python(params.tool_choice)
        if value == "none":
            return {"type": "none"}
        if value == "required":
            choice = {"type": "any"}
        elif isinstance(value, dict):
            name = (value.get("function") or {}).get("name")
            choice = {"type": "tool", "name": name}
        else:
            choice = {"type": "auto"}
    if params.HasField("parallel_tool_calls") and not params.parallel_tool_calls:
        choice = (choice or {"type": "auto"}) | {"disable_parallel_tool_use": True}
    return choice


def _tools(params: openai_pb2.ChatCompletionParams) -> list[dict[str, Any]]:
    tools = []
    for tool in params.tools:
        fn = tool.function
        schema: dict[str, Any] = (
            json_format.MessageToDict(fn.parameters)
            if fn.HasField("parameters")
            else {"type": "object", "properties": {}}
        )
        item: dict[str, Any] = {"name": fn.name, "input_schema": schema}
        if fn.description:
            item["description"] = fn.description
        if fn.HasField("strict"):
            item["strict"] = fn.strict
        tools.append(item)
    return tools


def _output_config(params: openai_pb2.ChatCompletionParams) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if params.HasField("response_format"):
        fmt = json_format.MessageToDict(params.response_format)
        kind = fmt.get("type")
        if kind == "json_schema":
            schema = (fmt.get("json_schema") or {}).get("schema")
            if not isinstance(schema, dict):
                raise SwitchboardError(
                    R.ERROR_REASON_INVALID_REQUEST,
                    "response_format json_schema needs a schema",
                    param="response_format",
                )
            out["format"] = {"type": "json_schema", "schema": schema}
        elif kind != "text":
            # Messages has structured outputs only against a schema.
            raise unsupported(
                f"response_format {kind!r} (use json_schema with a schema)", "response_format"
            )
    effort = _EFFORTS.get(params.reasoning_effort)
    if effort is not None:
        out["effort"] = effort
    elif params.reasoning_effort not in ("", "none"):
        raise unsupported(f"reasoning_effort {params.reasoning_effort!r}", "reasoning_effort")
    return out


def _refuse_unsupported(params: openai_pb2.ChatCompletionParams) -> None:
    if params.HasField("n") and params.n != 1:
        raise unsupported("n other than 1", "n")
    if params.logprobs or params.HasField("top_logprobs"):
        raise unsupported("logprobs", "logprobs")
    if params.logit_bias:
        raise unsupported("logit_bias", "logit_bias")
    for name in ("presence_penalty", "frequency_penalty"):
        if params.HasField(name) and getattr(params, name) != 0:
            raise unsupported(name, name)
    if params.HasField("audio") or "audio" in params.modalities:
        raise unsupported("audio output", "modalities")


def messages_request(
    params: openai_pb2.ChatCompletionParams, model: str, default_max_tokens: int
) -> dict[str, Any]:
    """The Messages body for `params`, sent as is by the SDK."""
    _refuse_unsupported(params)
    system, turns = _turns(params)
    if params.HasField("max_completion_tokens"):
        max_tokens = params.max_completion_tokens
    elif params.HasField("max_tokens"):
        max_tokens = params.max_tokens
    else:
        max_tokens = default_max_tokens
    body: dict[str, Any] = {"model": model, "messages": turns, "max_tokens": max_tokens}
    if system:
        body["system"] = system
    if params.HasField("temperature"):
        body["temperature"] = params.temperature
    if params.HasField("top_p"):
        body["top_p"] = params.top_p
    if params.HasField("top_k"):
        body["top_k"] = params.top_k
    if params.HasField("stop"):
        stop = to_python(params.stop)
        stops = stop if isinstance(stop, list) else [stop]
        body["stop_sequences"] = [s for s in stops if isinstance(s, str)]
    if params.user:
        body["metadata"] = {"user_id": params.user}
    if params.tools:
        body["tools"] = _tools(params)
        choice = _tool_choice(params)
        if choice is not None:
            body["tool_choice"] = choice
    output = _output_config(params)
    if output:
        body["output_config"] = output
    return body
