"""The signed links of Bisheng's workbench TTS, and the Gemini speech helpers
they play: what is signed, what is refused, and the edge's host in the link."""

from __future__ import annotations

import io
import json
import time
import wave
from typing import Any

import pytest

from switchboard.router.v1 import bisheng_pb2
from switchboard_common.errors import R, SwitchboardError
from switchboard_provider.adapters.gemini.speech import pcm_rate, wav
from switchboard_provider.adapters.gemini.transcription import render
from switchboard_router.surfaces.bisheng_audio import _origin, check, sign, url_key

KEY = "ab" * 32


def _request(key: str, expires: int, signature: str) -> bisheng_pb2.GetBishengTtsAudioRequest:
    return bisheng_pb2.GetBishengTtsAudioRequest(key=key, expires=expires, signature=signature)


def test_a_link_signed_by_one_replica_plays_on_another() -> None:
    secret = url_key("admin-key")
    assert secret == url_key("admin-key")
    assert secret != url_key("another-admin-key")
    # Without an admin key each process signs with a key of its own.
    assert url_key(None) != url_key(None)
    expires = int(time.time()) + 60
    check(url_key("admin-key"), _request(KEY, expires, sign(secret, KEY, expires)))


@pytest.mark.parametrize(
    ("asked", "signed", "says"),
    [
        # (key, expiry offset) asked for, and what the signature was made over.
        (("cd" * 32, 60), (KEY, 60), "signature"),
        ((KEY, 3600), (KEY, 60), "signature"),
        ((KEY, 60), None, "signature"),
        ((KEY, -1), (KEY, -1), "expired"),
    ],
)
def test_an_altered_or_expired_link_is_refused(
    asked: tuple[str, int], signed: tuple[str, int] | None, says: str
) -> None:
    secret = url_key("admin-key")
    now = int(time.time())
    signature = sign(secret, signed[0], now + signed[1]) if signed else ""
    with pytest.raises(SwitchboardError) as refused:
        check(secret, _request(asked[0], now + asked[1], signature))
    assert refused.value.reason == R.ERROR_REASON_PERMISSION_DENIED
    assert says in refused.value.message


class _Context:
    def __init__(self, metadata: dict[str, str]) -> None:
        self._metadata = tuple(metadata.items())

    def invocation_metadata(self) -> Any:
        return self._metadata


@pytest.mark.parametrize(
    ("metadata", "origin"),
    [
        ({"x-forwarded-host": "edge.example:8080"}, "http://edge.example:8080"),
        (
            {"x-forwarded-host": "edge.example", "x-forwarded-proto": "https"},
            "https://edge.example",
        ),
        ({"x-forwarded-host": "evil.example/path?x="}, ""),
        ({}, ""),
    ],
)
def test_the_link_names_the_host_the_client_called(metadata: dict[str, str], origin: str) -> None:
    assert _origin(_Context(metadata)) == origin  # type: ignore[arg-type]


def test_gemini_pcm_becomes_a_wav_of_its_rate() -> None:
    assert pcm_rate("audio/L16;codec=pcm;rate=16000") == 16000
    assert pcm_rate("audio/L16") == 24000
    audio = wav(b"\x00\x01" * 48000, 24000)
    with wave.open(io.BytesIO(audio), "rb") as played:
        assert played.getnframes() / played.getframerate() == 2.0


def test_a_transcript_in_openai_formats() -> None:
    body, kind = render("hi there", "verbose_json", 61.5, "en", translate=False)
    assert kind == "application/json"
    verbose = json.loads(body)
    assert (verbose["task"], verbose["duration"], verbose["segments"][0]["end"]) == (
        "transcribe",
        61.5,
        61.5,
    )
    srt, _ = render("hi there", "srt", 61.5, "", translate=False)
    assert srt.decode() == "1\n00:00:00,000 --> 00:01:01,500\nhi there\n"
    vtt, _ = render("hi", "vtt", 3725.25, "", translate=True)
    assert vtt.decode() == "WEBVTT\n\n00:00:00.000 --> 01:02:05.250\nhi\n"
    assert render("hi", "text", 1, "", translate=False)[0] == b"hi\n"
