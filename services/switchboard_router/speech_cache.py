"""Synthesised speech, cached by (model, text, voice, params) for a TTL, as
Bisheng does: a repeat is served without an upstream call. In Redis when the
router has REDIS_URL (shared by every replica), else in this process. A cache
that fails is a miss, never a failed call."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import OrderedDict

import redis.asyncio as redis

from switchboard.common.v1 import media_pb2
from switchboard_common.logs import log_fields
from switchboard_router.settings import DEFAULT_TTS_CACHE_TTL_S

log = logging.getLogger(__name__)

# Longer answers are not kept: the cache is for the short phrases apps repeat.
MAX_ENTRY_BYTES = 8 * 1024 * 1024
# Entries the in-process cache keeps.
LOCAL_ENTRIES = 256
PREFIX = "switchboard:tts:"


def cache_key(model: str, params: media_pb2.SpeechParams) -> str:
    speed = params.speed if params.HasField("speed") else None
    identity = [model, params.input, params.voice, params.response_format, speed]
    identity.append(params.instructions)
    digest = hashlib.sha256(json.dumps(identity, ensure_ascii=False).encode()).hexdigest()
    return PREFIX + digest


class SpeechCache:
    def __init__(self, redis_url: str | None, ttl_s: int = DEFAULT_TTS_CACHE_TTL_S) -> None:
        self.ttl_s = ttl_s
        self._redis = (
            redis.from_url(redis_url, socket_timeout=1.0, socket_connect_timeout=1.0)
            if redis_url
            else None
        )
        self._local: OrderedDict[str, tuple[float, str, bytes]] = OrderedDict()

    async def get(self, key: str) -> tuple[str, bytes] | None:
        """The cached (content type, audio), or None."""
        if self._redis is None:
            entry = self._local.get(key)
            if entry is None or entry[0] <= time.monotonic():
                self._local.pop(key, None)
                return None
            self._local.move_to_end(key)
            return entry[1], entry[2]
        try:
            value = await self._redis.get(key)
        except redis.RedisError as exc:
            log.warning("speech cache read failed", extra=log_fields(error=type(exc).__name__))
            return None
        if not isinstance(value, bytes) or b"\n" not in value:
            return None
        content_type, _, audio = value.partition(b"\n")
        return content_type.decode(), audio

    async def put(self, key: str, content_type: str, audio: bytes) -> None:
        if not audio or len(audio) > MAX_ENTRY_BYTES:
            return
        if self._redis is None:
            self._local[key] = (time.monotonic() + self.ttl_s, content_type, audio)
            self._local.move_to_end(key)
            while len(self._local) > LOCAL_ENTRIES:
                self._local.popitem(last=False)
            return
        try:
            await self._redis.set(key, content_type.encode() + b"\n" + audio, ex=self.ttl_s)
        except redis.RedisError as exc:
            log.warning("speech cache write failed", extra=log_fields(error=type(exc).__name__))

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
