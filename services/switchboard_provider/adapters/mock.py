"""The `mock` provider kind: a labelled echo upstream, so a fresh stack with no
provider keys still answers. Every answer says it came from the mock."""

from __future__ import annotations

import hashlib
import json
import struct
import time
import uuid
from collections.abc import AsyncGenerator

from switchboard.common.v1 import openai_pb2
from switchboard.provider.v1 import provider_pb2
from switchboard_common.config import ProviderConfig
from switchboard_common.values import texts, to_python
from switchboard_provider.adapters.base import message_text
from switchboard_provider.meter import UsageMeter

FINGERPRINT = "switchboard-mock"


def _words(text: str) -> int:
    return max(1, len(text.split()))


def _image_sizes(content: object) -> list[tuple[str, int]]:
    """(media type, decoded bytes) of each data-URL image part in a message."""
    found = []
    for part in content if isinstance(content, list) else []:
        url = part.get("image_url", {}).get("url", "") if isinstance(part, dict) else ""
        if isinstance(url, str) and url.startswith("data:") and ";base64," in url:
            media, _, data = url[5:].partition(";base64,")
            found.append((media, len(data) * 3 // 4))
    return found


def _describe_images(images: list[tuple[str, int]]) -> str:
    """An honest answer to a vision request: the mock does not look at pictures,
    so it says what it was given, in the JSON shape vision callers ask for."""
    objects = [
        {
            "name": "image",
            "description": f"[mock] a {media} picture of about {size} bytes; "
            "the mock provider does not recognise objects",
        }
        for media, size in images
    ]
    return json.dumps({"objects": objects})


class MockAdapter:
    def __init__(self, config: ProviderConfig) -> None:
        self.config = config

    def _reply(self, request: provider_pb2.StreamGenerateRequest) -> tuple[str, int]:
        if request.HasField("chat"):
            users = [m for m in request.chat.messages if m.role == "user"]
            content = (
                to_python(users[-1].content) if users and users[-1].HasField("content") else ""
            )
            last = message_text(content)
            prompt_words = sum(
                _words(message_text(to_python(m.content)))
                for m in request.chat.messages
                if m.HasField("content")
            )
            images = _image_sizes(content)
            if images:
                return _describe_images(images), prompt_words
        else:
            last = " ".join(texts(to_python(request.completion.prompt)))
            prompt_words = _words(last)
        return f"[mock] {last}".strip(), prompt_words

    async def generate(
        self, request: provider_pb2.StreamGenerateRequest, meter: UsageMeter, timeout_s: float
    ) -> AsyncGenerator[provider_pb2.StreamGenerateResponse, None]:
        reply, prompt_tokens = self._reply(request)
        words = reply.split(" ")
        usage = openai_pb2.Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=len(words),
            total_tokens=prompt_tokens + len(words),
        )
        ident, created, model = (
            f"mock-{uuid.uuid4().hex}",
            int(time.time()),
            request.target.upstream_model,
        )
        meter.set_provider_request_id(ident)
        chat = request.HasField("chat")
        if not request.stream:
            meter.add_output_text(reply)
            meter.report(usage)
            if chat:
                yield provider_pb2.StreamGenerateResponse(
                    chat_completion=openai_pb2.ChatCompletion(
                        id=ident,
                        object="chat.completion",
                        created=created,
                        model=model,
                        system_fingerprint=FINGERPRINT,
                        usage=usage,
                        choices=[
                            openai_pb2.ChatCompletionChoice(
                                index=0,
                                finish_reason="stop",
                                message=openai_pb2.ChatCompletionMessage(
                                    role="assistant", content=reply
                                ),
                            )
                        ],
                    )
                )
            else:
                yield provider_pb2.StreamGenerateResponse(
                    completion=openai_pb2.Completion(
                        id=ident,
                        object="text_completion",
                        created=created,
                        model=model,
                        system_fingerprint=FINGERPRINT,
                        usage=usage,
                        choices=[
                            openai_pb2.CompletionChoice(text=reply, index=0, finish_reason="stop")
                        ],
                    )
                )
            return
        for i, word in enumerate(words):
            piece = word if i == len(words) - 1 else word + " "
            meter.add_output_text(piece)
            yield self._chunk(chat, ident, created, model, piece, None, role=i == 0)
        yield self._chunk(chat, ident, created, model, "", "stop", role=False)
        meter.report(usage)
        if chat:
            yield provider_pb2.StreamGenerateResponse(
                chat_chunk=openai_pb2.ChatCompletionChunk(
                    id=ident,
                    object="chat.completion.chunk",
                    created=created,
                    model=model,
                    system_fingerprint=FINGERPRINT,
                    usage=usage,
                )
            )
        else:
            yield provider_pb2.StreamGenerateResponse(
                completion=openai_pb2.Completion(
                    id=ident, object="text_completion", created=created, model=model, usage=usage
                )
            )

    @staticmethod
    def _chunk(
        chat: bool,
        ident: str,
        created: int,
        model: str,
        text: str,
        finish: str | None,
        *,
        role: bool,
    ) -> provider_pb2.StreamGenerateResponse:
        if chat:
            delta = (
                openai_pb2.ChatCompletionDelta(content=text)
                if text or role
                else openai_pb2.ChatCompletionDelta()
            )
            if role:
                delta.role = "assistant"
            choice = openai_pb2.ChatCompletionChunkChoice(index=0, delta=delta)
            if finish:
                choice.finish_reason = finish
            return provider_pb2.StreamGenerateResponse(
                chat_chunk=openai_pb2.ChatCompletionChunk(
                    id=ident,
                    object="chat.completion.chunk",
                    created=created,
                    model=model,
                    system_fingerprint=FINGERPRINT,
                    choices=[choice],
                )
            )
        c = openai_pb2.CompletionChoice(text=text, index=0)
        if finish:
            c.finish_reason = finish
        return provider_pb2.StreamGenerateResponse(
            completion=openai_pb2.Completion(
                id=ident, object="text_completion", created=created, model=model, choices=[c]
            )
        )

    async def embed(
        self, request: provider_pb2.CreateEmbeddingRequest, timeout_s: float
    ) -> openai_pb2.EmbeddingList:
        inputs = texts(to_python(request.params.input))
        data = []
        tokens = 0
        for i, text in enumerate(inputs):
            digest = hashlib.sha256(text.encode()).digest()
            vector = [v / 2**31 for v in struct.unpack("<8i", digest)]
            tokens += _words(text)
            emb = openai_pb2.Embedding(object="embedding", index=i)
            emb.embedding.list_value.extend(vector)
            data.append(emb)
        return openai_pb2.EmbeddingList(
            object="list",
            data=data,
            model=request.target.upstream_model,
            usage=openai_pb2.EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens),
        )

    async def close(self) -> None:
        return None
