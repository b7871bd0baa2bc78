"""The usage record of an attempt that ends without the provider's own: the
caller cancelled or its deadline passed (once the router cancels the provider's
stream, the record the provider makes cannot reach it), or the provider died.

Estimated the way the provider estimates for upstreams that report no usage,
with its own meter: the prompt's text, and the text the router forwarded to the
caller before the cut. So a stream cancelled half-way is counted for the half
the caller got, not as nothing.
"""

from __future__ import annotations

from switchboard.provider.v1 import provider_pb2
from switchboard.usage.v1 import usage_pb2
from switchboard_provider.adapters.base import prompt_text
from switchboard_provider.meter import UsageMeter


class CutShort:
    """Follows one attempt's events; `record()` if it ends without a record."""

    def __init__(self, request: provider_pb2.StreamGenerateRequest) -> None:
        self._request = request
        operation = (
            usage_pb2.OPERATION_CHAT if request.HasField("chat") else usage_pb2.OPERATION_COMPLETION
        )
        # Started now: the record's latency is the attempt's, as the router saw it.
        self._meter = UsageMeter(request, operation)

    def saw(self, event: object) -> None:
        # Typed `object`: the attempt loop is generic over what an exchange yields.
        if not isinstance(event, provider_pb2.StreamGenerateResponse):
            return
        kind = event.WhichOneof("event")
        add = self._meter.add_output_text
        if kind == "chat_chunk":
            for chunk_choice in event.chat_chunk.choices:
                delta = chunk_choice.delta
                add(delta.content + delta.refusal)
                for call in delta.tool_calls:
                    add(call.function.arguments)
        elif kind == "chat_completion":
            for choice in event.chat_completion.choices:
                message = choice.message
                add(message.content + message.refusal)
                for tool_call in message.tool_calls:
                    add(tool_call.function.arguments)
        elif kind == "completion":
            for completion_choice in event.completion.choices:
                add(completion_choice.text)

    def record(self) -> usage_pb2.UsageRecord:
        # The prompt is read only now: most attempts never need it.
        self._meter.prompt_text = prompt_text(self._request)
        return self._meter.finish(usage_pb2.USAGE_STATUS_CANCELLED)
