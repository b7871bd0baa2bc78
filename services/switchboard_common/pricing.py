"""Price a usage record from per-1K-token pricing, in exact integer billionths
of the currency unit (floats would drift when summed). The usage service prices
every record it stores with this; the router quotes the same price to clients
that show cost (seed API 002)."""

from __future__ import annotations

import time
from decimal import ROUND_HALF_UP, Decimal

from switchboard.usage.v1 import events_pb2, usage_pb2
from switchboard_common.config import PricingConfig

_NANOS_PER_UNIT = Decimal(1_000_000_000)


def _nanos(tokens: int, per_1k: float) -> int:
    cost = Decimal(tokens) * Decimal(str(per_1k)) / 1000 * _NANOS_PER_UNIT
    return int(cost.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _media_nanos(record: usage_pb2.UsageRecord, pricing: PricingConfig) -> int:
    """The media kinds' units, each at its own rate (0 for chat and embeddings)."""
    cost = (
        Decimal(str(record.audio_seconds)) * Decimal(str(pricing.per_audio_second))
        + Decimal(record.characters) * Decimal(str(pricing.per_1k_characters)) / 1000
        + Decimal(record.search_units) * Decimal(str(pricing.per_search_unit))
        + Decimal(record.images) * Decimal(str(pricing.per_image))
    ) * _NANOS_PER_UNIT
    return int(cost.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def price(record: usage_pb2.UsageRecord, pricing: PricingConfig | None) -> events_pb2.UsageEvent:
    event = events_pb2.UsageEvent(record=record, currency=pricing.currency if pricing else "USD")
    # Served from Switchboard's own cache: no upstream was paid.
    if pricing is not None and not record.cached:
        # Cache reads and cache writes are parts of prompt_tokens, each at its own rate.
        cached = min(record.cached_tokens, record.prompt_tokens)
        written = min(record.cache_write_tokens, record.prompt_tokens - cached)
        cached_rate = pricing.cached_input_per_1k or pricing.input_per_1k
        write_rate = pricing.cache_write_input_per_1k or pricing.input_per_1k
        event.input_cost_nanos = (
            _nanos(record.prompt_tokens - cached - written, pricing.input_per_1k)
            + _nanos(cached, cached_rate)
            + _nanos(written, write_rate)
        )
        event.input_cost_nanos += _media_nanos(record, pricing)
        event.output_cost_nanos = _nanos(record.completion_tokens, pricing.output_per_1k)
        event.total_cost_nanos = event.input_cost_nanos + event.output_cost_nanos
    event.publish_time.FromNanoseconds(time.time_ns())  # GetCurrentTime costs ~4x
    return event
