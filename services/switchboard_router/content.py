"""Typed message content (ChatMessage.content_text / content_parts, for gRPC
callers) turned into the one form every later stage reads: `content`, a
google.protobuf.Value holding OpenAI's JSON (a string or an array of parts).

The HTTP edge can only fill the Value (the transcoder maps the JSON key
"content", a string or an array, onto one field), so that is the internal form;
the typed fields are cleared once turned into it, and validation, token
estimates and every provider adapter see the same shape from both surfaces.
"""

from __future__ import annotations

import base64
from typing import Any

from switchboard.common.v1 import openai_pb2
from switchboard_common.errors import R, SwitchboardError

# Any: what google.protobuf.Struct.update takes (JSON values, nested).
JsonObject = dict[str, Any]


def _bad(param: str, message: str) -> SwitchboardError:
    return SwitchboardError(R.ERROR_REASON_INVALID_REQUEST, message, param=param)


def normalise_chat(params: openai_pb2.ChatCompletionParams) -> None:
    """Rewrite each message's typed content, in place, into `content`."""
    for i, msg in enumerate(params.messages):
        typed = msg.WhichOneof("typed_content")
        if typed is None:
            continue
        where = f"messages[{i}]"
        if msg.HasField("content"):
            raise _bad(
                f"{where}.content",
                f"{where}: set content, or content_text / content_parts, not both",
            )
        if typed == "content_text":
            text = msg.content_text
            msg.ClearField("content_text")
            msg.content.string_value = text
            continue
        parts = list(msg.content_parts.parts)
        msg.ClearField("content_parts")
        if len(parts) == 1 and parts[0].WhichOneof("part") == "tool_result":
            _tool_result(msg, where, parts[0].tool_result)
            continue
        values = msg.content.list_value
        values.SetInParent()
        for j, part in enumerate(parts):
            values.values.add().struct_value.update(_part(part, f"{where}.content_parts[{j}]"))


def _tool_result(msg: openai_pb2.ChatMessage, where: str, result: openai_pb2.ToolResult) -> None:
    if msg.role != "tool":
        raise _bad(
            f"{where}.content_parts[0].tool_result",
            f"{where}: a tool_result part belongs in a message of role 'tool'",
        )
    if not result.tool_call_id:
        raise _bad(
            f"{where}.content_parts[0].tool_result.tool_call_id",
            f"{where}.content_parts[0].tool_result.tool_call_id is required",
        )
    if msg.tool_call_id and msg.tool_call_id != result.tool_call_id:
        raise _bad(
            f"{where}.tool_call_id",
            f"{where}.tool_call_id differs from its tool_result part's tool_call_id",
        )
    msg.tool_call_id = result.tool_call_id
    msg.content.string_value = result.text


def _part(part: openai_pb2.ContentPart, where: str) -> JsonObject:
    """One part as OpenAI's JSON object."""
    kind = part.WhichOneof("part")
    if kind == "text":
        return {"type": "text", "text": part.text}
    if kind == "refusal":
        return {"type": "refusal", "refusal": part.refusal}
    if kind == "image_url":
        image: JsonObject = {"url": part.image_url.url}
        if part.image_url.detail:
            image["detail"] = part.image_url.detail
        return {"type": "image_url", "image_url": image}
    if kind == "input_audio":
        audio = part.input_audio
        if not audio.data or audio.format not in ("wav", "mp3"):
            raise _bad(
                f"{where}.input_audio",
                f"{where}.input_audio needs data and a format of 'wav' or 'mp3'",
            )
        data = base64.b64encode(audio.data).decode("ascii")
        return {"type": "input_audio", "input_audio": {"data": data, "format": audio.format}}
    if kind == "file":
        return {"type": "file", "file": _file(part.file, f"{where}.file")}
    if kind == "tool_result":
        raise _bad(
            f"{where}.tool_result",
            f"{where}: a tool_result part must be the only part of a message of role 'tool'",
        )
    raise _bad(where, f"{where} has no part set (text, image_url, input_audio, file, ...)")


def _file(file: openai_pb2.FileInput, where: str) -> JsonObject:
    out: JsonObject = {}
    if file.file_id:
        out["file_id"] = file.file_id
    if file.filename:
        out["filename"] = file.filename
    if file.data:
        if not file.mime_type:
            raise _bad(f"{where}.mime_type", f"{where}.mime_type is required with data")
        encoded = base64.b64encode(file.data).decode("ascii")
        out["file_data"] = f"data:{file.mime_type};base64,{encoded}"
    if "file_id" not in out and "file_data" not in out:
        raise _bad(where, f"{where} needs a file_id, or data and mime_type")
    return out
