"""Deadline propagation. grpc-python does not carry a server's deadline into
the calls it makes, so each hop passes context.time_remaining() on itself."""

from __future__ import annotations

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
