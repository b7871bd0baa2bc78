"""Audio in the Gemini loopback (tests.support.gemini_upstream), in Gemini's
wire format:

* speech: a generation whose ``generationConfig.responseModalities`` asks for
  ``AUDIO`` answers with ``inlineData`` parts of mime type
  ``audio/L16;codec=pcm;rate=24000``: bare 16-bit little-endian mono samples,
  base64 in JSON, no WAV header (a client wraps them). The sound is a 440 Hz
  tone lasting SECONDS_PER_CHARACTER per character of the text, streamed in
  SPEECH_PIECES responses (the last with ``finishReason``). Its usage counts
  the text's words as prompt tokens and SPEECH_TOKENS_PER_SECOND of output;
* hearing: a user turn with an ``inlineData`` WAV part is answered
  "heard <seconds> seconds" (measured with the `wave` module, 2 decimals),
  the audio counted as AUDIO_TOKENS_PER_SECOND prompt tokens, as Gemini does.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import wave
from typing import Any

from tests.support.media_upstream import SECONDS_PER_CHARACTER, tone_wav

RATE = 24_000
PCM_MIME = f"audio/L16;codec=pcm;rate={RATE}"
SPEECH_PIECES = 3
AUDIO_TOKENS_PER_SECOND = 32
SPEECH_TOKENS_PER_SECOND = 25


def _field(obj: Any, camel: str) -> Any:
    if not isinstance(obj, dict):
        return None
    if camel in obj:
        return obj[camel]
    return obj.get("".join(f"_{c.lower()}" if c.isupper() else c for c in camel))


def wants_audio(body: dict[str, Any]) -> bool:
    config = _field(body, "generationConfig") or {}
    modalities = _field(config, "responseModalities") or []
    return any(str(m).upper() == "AUDIO" for m in modalities)


def voice(body: dict[str, Any]) -> str | None:
    """The prebuilt voice a speech request named."""
    speech = _field(_field(body, "generationConfig") or {}, "speechConfig") or {}
    prebuilt = _field(_field(speech, "voiceConfig") or {}, "prebuiltVoiceConfig") or {}
    name = _field(prebuilt, "voiceName")
    return name if isinstance(name, str) else None


def heard_seconds(content: Any) -> float | None:
    """The length of the first audio part of a turn; None if it has none.
    Raises ValueError for audio that is not a readable WAV."""
    for part in _field(content, "parts") or []:
        blob = _field(part, "inlineData")
        if not isinstance(blob, dict) or not str(_field(blob, "mimeType")).startswith("audio/"):
            continue
        try:
            # Google's JSON reads bytes in either base64 alphabet (the SDK sends URL-safe).
            encoded = str(blob.get("data", "")).replace("-", "+").replace("_", "/")
            data = base64.b64decode(encoded, validate=True)
            with wave.open(io.BytesIO(data), "rb") as audio:
                return audio.getnframes() / audio.getframerate()
        except (binascii.Error, wave.Error, EOFError) as exc:
            raise ValueError(f"Unable to process input audio: {exc}") from None
    return None


def audio_tokens(seconds: float) -> int:
    return math.ceil(seconds * AUDIO_TOKENS_PER_SECOND)


def speech_pcm(text: str) -> bytes:
    """The samples spoken for `text`, as Gemini sends them (no header)."""
    with wave.open(io.BytesIO(tone_wav(len(text) * SECONDS_PER_CHARACTER, RATE)), "rb") as audio:
        return audio.readframes(audio.getnframes())


def speech_responses(
    text: str, model: str, response_id: str, prompt_tokens: int, stream: bool
) -> tuple[int, list[dict[str, Any]]]:
    """The output tokens and the responses (one unless streamed) of a speech call."""
    pcm = speech_pcm(text)
    seconds = len(pcm) / 2 / RATE
    output_tokens = math.ceil(seconds * SPEECH_TOKENS_PER_SECOND)
    count = SPEECH_PIECES if stream else 1
    # Whole samples in each piece.
    step = math.ceil(len(pcm) / 2 / count) * 2
    pieces = [pcm[i : i + step] for i in range(0, len(pcm), step)] or [b""]
    responses = []
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        candidate: dict[str, Any] = {
            "content": {
                "parts": [
                    {"inlineData": {"mimeType": PCM_MIME, "data": base64.b64encode(piece).decode()}}
                ],
                "role": "model",
            },
            "index": 0,
        }
        if last:
            candidate["finishReason"] = "STOP"
        sent = output_tokens if last else 0
        responses.append(
            {
                "candidates": [candidate],
                "usageMetadata": {
                    "promptTokenCount": prompt_tokens,
                    "candidatesTokenCount": sent,
                    "totalTokenCount": prompt_tokens + sent,
                    "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt_tokens}],
                },
                "modelVersion": model,
                "responseId": response_id,
            }
        )
    return output_tokens, responses
