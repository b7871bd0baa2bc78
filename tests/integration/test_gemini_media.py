"""Speech through the `gemini` provider kind: transcriptions and translations
as a multimodal prompt (the WAV inline beside an instruction), speech from
Gemini's L16 PCM (wrapped in a WAV header, or passed on as pcm), through the
router's gRPC API and the provider's, against the Gemini loopback speaking
Gemini's wire format. Accounted in the kinds' units: seconds measured from the
file, characters of the text."""

from __future__ import annotations

import base64
import io
import json
import uuid
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio

from switchboard.common.v1 import media_pb2
from switchboard.provider.v1 import provider_pb2, provider_pb2_grpc
from switchboard.router.v1 import router_pb2, router_pb2_grpc
from switchboard.usage.v1 import usage_pb2
from tests.conftest import GEMINI_UPSTREAM_KEY, Loopbacks, loopback_provider
from tests.support import gemini_audio
from tests.support.gemini_upstream import Behaviour, GeminiUpstream
from tests.support.grpc_errors import reason
from tests.support.inprocess import services
from tests.support.media_upstream import SECONDS_PER_CHARACTER, tone_wav

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

Stubs = tuple[
    "router_pb2_grpc.RouterServiceAsyncStub", "provider_pb2_grpc.ProviderServiceAsyncStub"
]


@pytest_asyncio.fixture
async def upstream(loopbacks: Loopbacks) -> GeminiUpstream:
    return await loopbacks.gemini()


@pytest_asyncio.fixture
async def stubs(
    upstream: GeminiUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Stubs]:
    monkeypatch.setenv("LOOPBACK_GEMINI_KEY", GEMINI_UPSTREAM_KEY)
    config = {
        "providers": [loopback_provider("gm", upstream, "LOOPBACK_GEMINI_KEY", timeout_s=5.0)],
        "models": [
            {
                "name": "hear",
                "kind": "asr",
                "deployments": [{"provider": "gm", "model": "gemini-flash"}],
            },
            {
                "name": "speak",
                "kind": "tts",
                "deployments": [{"provider": "gm", "model": "gemini-tts"}],
            },
        ],
    }
    async with (
        services(config, tmp_path, monkeypatch) as settings,
        grpc.aio.insecure_channel(settings.address("router")) as router,
        grpc.aio.insecure_channel(settings.address("provider")) as provider,
    ):
        yield (
            router_pb2_grpc.RouterServiceStub(router),
            provider_pb2_grpc.ProviderServiceStub(provider),
        )


def _target(model: str) -> provider_pb2.Target:
    return provider_pb2.Target(provider="gm", upstream_model=model)


def _sent_audio(upstream: GeminiUpstream) -> tuple[str, str, bytes]:
    """The instruction, the audio's mime type and bytes of the last request."""
    parts = upstream.requests[-1].body["contents"][-1]["parts"]
    text = next(p["text"] for p in parts if "text" in p)
    blob = next(p["inlineData"] for p in parts if "inlineData" in p)
    data = base64.urlsafe_b64decode(blob["data"])
    return text, blob.get("mimeType") or blob.get("mime_type"), data


async def test_transcription_in_every_format(stubs: Stubs, upstream: GeminiUpstream) -> None:
    router, _ = stubs
    audio = tone_wav(1.5)

    async def heard(fmt: str, **extra: Any) -> tuple[str, str]:
        params = media_pb2.TranscriptionParams(
            model="hear", file=audio, filename="a.wav", response_format=fmt, **extra
        )
        body = await router.CreateTranscription(
            router_pb2.CreateTranscriptionRequest(params=params)
        )
        return body.content_type, body.data.decode()

    content_type, body = await heard("")
    assert content_type == "application/json"
    assert json.loads(body) == {"text": "heard 1.50 seconds"}
    instruction, mime, sent = _sent_audio(upstream)
    assert "Transcribe" in instruction
    assert (mime, sent) == ("audio/wav", audio)
    assert upstream.requests[-1].path == "/v1beta/models/gemini-flash:generateContent"

    assert (await heard("text"))[1] == "heard 1.50 seconds\n"
    assert "00:00:00,000 --> 00:00:01,500\nheard 1.50 seconds" in (await heard("srt"))[1]
    assert (await heard("vtt"))[1].startswith("WEBVTT\n\n00:00:00.000 --> 00:00:01.500")
    verbose = json.loads((await heard("verbose_json", language="en", prompt="tones"))[1])
    assert verbose["duration"] == pytest.approx(1.5)
    assert verbose["segments"][0]["end"] == pytest.approx(1.5)
    assert verbose["language"] == "en"
    instruction, _, _ = _sent_audio(upstream)
    assert "'en'" in instruction
    assert "tones" in instruction

    english = await router.CreateTranslation(
        router_pb2.CreateTranslationRequest(
            params=media_pb2.TranscriptionParams(model="hear", file=audio)
        )
    )
    assert json.loads(english.data) == {"text": "heard 1.50 seconds"}
    assert "into English" in _sent_audio(upstream)[0]


async def test_transcription_counted_in_seconds_of_the_file(
    stubs: Stubs, upstream: GeminiUpstream
) -> None:
    _, provider = stubs
    reply = await provider.CreateTranscription(
        provider_pb2.CreateTranscriptionRequest(
            request_id="r1",
            target=_target("gemini-flash"),
            params=media_pb2.TranscriptionParams(model="hear", file=tone_wav(2.25)),
        )
    )
    usage = reply.usage
    assert usage.operation == usage_pb2.OPERATION_TRANSCRIPTION
    assert usage.status == usage_pb2.USAGE_STATUS_OK
    assert usage.audio_seconds == pytest.approx(2.25)
    assert [c.completed for c in upstream.served] == [True]


async def test_word_timestamps_are_refused_not_invented(stubs: Stubs) -> None:
    router, _ = stubs
    params = media_pb2.TranscriptionParams(
        model="hear",
        file=tone_wav(0.5),
        response_format="verbose_json",
        timestamp_granularities=["word"],
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await router.CreateTranscription(router_pb2.CreateTranscriptionRequest(params=params))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "word" in (refused.value.details() or "")


async def test_speech_as_wav_wrapped_from_l16_pcm(stubs: Stubs, upstream: GeminiUpstream) -> None:
    router, _ = stubs
    text = f"hello from gemini {uuid.uuid4().hex[:8]}"
    params = media_pb2.SpeechParams(model="speak", input=text, voice="Kore")
    pieces = [
        piece async for piece in router.StreamSpeech(router_pb2.StreamSpeechRequest(params=params))
    ]
    assert pieces[0].content_type == "audio/wav"
    audio = b"".join(p.data for p in pieces)
    assert audio[:4] == b"RIFF"
    assert audio[8:12] == b"WAVE"
    with wave.open(io.BytesIO(audio), "rb") as played:
        assert (played.getnchannels(), played.getsampwidth()) == (1, 2)
        assert played.getframerate() == gemini_audio.RATE
        seconds = played.getnframes() / played.getframerate()
        samples = played.readframes(played.getnframes())
    assert seconds == pytest.approx(len(text) * SECONDS_PER_CHARACTER, abs=1e-3)
    # The very samples Gemini sent, in order, across its streamed responses.
    assert samples == gemini_audio.speech_pcm(text)
    sent = upstream.requests[-1]
    assert sent.path == "/v1beta/models/gemini-tts:streamGenerateContent"
    assert gemini_audio.wants_audio(sent.body)
    assert gemini_audio.voice(sent.body) == "Kore"
    assert sent.body["contents"][-1]["parts"] == [{"text": text}]


async def test_pcm_streams_as_it_arrives_counted_in_characters(
    stubs: Stubs, upstream: GeminiUpstream
) -> None:
    _, provider = stubs
    text = "stream these samples"
    events = [
        event
        async for event in provider.StreamSpeech(
            provider_pb2.StreamSpeechRequest(
                request_id="r2",
                target=_target("gemini-tts"),
                params=media_pb2.SpeechParams(
                    model="speak", input=text, voice="Puck", response_format="pcm"
                ),
            )
        )
    ]
    audio = [e.audio for e in events if e.HasField("audio")]
    # One piece per streamed Gemini response, passed on as it came.
    assert len(audio) == gemini_audio.SPEECH_PIECES
    assert audio[0].content_type == "audio/pcm"
    assert b"".join(a.data for a in audio) == gemini_audio.speech_pcm(text)
    usage = events[-1].usage
    assert usage.operation == usage_pb2.OPERATION_SPEECH
    assert usage.status == usage_pb2.USAGE_STATUS_OK
    assert usage.characters == len(text)
    assert gemini_audio.voice(upstream.requests[-1].body) == "Puck"


@pytest.mark.parametrize(
    ("extra", "param"), [({"response_format": "mp3"}, "mp3"), ({"speed": 1.5}, "speed")]
)
async def test_what_gemini_cannot_speak_is_refused(
    stubs: Stubs, upstream: GeminiUpstream, extra: dict[str, Any], param: str
) -> None:
    router, _ = stubs
    params = media_pb2.SpeechParams(model="speak", input="no", voice="Kore", **extra)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async for _ in router.StreamSpeech(router_pb2.StreamSpeechRequest(params=params)):
            pass
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason(refused.value) == "INVALID_REQUEST"
    assert param in (refused.value.details() or "")
    assert upstream.served == []


async def test_a_refusal_is_not_metered(stubs: Stubs, upstream: GeminiUpstream) -> None:
    """Refused before any upstream call: the provider sends no usage record
    (one with the text's characters would be billed)."""
    _, provider = stubs
    events = []
    call = provider.StreamSpeech(
        provider_pb2.StreamSpeechRequest(
            request_id="r3",
            target=_target("gemini-tts"),
            params=media_pb2.SpeechParams(model="speak", input="hi", response_format="flac"),
        )
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async for event in call:
            events.append(event)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert events == []
    assert upstream.requests == []


async def test_a_blocked_text_says_so(stubs: Stubs, upstream: GeminiUpstream) -> None:
    router, _ = stubs
    upstream.behaviour = Behaviour(mode="blocked", block_reason="PROHIBITED_CONTENT")
    params = media_pb2.SpeechParams(model="speak", input="something refused", voice="Kore")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async for _ in router.StreamSpeech(router_pb2.StreamSpeechRequest(params=params)):
            pass
    assert reason(refused.value) == "UPSTREAM_INVALID_REQUEST"
    assert "blocked" in (refused.value.details() or "")
    assert "PROHIBITED_CONTENT" in (refused.value.details() or "")
