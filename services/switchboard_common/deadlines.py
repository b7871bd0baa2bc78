"""Deadline propagation. grpc-python does not carry a server's deadline into
the calls it makes, so each hop passes context.time_remaining() on itself."""

from __future__ import annotations

import time
from typing import Any

import grpc

# Keep a little of the caller's budget for our own error reply.
REPLY_MARGIN_S = 0.02
MIN_TIMEOUT_S = 0.05


def remaining(
    context: grpc.aio.ServicerContext[Any, Any], ceiling_s: float, floor_s: float = MIN_TIMEOUT_S
) -> float:
    """The timeout for a downstream call: the caller's remaining time, less a
    margin, clamped to [floor_s, ceiling_s]. No caller deadline means ceiling_s."""
    left: float | None = context.time_remaining()
    if left is None:
        return ceiling_s
    return max(floor_s, min(ceiling_s, left - REPLY_MARGIN_S))


class Deadline:
    """The part of a ServicerContext that calls made on a request's behalf
    read (its time_remaining), for code that runs outside a gRPC call: the
    router's active health probes, and the provider embedded in the router."""

    def __init__(self, seconds: float | None) -> None:
        self._until = None if seconds is None else time.monotonic() + seconds

    def time_remaining(self) -> float | None:
        if self._until is None:
            return None
        return max(0.0, self._until - time.monotonic())
