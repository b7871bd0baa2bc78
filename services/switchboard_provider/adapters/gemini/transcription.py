"""The `gemini` kind's speech recognition (OpenAI's /v1/audio/transcriptions
and /translations): Gemini has no transcription endpoint, so the audio goes to
generateContent as an inlineData part beside an instruction to transcribe it
(or to translate it into English), and the answer's text is the transcript.

The answer is rendered in OpenAI's response formats. Gemini gives no
timestamps: verbose_json has one segment, and srt and vtt one cue, spanning
the whole file (its length measured from the WAV), and word timestamps are
refused rather than invented. The audio travels inline, so a request is
bounded by Gemini's 20 MB per request (base64 makes audio a third larger)."""

from __future__ import annotations

import json
from typing import Any

from google.genai import types

from switchboard.provider.v1 import provider_pb2
from switchboard_common.audio import wav_seconds
from switchboard_common.errors import R, SwitchboardError
from switchboard_provider.adapters.gemini.error_mapping import UPSTREAM_FAILURES
from switchboard_provider.adapters.gemini.response_mapping import raise_if_blocked
from switchboard_provider.adapters.gemini.speech import GeminiHost

# Gemini's limit on a request with inline data is 20 MB; base64 adds a third.
MAX_INLINE_AUDIO_BYTES = 14 * 1024 * 1024

_TRANSCRIBE = (
    "Transcribe the speech in this audio verbatim. Answer with the transcript only: "
    "no introduction, no timestamps, no speaker labels."
)
_TRANSLATE = (
    "Translate the speech in this audio into English. Answer with the English text only: "
    "no introduction, no timestamps, no speaker labels."
)


def instruction(params: Any, translate: bool) -> str:
    text = _TRANSLATE if translate else _TRANSCRIBE
    if params.language and not translate:
        text += f" The speech is in the language with ISO-639-1 code {params.language!r}."
    if params.prompt:
        # OpenAI's prompt: earlier text of the recording, or words it contains.
        text += f" For context, the recording may continue or contain: {params.prompt}"
    return text


def _timestamp(seconds: float, separator: str) -> str:
    millis = round(seconds * 1000)
    whole, millis = divmod(millis, 1000)
    return f"{whole // 3600:02d}:{whole // 60 % 60:02d}:{whole % 60:02d}{separator}{millis:03d}"


def render(
    text: str, fmt: str, seconds: float, language: str, translate: bool
) -> tuple[bytes, str]:
    """The transcript in OpenAI's response format, and its content type."""
    if fmt == "text":
        return (text + "\n").encode(), "text/plain; charset=utf-8"
    if fmt in ("srt", "vtt"):
        separator = "," if fmt == "srt" else "."
        cue = f"{_timestamp(0, separator)} --> {_timestamp(seconds, separator)}\n{text}\n"
        body = f"1\n{cue}" if fmt == "srt" else f"WEBVTT\n\n{cue}"
        return body.encode(), "text/plain; charset=utf-8"
    if fmt == "verbose_json":
        answer: dict[str, Any] = {
            "task": "translate" if translate else "transcribe",
            "language": "english" if translate else language,
            "duration": seconds,
            "text": text,
            "segments": [{"id": 0, "seek": 0, "start": 0.0, "end": seconds, "text": text}],
        }
    else:
        answer = {"text": text}
    return json.dumps(answer, ensure_ascii=False).encode(), "application/json"


def _check(params: Any) -> None:
    if "word" in params.timestamp_granularities:
        raise SwitchboardError(
            R.ERROR_REASON_INVALID_REQUEST,
            "Gemini gives no word timestamps: ask for segment granularity or none",
            param="timestamp_granularities",
        )
    if len(params.file) > MAX_INLINE_AUDIO_BYTES:
        raise SwitchboardError(
            R.ERROR_REASON_REQUEST_TOO_LARGE,
            f"Gemini takes at most {MAX_INLINE_AUDIO_BYTES // (1024 * 1024)} MB of audio "
            "in one request (20 MB once encoded)",
            param="file",
        )


class GeminiTranscription:
    """Mixed into GeminiAdapter: the provider's `transcribe`."""

    async def transcribe(
        self: GeminiHost, request: provider_pb2.CreateTranscriptionRequest, timeout_s: float
    ) -> tuple[bytes, str]:
        self._keys.check()
        p = request.params
        _check(p)
        seconds = wav_seconds(p.file)
        contents = types.Content(
            role="user",
            parts=[
                types.Part(text=instruction(p, request.translate)),
                # The provider measured it as WAV: anything else was refused.
                types.Part(inline_data=types.Blob(mime_type="audio/wav", data=p.file)),
            ],
        )
        config = types.GenerateContentConfig(
            http_options=self._options(min(self.config.timeout_s, timeout_s))
        )
        if p.HasField("temperature"):
            config.temperature = p.temperature
        try:
            response = await self.client.aio.models.generate_content(
                model=request.target.upstream_model, contents=contents, config=config
            )
        except UPSTREAM_FAILURES as exc:
            raise self._error(exc) from None
        raise_if_blocked(response)
        text = (response.text or "").strip()
        return render(text, p.response_format or "json", seconds, p.language, request.translate)
