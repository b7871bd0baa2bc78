"""Per-attempt usage: one UsageRecord for every upstream attempt, whatever happens."""

from __future__ import annotations

import time

from switchboard.common.v1 import openai_pb2
from switchboard.provider.v1 import provider_pb2
from switchboard.usage.v1 import usage_pb2
from switchboard_common.errors import SwitchboardError
from switchboard_common.ids import uuid7


def estimate_tokens(text: str) -> int:
    """A documented estimate for upstreams that report no usage: about four
    characters per token, the rule of thumb OpenAI gives for English text."""
    return (len(text) + 3) // 4


class UsageMeter:
    def __init__(self, request: provider_pb2.StreamGenerateRequest, operation: int) -> None:
        # The event id is made when the record is finished: an attempt the router
        # follows in case it is cut short (cut_short.py) mostly never needs one.
        self.record = usage_pb2.UsageRecord(
            request_id=request.request_id,
            attempt=request.attempt,
            deployment_id=request.target.deployment_id,
            provider=request.target.provider,
            upstream_model=request.target.upstream_model,
            operation=operation,  # type: ignore[arg-type]
            stream=request.stream,
        )
        # Nanoseconds, made a Timestamp once finished: Timestamp.GetCurrentTime
        # costs several times FromNanoseconds(time.time_ns()).
        self._start_ns = time.time_ns()
        self._start = time.perf_counter()
        self._first_token: float | None = None
        self._reported = False
        self._output_chars = 0
        self.prompt_text = ""

    def first_token(self) -> None:
        if self._first_token is None:
            self._first_token = time.perf_counter()

    def add_output_text(self, text: str) -> None:
        if text:
            self.first_token()
            self._output_chars += len(text)

    def set_provider_request_id(self, request_id: str | None) -> None:
        if request_id:
            self.record.provider_request_id = request_id

    def report(self, usage: openai_pb2.Usage, cache_write_tokens: int = 0) -> None:
        """The upstream's own count, which wins over any estimate. OpenAI's
        usage shape has no place for cache writes: upstreams that bill them
        (Anthropic) pass them beside it."""
        r = self.record
        r.cache_write_tokens = cache_write_tokens
        r.prompt_tokens = usage.prompt_tokens
        r.completion_tokens = usage.completion_tokens
        r.total_tokens = usage.total_tokens or usage.prompt_tokens + usage.completion_tokens
        r.cached_tokens = usage.prompt_tokens_details.cached_tokens
        r.reasoning_tokens = usage.completion_tokens_details.reasoning_tokens
        self._reported = True

    def finish(self, status: int, error: SwitchboardError | None = None) -> usage_pb2.UsageRecord:
        r = self.record
        end = time.perf_counter()
        r.status = status  # type: ignore[assignment]
        if error is not None:
            r.error_reason = error.reason_name
        r.latency_ms = (end - self._start) * 1000
        if self._first_token is not None and r.stream:
            r.ttft_ms = (self._first_token - self._start) * 1000
        if not self._reported:
            r.prompt_tokens = estimate_tokens(self.prompt_text) if self.prompt_text else 0
            r.completion_tokens = (self._output_chars + 3) // 4
            r.total_tokens = r.prompt_tokens + r.completion_tokens
            r.estimated = True
        if not r.event_id:
            r.event_id = uuid7()
        r.start_time.FromNanoseconds(self._start_ns)
        r.end_time.FromNanoseconds(time.time_ns())
        return r

    def report_units(self) -> None:
        """Media usage is counted in its own units (audio seconds, characters,
        search units, images), set on the record directly: nothing to estimate."""
        self._reported = True

    def report_embedding(self) -> None:
        """Embedding usage was copied in directly: it has no completion side."""
        self._reported = True
