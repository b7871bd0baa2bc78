"""OpenAI's Responses API (``POST /v1/responses``) for the loopback upstream.

The gateway passes Responses requests through natively to upstreams that have their own
Responses API instead of mapping them onto chat completions. Tests need an upstream that
answers in that wire format to tell the two paths apart, so this module serves it on
:class:`~tests.support.openai_upstream.OpenAIUpstream`, reusing its auth, recording,
scripted failure modes, :class:`Scripted` replies and :class:`ServedCall` accounting.

Content follows the chat endpoint's rules: the reply is ``"echo:"`` plus the words of the
last user message (``behaviour.reply`` or a queued :class:`Scripted` reply override it),
and a token is one whitespace-separated word.

* ``output`` is always a ``reasoning`` item first, which a chat-completions mapping cannot
  produce, so its presence proves native pass-through; then a ``message`` item (when there
  is text or no tool call), then one ``function_call`` item per scripted tool call.
* ``input_tokens`` = words in the text of every message, every ``function_call_output``
  and ``instructions`` (at least 1), plus scripted ``cached_tokens``.
* ``output_tokens`` = reply words, plus ``len(arguments) // 2 + 1`` per tool call, plus
  reasoning tokens (the scripted ``reasoning_tokens``, else 2 for the reasoning item).
* ``max_output_tokens`` truncates the reply words and makes the response ``incomplete``.
* The reasoning item carries ``encrypted_content`` only when ``include`` asks for
  ``reasoning.encrypted_content``; with ``store: false``, a reasoning item in the input
  without it is refused (404, as the real API answers: nothing was stored to find it by).
* ``previous_response_id`` is refused with a 400: nothing is stored here, since the
  gateway is expected to send the whole conversation itself (with ``store: false``).

Streams use the Responses framing: ``event: <type>`` and ``data: <json>`` lines per event,
an increasing ``sequence_number`` and no ``data: [DONE]``. ``chunks_sent`` and
``reset_after_chunks`` count delta events (text deltas and function-argument deltas).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from aiohttp import web

from tests.support.openai_upstream import (
    SSE_CONTENT_TYPE,
    OpenAIUpstream,
    ServedCall,
    _ApiError,
    _compact,
    _Ctx,
    _int_param,
    _message_text,
    _pieces,
    _reply_words,
    _require_model,
    _words,
)

__all__ = ["respond"]

# What the reasoning item costs when no Scripted reply says otherwise.
DEFAULT_REASONING_TOKENS = 2


def _hex() -> str:
    return uuid.uuid4().hex


def _input_items(raw: Any) -> list[dict[str, Any]]:
    """``input`` as a list of typed items; a bare string is one user message."""
    if isinstance(raw, str):
        return [{"type": "message", "role": "user", "content": raw}]
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        raise _ApiError(
            400,
            "Missing required parameter: 'input' (a string or an array of items).",
            param="input",
            code="missing_required_parameter",
        )
    # Items without a type are messages, as the API's "easy input message" form allows.
    return [{"type": "message", **item} for item in raw]


def _snapshot_reasoning(body: dict[str, Any]) -> dict[str, Any]:
    reasoning = body.get("reasoning")
    reasoning = reasoning if isinstance(reasoning, dict) else {}
    return {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")}


async def respond(upstream: OpenAIUpstream, request: web.Request, ctx: _Ctx) -> web.StreamResponse:
    body = await upstream._parse_body(request)
    model = _require_model(body)
    if body.get("previous_response_id") is not None:
        raise _ApiError(
            400,
            "Previous response ids are not supported by this upstream; send the whole "
            "conversation in 'input'.",
            param="previous_response_id",
        )
    items = _input_items(body.get("input"))
    if body.get("store") is False:
        # As the real API: with nothing stored, a reasoning item can only come
        # back with its encrypted content (asked for with `include`).
        for item in items:
            if item["type"] == "reasoning" and not item.get("encrypted_content"):
                raise _ApiError(
                    404,
                    f"Item with id '{item.get('id')}' not found. Items are not persisted when "
                    "`store` is set to false. Try again with `store` set to true, or remove "
                    "this item from your input.",
                    param="input",
                )
    encrypted = "reasoning.encrypted_content" in (body.get("include") or [])
    limit = _int_param(body, "max_output_tokens", minimum=0)
    stream = body.get("stream") is True and not ctx.behaviour.stream_as_json
    instructions = body.get("instructions")

    input_tokens = len(_words(instructions)) if isinstance(instructions, str) else 0
    last_user = ""
    for item in items:
        if item["type"] == "message":
            text = _message_text(item.get("content"))
            if item.get("role") == "user":
                last_user = text
        elif item["type"] == "function_call_output":
            text = _message_text(item.get("output"))
        else:
            continue
        input_tokens += len(_words(text))
    input_tokens = max(input_tokens, 1)

    scripted = upstream._scripted.pop(0) if upstream._scripted else None
    if scripted is not None:
        words = scripted.text.split(" ") if scripted.text else []
    else:
        words = ctx.behaviour.reply.split(" ") if ctx.behaviour.reply else _reply_words(last_user)
    truncated = limit is not None and len(words) > limit
    if truncated:
        words = words[:limit]
    calls: list[dict[str, Any]] = [
        {
            "type": "function_call",
            "id": f"fc_{_hex()}",
            "call_id": f"call_{_hex()[:24]}",
            "name": name,
            "arguments": json.dumps(arguments),
            "status": "completed",
        }
        for name, arguments in (scripted.tool_calls if scripted else [])
    ]
    cached = scripted.cached_tokens if scripted else 0
    reasoning_tokens = scripted.reasoning_tokens if scripted else DEFAULT_REASONING_TOKENS
    input_tokens += cached
    # Same rule as chat: a tool call is one token per argument character pair, plus one.
    output_tokens = len(words) + sum(len(c["arguments"]) // 2 + 1 for c in calls) + reasoning_tokens
    usage = {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
        "total_tokens": input_tokens + output_tokens,
    }

    await upstream._before_response(ctx)
    if not stream and (reset := upstream._reset_before_response(request, ctx)) is not None:
        return reset

    call = ServedCall(
        id=f"resp_{_hex()}",
        endpoint="responses",
        model=model,
        stream=stream,
        prompt_tokens=input_tokens,
        completion_tokens=output_tokens,
    )
    text = " ".join(words)
    reasoning: dict[str, Any] = {"type": "reasoning", "id": f"rs_{_hex()}", "summary": []}
    if encrypted:
        reasoning["encrypted_content"] = f"enc_{_hex()}"
    output: list[dict[str, Any]] = [reasoning]
    if words or not calls:
        output.append(
            {
                "type": "message",
                "id": f"msg_{_hex()}",
                "status": "incomplete" if truncated else "completed",
                "role": "assistant",
                "content": [
                    {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
                ],
            }
        )
    output.extend(calls)

    created_at = int(time.time())

    def snapshot(status: str, out: list[dict[str, Any]], use: Any) -> dict[str, Any]:
        # Settings are echoed back with OpenAI's defaults, as the real API does.
        return {
            "id": call.id,
            "object": "response",
            "created_at": created_at,
            "status": status,
            "error": None,
            "incomplete_details": (
                {"reason": "max_output_tokens"} if status == "incomplete" else None
            ),
            "instructions": instructions,
            "max_output_tokens": limit,
            "model": model,
            "output": out,
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "previous_response_id": None,
            "reasoning": _snapshot_reasoning(body),
            "store": body.get("store", True),
            "temperature": body.get("temperature", 1.0),
            "text": body.get("text") or {"format": {"type": "text"}},
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools") or [],
            "top_p": body.get("top_p", 1.0),
            "truncation": body.get("truncation", "disabled"),
            "usage": use,
            "user": None,
            "metadata": body.get("metadata") or {},
        }

    final_status = "incomplete" if truncated else "completed"
    if not stream:
        return await upstream._finish_plain(
            request, ctx, call, snapshot(final_status, output, usage)
        )
    return await _stream(
        upstream,
        request,
        ctx,
        call,
        _events(output, snapshot("in_progress", [], None), snapshot(final_status, output, usage)),
    )


def _events(
    output: list[dict[str, Any]], start: dict[str, Any], final: dict[str, Any]
) -> list[tuple[dict[str, Any], bool]]:
    """The stream's events in order, each flagged when it is a delta (a chunk)."""
    events: list[tuple[dict[str, Any], bool]] = []

    def add(type_: str, is_delta: bool = False, /, **fields: Any) -> None:
        events.append(({"type": type_, **fields}, is_delta))

    add("response.created", response=start)
    add("response.in_progress", response=start)
    for index, item in enumerate(output):
        where = {"item_id": item["id"], "output_index": index}
        if item["type"] == "message":
            part = item["content"][0]
            text: str = part["text"]
            add(
                "response.output_item.added",
                output_index=index,
                item={**item, "status": "in_progress", "content": []},
            )
            add("response.content_part.added", **where, content_index=0, part={**part, "text": ""})
            for piece in _pieces(text.split(" ") if text else []):
                add(
                    "response.output_text.delta",
                    True,
                    **where,
                    content_index=0,
                    delta=piece,
                    logprobs=[],
                )
            add("response.output_text.done", **where, content_index=0, text=text, logprobs=[])
            add("response.content_part.done", **where, content_index=0, part=part)
        elif item["type"] == "function_call":
            add(
                "response.output_item.added",
                output_index=index,
                item={**item, "arguments": "", "status": "in_progress"},
            )
            # Arguments arrive in pieces in real streams; two halves exercise reassembly.
            args: str = item["arguments"]
            half = len(args) // 2
            for piece in [args[:half], args[half:]] if half else [args]:
                add("response.function_call_arguments.delta", True, **where, delta=piece)
            add(
                "response.function_call_arguments.done",
                **where,
                name=item["name"],
                arguments=args,
            )
        else:
            # The reasoning item is sent whole: there is no summary text to stream.
            add("response.output_item.added", output_index=index, item=item)
        add("response.output_item.done", output_index=index, item=item)
    terminal = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
    add(terminal, response=final)
    return events


async def _stream(
    upstream: OpenAIUpstream,
    request: web.Request,
    ctx: _Ctx,
    call: ServedCall,
    events: list[tuple[dict[str, Any], bool]],
) -> web.StreamResponse:
    """Send ``events`` with Responses framing, honouring the scripted stream behaviour.

    The chat ``_stream`` cannot be reused: it writes ``data:``-only frames and ``[DONE]``.
    """
    behaviour = ctx.behaviour
    resp = web.StreamResponse(status=200, headers={"Content-Type": SSE_CONTENT_TYPE})
    upstream.served.append(call)
    upstream._changed()
    try:
        await resp.prepare(request)
        for sequence, (event, is_delta) in enumerate(events):
            last = sequence == len(events) - 1
            # Like chat, a reset cuts the stream after N chunks, or before the terminal
            # event when there are fewer, so usage never reaches the client.
            if behaviour.mode == "reset_after" and (
                last or (is_delta and call.chunks_sent >= behaviour.reset_after_chunks)
            ):
                upstream._abort(request, ctx)
                return resp
            if sequence and behaviour.chunk_delay_s > 0:
                await asyncio.sleep(behaviour.chunk_delay_s)
            payload = {"type": event["type"], "sequence_number": sequence, **event}
            await resp.write(
                b"event: " + event["type"].encode() + b"\ndata: " + _compact(payload) + b"\n\n"
            )
            if is_delta:
                call.chunks_sent += 1
            if last:
                call.usage_reported = True
        await resp.write_eof()
    except ConnectionError:
        upstream._note_disconnect(ctx)
        return resp
    call.completed = True
    upstream._changed()
    return resp
