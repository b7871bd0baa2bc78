"""The `gemini` kind's response mapping: Gemini responses as the OpenAI shapes
the `openai` kind answers with, in the same stream sequence, and their usage."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterable

from google.genai import types

from switchboard.common.v1 import openai_pb2
from switchboard.provider.v1 import provider_pb2
from switchboard_common.errors import R, SwitchboardError
from switchboard_provider.adapters.gemini import tools as gemini_tools
from switchboard_provider.meter import UsageMeter

_FILTERED = ("SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY")
FINISH_REASONS: dict[str, str] = {"STOP": "stop", "MAX_TOKENS": "length"} | {
    r: "content_filter" for r in _FILTERED
}


def finish_reason(reason: types.FinishReason | None) -> str:
    return FINISH_REASONS.get(str(reason.value), "stop") if reason is not None else "stop"


def candidate_text(candidate: types.Candidate) -> str:
    parts = candidate.content.parts if candidate.content and candidate.content.parts else []
    # Thought summaries are the model's reasoning, not its answer.
    return "".join(p.text for p in parts if p.text and not p.thought)


def usage(
    meta: types.GenerateContentResponseUsageMetadata | None, chat: bool = True
) -> openai_pb2.Usage | None:
    if meta is None:
        return None
    prompt = meta.prompt_token_count or 0
    cached = meta.cached_content_token_count or 0
    thoughts = meta.thoughts_token_count or 0
    # OpenAI counts reasoning inside completion_tokens (reasoning_tokens is a
    # breakdown of it); Gemini counts thoughts apart but bills them as output.
    completion = (meta.candidates_token_count or 0) + thoughts
    out = openai_pb2.Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=meta.total_token_count or prompt + completion,
    )
    # OpenAI's chat usage always has the details objects; its legacy
    # completions usage has them only when they say something.
    if chat or cached:
        out.prompt_tokens_details.cached_tokens = cached
    if chat or thoughts:
        out.completion_tokens_details.reasoning_tokens = thoughts
    return out


def raise_if_blocked(response: types.GenerateContentResponse) -> None:
    feedback = response.prompt_feedback
    if feedback is not None and feedback.block_reason and not response.candidates:
        raise SwitchboardError(
            R.ERROR_REASON_UPSTREAM_INVALID_REQUEST,
            f"Gemini blocked the prompt: {feedback.block_reason.value}",
        )


def _candidates(response: types.GenerateContentResponse) -> list[types.Candidate]:
    # proto3 JSON omits index 0, so the SDK reports it as None.
    return sorted(response.candidates or (), key=lambda c: c.index or 0)


class Reply:
    """The OpenAI-shaped objects of one attempt: one id, created time and model."""

    def __init__(self, chat: bool, model: str) -> None:
        self.chat = chat
        self.id = f"gemini-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model

    def answer(
        self, response: types.GenerateContentResponse, meter: UsageMeter
    ) -> provider_pb2.StreamGenerateResponse:
        """The one object of a non-streamed answer; reports it to `meter`."""
        raise_if_blocked(response)
        candidates = _candidates(response)
        if not candidates:
            raise SwitchboardError(
                R.ERROR_REASON_UPSTREAM_ERROR, "Gemini answered with no candidate"
            )
        meter.set_provider_request_id(response.response_id)
        self.model = response.model_version or self.model
        for c in candidates:
            meter.add_output_text(candidate_text(c))
        total = usage(response.usage_metadata, self.chat)
        if total is not None:
            meter.report(total)
        if self.chat:
            chat = openai_pb2.ChatCompletion(
                id=self.id, object="chat.completion", created=self.created, model=self.model
            )
            for c in candidates:
                calls = gemini_tools.tool_calls(c)
                said = candidate_text(c)
                reason = finish_reason(c.finish_reason)
                message = openai_pb2.ChatCompletionMessage(role="assistant", tool_calls=calls)
                if said or not calls:  # null content for an answer of tool calls only
                    message.content = said
                for call in calls:
                    meter.add_output_text(call.function.arguments)
                chat.choices.add(
                    index=c.index or 0,
                    finish_reason="tool_calls" if calls and reason == "stop" else reason,
                    message=message,
                )
            if total is not None:
                chat.usage.CopyFrom(total)
            return provider_pb2.StreamGenerateResponse(chat_completion=chat)
        text = self._completion()
        for c in candidates:
            text.choices.add(
                text=candidate_text(c),
                index=c.index or 0,
                finish_reason=finish_reason(c.finish_reason),
            )
        if total is not None:
            text.usage.CopyFrom(total)
        return provider_pb2.StreamGenerateResponse(completion=text)

    def _chunk(self) -> openai_pb2.ChatCompletionChunk:
        return openai_pb2.ChatCompletionChunk(
            id=self.id, object="chat.completion.chunk", created=self.created, model=self.model
        )

    def _completion(self) -> openai_pb2.Completion:
        return openai_pb2.Completion(
            id=self.id, object="text_completion", created=self.created, model=self.model
        )

    def role(self, indices: Iterable[int]) -> provider_pb2.StreamGenerateResponse:
        chunk = self._chunk()
        for i in indices:
            chunk.choices.add(index=i).delta.CopyFrom(
                openai_pb2.ChatCompletionDelta(role="assistant", content="")
            )
        return provider_pb2.StreamGenerateResponse(chat_chunk=chunk)

    def delta(
        self,
        pieces: dict[int, str],
        calls: dict[int, list[openai_pb2.ToolCallDelta]] | None = None,
    ) -> provider_pb2.StreamGenerateResponse:
        if self.chat:
            chunk = self._chunk()
            calls = calls or {}
            for i in sorted(pieces.keys() | calls.keys()):
                delta = chunk.choices.add(index=i).delta
                delta.SetInParent()
                if i in pieces:
                    delta.content = pieces[i]
                delta.tool_calls.extend(calls.get(i, ()))
            return provider_pb2.StreamGenerateResponse(chat_chunk=chunk)
        text = self._completion()
        for i, piece in pieces.items():
            text.choices.add(text=piece, index=i)
        return provider_pb2.StreamGenerateResponse(completion=text)

    def finish(self, reasons: dict[int, str]) -> provider_pb2.StreamGenerateResponse:
        if self.chat:
            chunk = self._chunk()
            for i, reason in sorted(reasons.items()):
                choice = chunk.choices.add(index=i, finish_reason=reason)
                # An empty delta still renders as {} downstream, as OpenAI sends it.
                choice.delta.SetInParent()
            return provider_pb2.StreamGenerateResponse(chat_chunk=chunk)
        text = self._completion()
        for i, reason in sorted(reasons.items()):
            text.choices.add(text="", index=i, finish_reason=reason)
        return provider_pb2.StreamGenerateResponse(completion=text)

    def usage_only(self, total: openai_pb2.Usage) -> provider_pb2.StreamGenerateResponse:
        if self.chat:
            chunk = self._chunk()
            chunk.usage.CopyFrom(total)
            return provider_pb2.StreamGenerateResponse(chat_chunk=chunk)
        text = self._completion()
        text.usage.CopyFrom(total)
        return provider_pb2.StreamGenerateResponse(completion=text)


async def stream_events(
    stream: AsyncIterator[types.GenerateContentResponse], reply: Reply, meter: UsageMeter
) -> AsyncGenerator[provider_pb2.StreamGenerateResponse, None]:
    """The `openai` kind's sequence: a role chunk (chat), one chunk per Gemini
    response that carries text, a finish chunk, then a usage-only chunk. The
    role chunk waits for the first text so that an upstream failure before any
    output leaves the router free to try another deployment."""
    first = True
    started = False
    finishes: dict[int, str] = {}
    streamed = gemini_tools.StreamedCalls()
    last_usage: types.GenerateContentResponseUsageMetadata | None = None
    async for response in stream:
        if first:
            raise_if_blocked(response)
            meter.set_provider_request_id(response.response_id)
            reply.model = response.model_version or reply.model
            first = False
        # Each response carries the running total so far; the last one counts.
        last_usage = response.usage_metadata or last_usage
        pieces: dict[int, str] = {}
        calls: dict[int, list[openai_pb2.ToolCallDelta]] = {}
        for c in _candidates(response):
            index = c.index or 0
            finishes.setdefault(index, "stop")
            if c.finish_reason:
                finishes[index] = finish_reason(c.finish_reason)
            text = candidate_text(c)
            if text:
                pieces[index] = text
            if reply.chat and (deltas := streamed.deltas(index, c)):
                calls[index] = deltas
        if not pieces and not calls:
            continue
        if not started and reply.chat:
            yield reply.role(sorted(finishes))
        started = True
        for piece in pieces.values():
            meter.add_output_text(piece)
        for deltas in calls.values():
            for delta in deltas:
                meter.add_output_text(delta.function.arguments)
        yield reply.delta(pieces, calls)
    finishes = {i: streamed.finish(i, r) for i, r in finishes.items()} or {0: "stop"}
    if not started and reply.chat:
        yield reply.role(sorted(finishes))
    yield reply.finish(finishes)
    total = usage(last_usage, reply.chat)
    if total is not None:
        meter.report(total)
        yield reply.usage_only(total)
