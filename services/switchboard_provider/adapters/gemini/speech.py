"""The `gemini` kind's speech synthesis (OpenAI's /v1/audio/speech): a
generateContent stream with responseModalities ["AUDIO"], whose parts carry
inlineData "audio/L16;codec=pcm;rate=24000": bare 16-bit little-endian mono
samples.

`pcm` is passed on as the pieces arrive (OpenAI's pcm is the same 24 kHz
16-bit mono). `wav` (the default: Gemini makes no mp3, opus, aac or flac, and
Switchboard does not transcode) is the samples wrapped in a RIFF header once
the last piece is in, because the header states the data's length.

The voice names one of Gemini's prebuilt voices (Kore, Puck, ...);
`instructions` lead the text, which is how Gemini's speech models are steered
("Say cheerfully: ..."). Gemini has no speaking rate: a speed other than 1 is
refused rather than ignored."""

from __future__ import annotations

import io
import wave
from collections.abc import AsyncGenerator, Iterable
from typing import Protocol

from google import genai
from google.genai import types

from switchboard.provider.v1 import provider_pb2
from switchboard_common.config import ProviderConfig
from switchboard_common.errors import R, SwitchboardError
from switchboard_provider.adapters.base import KeyCheck
from switchboard_provider.adapters.gemini.error_mapping import UPSTREAM_FAILURES
from switchboard_provider.adapters.gemini.response_mapping import raise_if_blocked
from switchboard_provider.adapters.gemini.streaming import read_ahead

# What Gemini's speech models send when the mime type says no rate.
DEFAULT_RATE = 24_000
# A WAV leaves in pieces of this size: gRPC messages stay far below their limit.
PIECE_BYTES = 64 * 1024
FORMATS = ("wav", "pcm")


class GeminiHost(Protocol):
    """What the speech and transcription mixins use of GeminiAdapter."""

    config: ProviderConfig
    _keys: KeyCheck

    @property
    def client(self) -> genai.Client: ...

    def _options(self, timeout_s: float) -> types.HttpOptions: ...
    def _error(self, exc: BaseException) -> SwitchboardError: ...


def pcm_rate(mime_type: str | None) -> int:
    """The sample rate of "audio/L16;codec=pcm;rate=24000"."""
    for param in (mime_type or "").split(";")[1:]:
        name, _, value = param.strip().partition("=")
        if name.lower() == "rate" and value.isdigit():
            return int(value)
    return DEFAULT_RATE


def wav(pcm: bytes, rate: int) -> bytes:
    """16-bit mono samples as a WAV file."""
    out = io.BytesIO()
    with wave.open(out, "wb") as audio:
        audio.setnchannels(1)
        audio.setsampwidth(2)
        audio.setframerate(rate)
        audio.writeframes(pcm)
    return out.getvalue()


def audio_parts(response: types.GenerateContentResponse) -> Iterable[types.Blob]:
    for candidate in response.candidates or ():
        for part in (candidate.content.parts if candidate.content else None) or ():
            blob = part.inline_data
            if blob is not None and blob.data and (blob.mime_type or "").startswith("audio/"):
                yield blob


def _refuse(param: str, message: str) -> SwitchboardError:
    return SwitchboardError(R.ERROR_REASON_INVALID_REQUEST, message, param=param)


def speech_config(params: provider_pb2.StreamSpeechRequest) -> tuple[str, str]:
    """The response format and the text Gemini is given, or a refusal."""
    p = params.params
    fmt = p.response_format or "wav"
    if fmt not in FORMATS:
        raise _refuse(
            "response_format",
            f"Gemini's speech is PCM audio: response_format must be wav or pcm, not {fmt!r}",
        )
    if p.HasField("speed") and p.speed != 1.0:
        raise _refuse(
            "speed", "Gemini has no speaking rate: leave speed out and say it in instructions"
        )
    text = f"{p.instructions.strip()}: {p.input}" if p.instructions.strip() else p.input
    return fmt, text


class GeminiSpeech:
    """Mixed into GeminiAdapter: the provider's `speak`."""

    def speak(
        self: GeminiHost, request: provider_pb2.StreamSpeechRequest, timeout_s: float
    ) -> AsyncGenerator[tuple[bytes, str], None]:
        """Refuses what Gemini cannot speak now, before the call is metered
        (nothing reached the upstream, nothing is billed), then the audio."""
        self._keys.check()
        fmt, text = speech_config(request)
        return _speak(self, request, fmt, text, timeout_s)


async def _speak(
    host: GeminiHost,
    request: provider_pb2.StreamSpeechRequest,
    fmt: str,
    text: str,
    timeout_s: float,
) -> AsyncGenerator[tuple[bytes, str], None]:
    config = types.GenerateContentConfig(
        response_modalities=["AUDIO"], http_options=host._options(timeout_s)
    )
    if request.params.voice:
        config.speech_config = types.SpeechConfig(
            voice_config=types.VoiceConfig(
                prebuilt_voice_config=types.PrebuiltVoiceConfig(voice_name=request.params.voice)
            )
        )
    pcm: list[bytes] = []
    rate = DEFAULT_RATE
    try:
        stream = await host.client.aio.models.generate_content_stream(
            model=request.target.upstream_model, contents=text, config=config
        )
        responses = read_ahead(stream, min(host.config.timeout_s, timeout_s))
        try:
            async for response in responses:
                raise_if_blocked(response)
                for blob in audio_parts(response):
                    rate = pcm_rate(blob.mime_type)
                    assert blob.data is not None
                    if fmt == "pcm":
                        yield blob.data, "audio/pcm"
                    pcm.append(blob.data)
        finally:
            await responses.aclose()
    except UPSTREAM_FAILURES as exc:
        raise host._error(exc) from None
    if not pcm:
        raise SwitchboardError(
            R.ERROR_REASON_UPSTREAM_ERROR,
            f"provider {host.config.name!r} sent no audio for the text",
        )
    if fmt == "wav":
        audio = wav(b"".join(pcm), rate)
        for start in range(0, len(audio), PIECE_BYTES):
            yield audio[start : start + PIECE_BYTES], "audio/wav"
