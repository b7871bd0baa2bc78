"""The key a caller presented, from gRPC metadata (the edge forwards HTTP
headers as metadata): `Authorization: Bearer <key>` or `X-API-Key: <key>`."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

MAX_KEY_LENGTH = 512


def presented_key(metadata: Iterable[tuple[str, str | bytes]]) -> str:
    for name, value in metadata:
        # Oversized values are ignored, not parsed: the caller then has no key (401).
        # (The edge refuses them, and any byte that is not printable ASCII, as an
        # invalid key before they get here: deploy/envoy/edge.lua.)
        if not isinstance(value, str) or len(value) > MAX_KEY_LENGTH + 16:
            continue
        if name == "authorization":
            scheme, _, token = value.strip().partition(" ")
            if scheme.lower() == "bearer":
                return token.strip()
        elif name == "x-api-key":
            return value.strip()
    return ""


def digest(key: str) -> bytes:
    """What keys are compared by: equal-length SHA-256 digests, so the comparison
    time says nothing about the key (not even its length)."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
