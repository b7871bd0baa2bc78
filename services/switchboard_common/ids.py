"""Identifiers."""

from __future__ import annotations

import os
import time


def uuid7() -> str:
    """A UUIDv7 (RFC 9562): millisecond time first, so ids sort by creation and
    index well; 74 random bits make collisions across processes negligible."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= ((rand >> 62) & 0xFFF) << 64
    value |= 0b10 << 62
    value |= rand & ((1 << 62) - 1)
    # Formatted here: str(uuid.UUID(int=...)) validates and formats in Python,
    # about three times the cost, and every attempt makes one or two of these.
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
