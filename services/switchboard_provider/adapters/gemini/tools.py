"""Tool calling for the `gemini` kind, both ways: OpenAI tools and tool_choice
as function declarations and a function calling config, assistant tool calls
as function calls, tool messages as function responses; and Gemini's
function calls as OpenAI tool calls (whole, also in a stream: Gemini sends
each call in one piece).

Gemini 3 signs the function calls of a thinking model and wants the
signature back with the call in the next request. OpenAI clients carry only
the call's id from turn to turn, so the signature travels inside the id.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from typing import Any

from google.genai import types
from google.protobuf import json_format

from switchboard.common.v1 import openai_pb2
from switchboard_common.errors import R, SwitchboardError
from switchboard_common.values import to_python
from switchboard_provider.adapters.base import message_text

_SIGNED = "__thought__"


def _invalid(message: str, param: str) -> SwitchboardError:
    return SwitchboardError(R.ERROR_REASON_INVALID_REQUEST, message, param=param)


def declare(params: openai_pb2.ChatCompletionParams, config: types.GenerateContentConfig) -> None:
    """Sets config's tools and function calling mode from params."""
    if not params.tools:
        return
    config.tools = [
        types.Tool(
            function_declarations=[
                types.FunctionDeclaration(
                    name=t.function.name,
                    description=t.function.description or None,
                    parameters_json_schema=json_format.MessageToDict(t.function.parameters)
                    if t.function.HasField("parameters")
                    else None,
                )
                for t in params.tools
            ]
        )
    ]
    if not params.HasField("tool_choice"):
        return
    choice = to_python(params.tool_choice)
    if isinstance(choice, dict):
        name = str((choice.get("function") or {}).get("name", ""))
        calling = types.FunctionCallingConfig(
            mode=types.FunctionCallingConfigMode.ANY, allowed_function_names=[name]
        )
    else:
        modes = {"none": "NONE", "auto": "AUTO", "required": "ANY"}
        calling = types.FunctionCallingConfig(
            mode=types.FunctionCallingConfigMode(modes.get(str(choice), "AUTO"))
        )
    config.tool_config = types.ToolConfig(function_calling_config=calling)


def _call_id(call: types.FunctionCall, signature: bytes | None) -> str:
    call_id = call.id or f"call_{uuid.uuid4().hex[:24]}"
    if signature:
        call_id += _SIGNED + base64.urlsafe_b64encode(signature).decode()
    return call_id


def _split_id(call_id: str) -> tuple[str, bytes | None]:
    plain, signed, encoded = call_id.partition(_SIGNED)
    if not signed:
        return call_id, None
    try:
        return plain, base64.urlsafe_b64decode(encoded)
    except (binascii.Error, ValueError):
        raise _invalid(f"tool call id {call_id!r} is damaged", "messages") from None


def call_parts(calls: list[openai_pb2.ToolCall]) -> list[types.Part]:
    """An assistant message's tool calls as function call parts."""
    parts = []
    for call in calls:
        try:
            args = json.loads(call.function.arguments or "{}")
        except ValueError:
            args = None
        if not isinstance(args, dict):
            raise _invalid(f"tool call {call.id!r}: arguments must be a JSON object", "messages")
        plain, signature = _split_id(call.id)
        parts.append(
            types.Part(
                function_call=types.FunctionCall(id=plain, name=call.function.name, args=args),
                thought_signature=signature,
            )
        )
    return parts


def add_result(
    contents: list[types.Content], message: openai_pb2.ChatMessage, names: dict[str, str]
) -> None:
    """A tool message as a function response; the responses to one turn's calls
    share one user Content, as Gemini expects them."""
    name = names.get(message.tool_call_id) or message.name
    if not name:
        raise _invalid(
            f"tool message: no earlier tool call has id {message.tool_call_id!r}", "messages"
        )
    text = message_text(to_python(message.content)) if message.HasField("content") else ""
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    # Gemini takes an object; its docs name "output" for a plain result.
    response: dict[str, Any] = parsed if isinstance(parsed, dict) else {"output": text}
    plain, _ = _split_id(message.tool_call_id)
    part = types.Part(
        function_response=types.FunctionResponse(id=plain, name=name, response=response)
    )
    last = contents[-1] if contents else None
    if (
        last is not None
        and last.role == "user"
        and all(p.function_response for p in last.parts or ())
    ):
        (last.parts or []).append(part)
    else:
        contents.append(types.Content(role="user", parts=[part]))


def call_names(calls: list[openai_pb2.ToolCall], names: dict[str, str]) -> None:
    for call in calls:
        names[call.id] = call.function.name


def tool_calls(candidate: types.Candidate) -> list[openai_pb2.ToolCall]:
    """A candidate's function calls as OpenAI tool calls."""
    out = []
    for part in candidate.content.parts if candidate.content and candidate.content.parts else ():
        if part.function_call is None:
            continue
        call = openai_pb2.ToolCall(id=_call_id(part.function_call, part.thought_signature))
        call.type = "function"
        call.function.name = part.function_call.name or ""
        call.function.arguments = json.dumps(
            part.function_call.args or {}, separators=(",", ":"), ensure_ascii=False
        )
        out.append(call)
    return out


class StreamedCalls:
    """Numbers a stream's tool calls per choice, as OpenAI's deltas do."""

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}

    def deltas(self, index: int, candidate: types.Candidate) -> list[openai_pb2.ToolCallDelta]:
        out = []
        for call in tool_calls(candidate):
            n = self.counts.get(index, 0)
            self.counts[index] = n + 1
            delta = openai_pb2.ToolCallDelta(index=n, id=call.id, type="function")
            delta.function.name = call.function.name
            delta.function.arguments = call.function.arguments
            out.append(delta)
        return out

    def finish(self, index: int, reason: str) -> str:
        """OpenAI says tool_calls where Gemini says STOP after calling."""
        return "tool_calls" if reason == "stop" and self.counts.get(index) else reason
