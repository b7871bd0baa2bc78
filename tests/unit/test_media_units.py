"""The media kinds' units: audio measured from the file, per-unit prices,
request checks, and the speech cache's key."""

from __future__ import annotations

import io
import struct
import wave

import pytest

from switchboard.common.v1 import media_pb2
from switchboard.usage.v1 import usage_pb2
from switchboard_common.audio import wav_seconds
from switchboard_common.config import PricingConfig
from switchboard_common.errors import R, SwitchboardError
from switchboard_common.pricing import price
from switchboard_router.media_validation import (
    transcription_from_form,
    validate_image,
    validate_rerank,
    validate_speech,
    validate_transcription,
)
from switchboard_router.speech_cache import SpeechCache, cache_key


def _wav(frames: int, rate: int, channels: int = 1) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as audio:
        audio.setnchannels(channels)
        audio.setsampwidth(2)
        audio.setframerate(rate)
        audio.writeframes(struct.pack(f"<{frames * channels}h", *([0] * frames * channels)))
    return out.getvalue()


def test_seconds_come_from_the_samples() -> None:
    assert wav_seconds(_wav(24_000, 16_000)) == pytest.approx(1.5)
    assert wav_seconds(_wav(8_000, 8_000, channels=2)) == pytest.approx(1.0)


def test_a_truncated_wav_counts_the_samples_it_has() -> None:
    whole = _wav(16_000, 16_000)
    assert wav_seconds(whole[: len(whole) // 2 + 22]) == pytest.approx(0.5, abs=0.01)


def test_audio_that_is_not_wav_is_refused() -> None:
    with pytest.raises(SwitchboardError) as refused:
        wav_seconds(b"ID3\x03 an mp3 file")
    assert refused.value.reason == R.ERROR_REASON_INVALID_REQUEST
    assert "WAV" in refused.value.message


def test_each_unit_has_its_price_and_a_cache_hit_costs_nothing() -> None:
    pricing = PricingConfig(
        per_audio_second=0.0001, per_1k_characters=0.015, per_search_unit=0.002, per_image=0.04
    )
    cases = [
        (usage_pb2.UsageRecord(audio_seconds=90.5), 9_050_000),
        (usage_pb2.UsageRecord(characters=2000), 30_000_000),
        (usage_pb2.UsageRecord(search_units=3), 6_000_000),
        (usage_pb2.UsageRecord(images=2), 80_000_000),
        (usage_pb2.UsageRecord(characters=2000, cached=True), 0),
    ]
    for record, nanos in cases:
        assert price(record, pricing).total_cost_nanos == nanos


def _form(fields: list[tuple[str, str, bytes, str]]) -> tuple[str, bytes]:
    boundary = "b0undary"
    body = b""
    for name, filename, data, kind in fields:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        body += (f"Content-Type: {kind}\r\n" if kind else "").encode() + b"\r\n" + data + b"\r\n"
    return f"multipart/form-data; boundary={boundary}", body + f"--{boundary}--\r\n".encode()


def test_a_transcription_form_is_read_field_by_field() -> None:
    audio = _wav(1600, 16_000)
    content_type, body = _form(
        [
            ("file", "a.wav", audio, "audio/wav"),
            ("model", "", b"whisper", ""),
            ("response_format", "", b"srt", ""),
            ("temperature", "", b"0.2", ""),
            ("timestamp_granularities[]", "", b"word", ""),
            ("timestamp_granularities[]", "", b"segment", ""),
        ]
    )
    params = transcription_from_form(content_type, body)
    assert (params.model, params.filename, params.file_type) == ("whisper", "a.wav", "audio/wav")
    assert params.file == audio
    assert params.response_format == "srt"
    assert params.temperature == pytest.approx(0.2)
    assert list(params.timestamp_granularities) == ["word", "segment"]
    validate_transcription(params)


@pytest.mark.parametrize(
    ("check", "params", "param"),
    [
        (validate_transcription, media_pb2.TranscriptionParams(), "file"),
        (
            validate_transcription,
            media_pb2.TranscriptionParams(model="m", file=b"x", response_format="docx"),
            "response_format",
        ),
        (validate_speech, media_pb2.SpeechParams(model="m", voice="v"), "input"),
        (validate_speech, media_pb2.SpeechParams(model="m", input="hi"), "voice"),
        (
            validate_speech,
            media_pb2.SpeechParams(model="m", input="hi", voice="v", speed=9),
            "speed",
        ),
        (validate_rerank, media_pb2.RerankParams(model="m", query="q"), "documents"),
        (validate_image, media_pb2.ImageParams(model="m", prompt="p", n=11), "n"),
        (
            validate_image,
            media_pb2.ImageParams(model="m", prompt="p", response_format="gif"),
            "response_format",
        ),
    ],
)
def test_bad_media_requests_name_the_field(check: object, params: object, param: str) -> None:
    with pytest.raises(SwitchboardError) as refused:
        check(params)  # type: ignore[operator]
    assert refused.value.param == param


def test_a_rerank_document_is_a_string_or_has_text() -> None:
    params = media_pb2.RerankParams(model="m", query="q")
    params.documents.add().string_value = "a"
    params.documents.add().struct_value.update({"text": "b"})
    validate_rerank(params)
    params.documents.add().number_value = 3
    with pytest.raises(SwitchboardError):
        validate_rerank(params)


def test_the_speech_cache_key_covers_every_parameter() -> None:
    base = media_pb2.SpeechParams(model="tts", input="hello", voice="alloy")
    variants = [
        media_pb2.SpeechParams(model="tts", input="hello!", voice="alloy"),
        media_pb2.SpeechParams(model="tts", input="hello", voice="echo"),
        media_pb2.SpeechParams(model="tts", input="hello", voice="alloy", response_format="wav"),
        media_pb2.SpeechParams(model="tts", input="hello", voice="alloy", speed=1.5),
        media_pb2.SpeechParams(model="tts", input="hello", voice="alloy", instructions="calm"),
    ]
    keys = {cache_key("tts", base), cache_key("other", base)}
    keys |= {cache_key("tts", v) for v in variants}
    assert len(keys) == 7


@pytest.mark.asyncio
async def test_the_in_process_speech_cache_expires() -> None:
    cache = SpeechCache(None, ttl_s=0)
    await cache.put("k", "audio/wav", b"RIFF")
    assert await cache.get("k") is None
    cache = SpeechCache(None, ttl_s=60)
    await cache.put("k", "audio/wav", b"RIFF")
    assert await cache.get("k") == ("audio/wav", b"RIFF")
    await cache.close()
