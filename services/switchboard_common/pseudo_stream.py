"""Pseudo-streaming: one whole chat answer as the chunks a stream would have
sent, for a `stream: true` call whose model or deployment cannot stream, or
whose upstream answered with one JSON body. Per choice: the role, the whole
content (and any tool calls, in OpenAI's tool-call chunk shape) as one delta,
the finish reason; then the usage chunk. Both the provider (an upstream that
ignored `stream`) and the router (a model marked `streaming: false`) use it."""

from __future__ import annotations

from switchboard.common.v1 import openai_pb2

CHUNK = "chat.completion.chunk"


def chunks_from_completion(
    completion: openai_pb2.ChatCompletion,
) -> list[openai_pb2.ChatCompletionChunk]:
    def chunk() -> openai_pb2.ChatCompletionChunk:
        return openai_pb2.ChatCompletionChunk(
            id=completion.id,
            object=CHUNK,
            created=completion.created,
            model=completion.model,
            system_fingerprint=completion.system_fingerprint,
        )

    chunks: list[openai_pb2.ChatCompletionChunk] = []
    for choice in completion.choices:
        message = choice.message
        first = chunk()
        first.choices.add(index=choice.index).delta.role = message.role or "assistant"
        chunks.append(first)
        whole = chunk()
        delta = whole.choices.add(index=choice.index).delta
        if message.content:
            delta.content = message.content
        if message.refusal:
            delta.refusal = message.refusal
        for i, call in enumerate(message.tool_calls):
            part = delta.tool_calls.add(index=i, id=call.id, type=call.type or "function")
            part.function.name = call.function.name
            part.function.arguments = call.function.arguments
        if delta.ListFields():
            chunks.append(whole)
        last = chunk()
        last.choices.add(index=choice.index, finish_reason=choice.finish_reason or "stop")
        chunks.append(last)
    if completion.HasField("usage"):
        usage = chunk()
        usage.usage.CopyFrom(completion.usage)
        chunks.append(usage)
    return chunks
