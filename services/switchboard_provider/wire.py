"""OpenAI JSON (as parsed dicts) to our protos, by hand.

json_format.ParseDict is pure Python and walks descriptors for every field;
this runs once per upstream chunk, so the common fields are copied directly
and only rare, open-ended parts (logprobs) go through json_format."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from switchboard.common.v1 import openai_pb2


def usage(d: dict[str, Any], out: openai_pb2.Usage) -> None:
    out.prompt_tokens = d.get("prompt_tokens") or 0
    out.completion_tokens = d.get("completion_tokens") or 0
    out.total_tokens = d.get("total_tokens") or 0
    prompt = d.get("prompt_tokens_details")
    if prompt:
        out.prompt_tokens_details.cached_tokens = prompt.get("cached_tokens") or 0
        out.prompt_tokens_details.audio_tokens = prompt.get("audio_tokens") or 0
    completion = d.get("completion_tokens_details")
    if completion:
        details = out.completion_tokens_details
        details.reasoning_tokens = completion.get("reasoning_tokens") or 0
        details.audio_tokens = completion.get("audio_tokens") or 0
        details.accepted_prediction_tokens = completion.get("accepted_prediction_tokens") or 0
        details.rejected_prediction_tokens = completion.get("rejected_prediction_tokens") or 0


def _head(d: dict[str, Any], out: Any) -> None:
    out.id = d.get("id") or ""
    out.object = d.get("object") or ""
    out.created = int(d.get("created") or 0)
    out.model = d.get("model") or ""
    out.system_fingerprint = d.get("system_fingerprint") or ""
    if d.get("usage"):
        usage(d["usage"], out.usage)


def _logprobs(choice: dict[str, Any], out: Any) -> None:
    if choice.get("logprobs"):
        json_format.ParseDict(choice["logprobs"], out.logprobs)


def _tool_calls(calls: list[dict[str, Any]], out: Any) -> None:
    for call in calls:
        item = out.add(id=call.get("id") or "", type=call.get("type") or "function")
        fn = call.get("function") or {}
        item.function.name = fn.get("name") or ""
        item.function.arguments = fn.get("arguments") or ""


def chat_completion(d: dict[str, Any]) -> openai_pb2.ChatCompletion:
    out = openai_pb2.ChatCompletion()
    _head(d, out)
    if d.get("service_tier"):
        out.service_tier = d["service_tier"]
    for c in d.get("choices") or ():
        choice = out.choices.add(
            index=c.get("index") or 0, finish_reason=c.get("finish_reason") or ""
        )
        message = c.get("message") or {}
        choice.message.role = message.get("role") or "assistant"
        if message.get("content") is not None:
            choice.message.content = message["content"]
        if message.get("refusal") is not None:
            choice.message.refusal = message["refusal"]
        if message.get("tool_calls"):
            _tool_calls(message["tool_calls"], choice.message.tool_calls)
        _logprobs(c, choice)
    return out


def chat_chunk(d: dict[str, Any]) -> openai_pb2.ChatCompletionChunk:
    out = openai_pb2.ChatCompletionChunk()
    _head(d, out)
    if d.get("service_tier"):
        out.service_tier = d["service_tier"]
    for c in d.get("choices") or ():
        choice = out.choices.add(index=c.get("index") or 0)
        if c.get("finish_reason") is not None:
            choice.finish_reason = c["finish_reason"]
        delta = c.get("delta") or {}
        # Touch the delta so an empty one still serialises as {} downstream.
        choice.delta.SetInParent()
        for name in ("role", "content", "refusal"):
            if delta.get(name) is not None:
                setattr(choice.delta, name, delta[name])
        for call in delta.get("tool_calls") or ():
            item = choice.delta.tool_calls.add(index=call.get("index") or 0)
            if call.get("id") is not None:
                item.id = call["id"]
            if call.get("type") is not None:
                item.type = call["type"]
            fn = call.get("function")
            if fn is not None:
                item.function.SetInParent()
                if fn.get("name") is not None:
                    item.function.name = fn["name"]
                if fn.get("arguments") is not None:
                    item.function.arguments = fn["arguments"]
        _logprobs(c, choice)
    return out


def completion(d: dict[str, Any]) -> openai_pb2.Completion:
    out = openai_pb2.Completion()
    _head(d, out)
    for c in d.get("choices") or ():
        choice = out.choices.add(text=c.get("text") or "", index=c.get("index") or 0)
        if c.get("finish_reason") is not None:
            choice.finish_reason = c["finish_reason"]
        _logprobs(c, choice)
    return out
