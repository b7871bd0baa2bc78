"""The contract every adapter implements."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Protocol

from switchboard.common.v1 import openai_pb2
from switchboard.provider.v1 import provider_pb2
from switchboard_common.config import ProviderConfig
from switchboard_common.errors import R, SwitchboardError
from switchboard_common.values import texts, to_python
from switchboard_provider.meter import UsageMeter


class Adapter(Protocol):
    def generate(
        self, request: provider_pb2.StreamGenerateRequest, meter: UsageMeter, timeout_s: float
    ) -> AsyncGenerator[provider_pb2.StreamGenerateResponse, None]:
        """Yield the upstream's output in order (chunks when request.stream,
        else exactly one object), report tokens to `meter`, and raise
        SwitchboardError for upstream failures. Cancellation must close the
        upstream request."""
        ...

    async def embed(
        self, request: provider_pb2.CreateEmbeddingRequest, timeout_s: float
    ) -> openai_pb2.EmbeddingList: ...

    async def close(self) -> None: ...


def message_text(content: object) -> str:
    """The text of a chat message's content (a string or a list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def prompt_text(request: provider_pb2.StreamGenerateRequest) -> str:
    if request.HasField("chat"):
        return "\n".join(
            message_text(to_python(m.content)) if m.HasField("content") else ""
            for m in request.chat.messages
        )
    if request.completion.HasField("prompt"):
        return "\n".join(texts(to_python(request.completion.prompt)))
    return ""


class KeyCheck:
    """Whether a provider's API key was set when its adapter was built: a call
    through a provider whose key is missing fails at once with what to set,
    instead of an upstream 401 after a round trip."""

    def __init__(self, config: ProviderConfig) -> None:
        self.key = config.api_key()
        self._config = config
        self._missing = bool(config.api_key_env) and not self.key

    def check(self) -> None:
        if self._missing:
            raise SwitchboardError(
                R.ERROR_REASON_UPSTREAM_AUTH,
                f"provider {self._config.name!r} has no API key: "
                f"set the environment variable {self._config.api_key_env}",
            )
