"""The Bisheng LLM API's workbench speech: POST /api/v1/llm/workbench/asr
(an upload to text) and /workbench/tts (text to the URL of its audio), each
through RouterService's own transcription and speech handlers (admission,
limits, the speech cache, accounting), with the model the workbench config
names (the registry's asr and tts defaults).

Bisheng answers TTS with a link to the audio in its object store; Switchboard's
link serves the audio from its speech cache (GET /api/v1/llm/workbench/tts/
audio/{key}). The link is a capability: no key travels with it (an audio
element cannot send one), so it is signed (HMAC-SHA256 over the cache entry
and the expiry, with a key derived from the admin key, as login tokens are)
and expires after SWITCHBOARD_TTS_URL_TTL_S, never later than the cache keeps
the audio."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
from typing import TYPE_CHECKING, Any

import grpc
from google.api import httpbody_pb2

from switchboard.common.v1 import media_pb2
from switchboard.router.v1 import bisheng_pb2, router_pb2
from switchboard_common.errors import R, SwitchboardError
from switchboard_router.default_models import model_for_use
from switchboard_router.forms import read_form
from switchboard_router.speech_cache import MAX_ENTRY_BYTES, PREFIX, cache_key
from switchboard_router.surfaces.bisheng_shapes import VOICE_OPTION, invalid

if TYPE_CHECKING:
    from switchboard_router.service import RouterServicer

Context = grpc.aio.ServicerContext[Any, Any]

AUDIO_PATH = "/api/v1/llm/workbench/tts/audio/"
# Bisheng keeps a voice in its server's config; without one, each kind's own.
DEFAULT_VOICES = {"gemini": "Kore"}
DEFAULT_VOICE = "alloy"
_LABEL = b"switchboard tts audio urls v1"
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


def url_key(admin_key: str | None) -> bytes:
    """Derived from the admin key (every router replica holds it, so a link
    made by one plays on another); a stack without one signs with a key of
    its own process."""
    if not admin_key:
        return secrets.token_bytes(32)
    return hmac.new(admin_key.encode(), _LABEL, hashlib.sha256).digest()


def sign(secret: bytes, key: str, expires: int) -> str:
    mac = hmac.new(secret, f"{key}:{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def audio_path(secret: bytes, key: str, expires: int) -> str:
    return f"{AUDIO_PATH}{key}?expires={expires}&signature={sign(secret, key, expires)}"


def check(secret: bytes, request: bisheng_pb2.GetBishengTtsAudioRequest) -> None:
    expected = sign(secret, request.key, request.expires)
    if not request.signature or not hmac.compare_digest(expected, request.signature):
        raise SwitchboardError(
            R.ERROR_REASON_PERMISSION_DENIED,
            "the audio URL's signature does not match: use the URL the tts call answered",
        )
    if request.expires < time.time():
        raise SwitchboardError(
            R.ERROR_REASON_PERMISSION_DENIED,
            "the audio URL has expired: call /api/v1/llm/workbench/tts again for a new one",
        )


def _origin(context: Context) -> str:
    """The scheme and host the client called the edge at (the edge's route
    passes the host on), so that the link works from where it was asked."""
    headers = {k: str(v) for k, v in context.invocation_metadata() or ()}
    host = headers.get("x-forwarded-host", "")
    if not host or not re.fullmatch(r"[A-Za-z0-9.\-:\[\]]+", host):
        return ""
    scheme = headers.get("x-forwarded-proto", "http")
    return f"{'https' if scheme == 'https' else 'http'}://{host}"


class WorkbenchSpeech:
    """Mixed into BishengServicer."""

    router: RouterServicer
    _url_key: bytes

    async def _transcribe(self, form: httpbody_pb2.HttpBody, context: Context) -> str:
        files = read_form(form.content_type, form.data, "file").get("file")
        if not files or not files[-1].data:
            raise invalid("file", "no file upload: send the audio as the multipart field 'file'")
        upload = files[-1]
        params = media_pb2.TranscriptionParams(
            model=model_for_use(self.router.catalog, "asr", "asr"),
            file=upload.data,
            filename=upload.filename,
            file_type=upload.content_type,
            response_format="json",
        )
        body = await self.router.CreateTranscription(
            router_pb2.CreateTranscriptionRequest(params=params), context
        )
        data: bytes = body.data
        try:
            answer: object = json.loads(data)
        except ValueError:
            # An upstream that answers plain text whatever the format asked.
            return data.decode("utf-8", "replace").strip()
        return str(answer.get("text") or "") if isinstance(answer, dict) else ""

    def _voice(self, model: str) -> str:
        config = self.router.catalog.find(model)
        candidates = self.router.catalog.candidates(config) if config else []
        if not candidates:
            return DEFAULT_VOICE
        provider = candidates[0].provider
        voice = provider.options.get(VOICE_OPTION)
        return voice or DEFAULT_VOICES.get(provider.kind, DEFAULT_VOICE)

    async def _speak(self, body: dict[str, Any], context: Context) -> str:
        text = body.get("text")
        if not isinstance(text, str) or not text.strip():
            raise invalid("text", "is required: the text to speak")
        model = model_for_use(self.router.catalog, "tts", "tts")
        params = media_pb2.SpeechParams(
            model=model, input=text, voice=self._voice(model), response_format="wav"
        )
        # RouterService's speech: a repeat is answered from the cache, and
        # either way the audio is in the cache once this ends.
        size = 0
        async for piece in self.router.StreamSpeech(
            router_pb2.StreamSpeechRequest(params=params), context
        ):
            size += len(piece.data)
        key = cache_key(model, params)
        if size > MAX_ENTRY_BYTES:
            raise SwitchboardError(
                R.ERROR_REASON_REQUEST_TOO_LARGE,
                f"the speech is longer than the TTS cache keeps ({MAX_ENTRY_BYTES // 2**20} MB "
                "of audio), so no link can play it: speak a shorter text",
                param="text",
            )
        if await self.router.speech_cache.get(key) is None:
            raise SwitchboardError(
                R.ERROR_REASON_SERVICE_UNAVAILABLE,
                "the TTS cache did not keep the audio (see the router's log): try again",
            )
        expires = int(time.time()) + min(
            self.router.settings.tts_url_ttl_s, self.router.speech_cache.ttl_s
        )
        return _origin(context) + audio_path(self._url_key, key.removeprefix(PREFIX), expires)

    async def _audio(self, request: bisheng_pb2.GetBishengTtsAudioRequest) -> httpbody_pb2.HttpBody:
        check(self._url_key, request)
        cached = (
            await self.router.speech_cache.get(PREFIX + request.key)
            if _DIGEST.match(request.key)
            else None
        )
        if cached is None:
            raise SwitchboardError(
                R.ERROR_REASON_NOT_FOUND,
                "this audio is no longer cached: call /api/v1/llm/workbench/tts again",
            )
        content_type, audio = cached
        return httpbody_pb2.HttpBody(content_type=content_type, data=audio)
