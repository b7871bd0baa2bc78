"""End to end: the media kinds through Envoy with the official `openai` SDK
(and plain HTTP for rerank) → router → provider → a loopback upstream with
real audio (OpenAI's wire format, and Gemini's for its speech), each call
counted exactly once in ClickHouse in its own unit."""

from __future__ import annotations

import base64
import datetime as dt
import io
import time
import uuid
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import clickhouse_connect
import httpx
import openai
import pytest

from switchboard_stack.harness import Stack, running_stack
from tests.conftest import GEMINI_UPSTREAM_KEY, StartStack
from tests.support.gemini_upstream import GeminiUpstream
from tests.support.media_upstream import SECONDS_PER_CHARACTER, MediaUpstream, tone_wav
from tests.support.openai_upstream import run_in_thread

pytestmark = [pytest.mark.e2e, pytest.mark.serial]

MEDIA_KEY = "sk-media-loopback"
PER_SECOND = 0.0001
PER_1K_CHARS = 0.015
PER_SEARCH = 0.002
PER_IMAGE = 0.04


@pytest.fixture(scope="module")
def media() -> Iterator[MediaUpstream]:
    with run_in_thread(MediaUpstream(api_key=MEDIA_KEY)) as server:
        yield server


@pytest.fixture(scope="module")
def gemini() -> Iterator[GeminiUpstream]:
    with run_in_thread(GeminiUpstream(api_key=GEMINI_UPSTREAM_KEY)) as server:
        yield server


def _model(
    name: str, kind: str, pricing: dict[str, float], provider: str = "media"
) -> dict[str, Any]:
    return {
        "name": name,
        "kind": kind,
        "pricing": pricing,
        "deployments": [{"provider": provider, "model": f"{name}-upstream"}],
    }


def _config(media: MediaUpstream, gemini: GeminiUpstream | None = None) -> dict[str, Any]:
    config: dict[str, Any] = {
        "providers": [
            {
                "name": "media",
                "kind": "openai",
                "base_url": media.base_url,
                "api_key_env": "MEDIA_KEY",
            }
        ],
        "models": [
            _model("whisper", "asr", {"per_audio_second": PER_SECOND}),
            _model("voice", "tts", {"per_1k_characters": PER_1K_CHARS}),
            _model("ranker", "rerank", {"per_search_unit": PER_SEARCH}),
            _model("painter", "image", {"per_image": PER_IMAGE}),
            _model("ranker-b", "rerank", {"per_search_unit": PER_SEARCH}),
        ],
    }
    if gemini is not None:
        config["providers"].append(
            {
                "name": "gemini",
                "kind": "gemini",
                "base_url": gemini.base_url,
                "api_key_env": "MEDIA_GEMINI_KEY",
            }
        )
        config["models"] += [
            _model("gemini-ears", "asr", {"per_audio_second": PER_SECOND}, "gemini"),
            _model("gemini-voice", "tts", {"per_1k_characters": PER_1K_CHARS}, "gemini"),
        ]
    return config


# The speech cache in the Redis every test shares: entries are keyed by text,
# and each test speaks text of its own.
ADMIN_KEY = "sb-media-admin-key-0123456789"
ENV = {
    "MEDIA_KEY": MEDIA_KEY,
    "MEDIA_GEMINI_KEY": GEMINI_UPSTREAM_KEY,
    "REDIS_URL": "redis://127.0.0.1:6379/7",
    "SWITCHBOARD_ADMIN_KEY": ADMIN_KEY,
}


@pytest.fixture(scope="module")
def stack(media: MediaUpstream, gemini: GeminiUpstream, start_stack: StartStack) -> Stack:
    return start_stack(_config(media, gemini), ENV)


@pytest.fixture
def client(stack: Stack) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{stack.edge_url}/v1", api_key="unused", max_retries=0) as c:
        yield c


def test_transcription_in_every_format_counted_in_seconds(
    client: openai.OpenAI, media: MediaUpstream, stack: Stack
) -> None:
    audio = tone_wav(1.5)
    before = media.calls["/v1/audio/transcriptions"]
    text = client.audio.transcriptions.create(model="whisper", file=("a.wav", audio, "audio/wav"))
    assert text.text == "heard 1.50 seconds"
    verbose = client.audio.transcriptions.create(
        model="whisper",
        file=("a.wav", audio, "audio/wav"),
        response_format="verbose_json",
        language="en",
        timestamp_granularities=["segment"],
    )
    assert verbose.duration == pytest.approx(1.5)
    plain = client.audio.transcriptions.create(
        model="whisper", file=("a.wav", audio, "audio/wav"), response_format="text"
    )
    assert plain.strip() == "heard 1.50 seconds"
    srt = client.audio.transcriptions.create(
        model="whisper", file=("a.wav", audio, "audio/wav"), response_format="srt"
    )
    assert "00:00:00,000 --> 00:00:01,500" in srt
    vtt = client.audio.transcriptions.create(
        model="whisper", file=("a.wav", audio, "audio/wav"), response_format="vtt"
    )
    assert vtt.startswith("WEBVTT")
    with pytest.warns(
        DeprecationWarning, match="deprecated"
    ):  # the SDK deprecates translations; still served
        english = client.audio.translations.create(
            model="whisper", file=("a.wav", audio, "audio/wav")
        )
    assert english.text == "heard 1.50 seconds"
    assert media.calls["/v1/audio/transcriptions"] - before == 5


def test_audio_that_cannot_be_measured_is_refused(client: openai.OpenAI, stack: Stack) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.audio.transcriptions.create(
            model="whisper", file=("a.mp3", b"ID3\x03not really audio", "audio/mpeg")
        )
    assert "WAV" in str(refused.value)


def test_speech_streams_and_a_repeat_comes_from_the_cache(
    client: openai.OpenAI, media: MediaUpstream, stack: Stack
) -> None:
    text = f"hello from the switchboard {uuid.uuid4().hex[:8]}"
    before = media.calls["/v1/audio/speech"]
    with client.audio.speech.with_streaming_response.create(
        model="voice", voice="alloy", input=text, response_format="wav"
    ) as response:
        assert response.headers["x-switchboard-cache"] == "miss"
        pieces = list(response.iter_bytes(1024))
    audio = b"".join(pieces)
    with wave.open(io.BytesIO(audio), "rb") as played:
        seconds = played.getnframes() / played.getframerate()
    assert seconds == pytest.approx(len(text) * SECONDS_PER_CHARACTER, abs=1e-3)
    assert len(pieces) > 1
    with client.audio.speech.with_streaming_response.create(
        model="voice", voice="alloy", input=text, response_format="wav"
    ) as again:
        assert again.headers["x-switchboard-cache"] == "hit"
        assert again.read() == audio
    # Another voice is another entry.
    client.audio.speech.create(model="voice", voice="echo", input=text, response_format="wav")
    assert media.calls["/v1/audio/speech"] - before == 2


def test_gemini_speaks_and_hears_through_the_sdk(
    client: openai.OpenAI, gemini: GeminiUpstream, stack: Stack
) -> None:
    """Speech from Gemini's L16 PCM, played back as WAV, then heard again by
    Gemini through a multimodal prompt: the same audio both ways."""
    text = f"gemini through the sdk {uuid.uuid4().hex[:8]}"
    with client.audio.speech.with_streaming_response.create(
        model="gemini-voice", voice="Kore", input=text, response_format="wav"
    ) as response:
        assert response.headers["content-type"] == "audio/wav"
        audio = response.read()
    with wave.open(io.BytesIO(audio), "rb") as played:
        seconds = played.getnframes() / played.getframerate()
    assert seconds == pytest.approx(len(text) * SECONDS_PER_CHARACTER, abs=1e-3)
    heard = client.audio.transcriptions.create(
        model="gemini-ears", file=("speech.wav", audio, "audio/wav")
    )
    assert heard.text == f"heard {seconds:.2f} seconds"
    assert gemini.requests[-1].path == "/v1beta/models/gemini-ears-upstream:generateContent"
    # Gemini makes PCM only: an mp3 is refused, not mislabelled.
    with pytest.raises(openai.BadRequestError) as refused:
        client.audio.speech.create(
            model="gemini-voice", voice="Kore", input=text, response_format="mp3"
        )
    assert "wav or pcm" in str(refused.value)


def test_rerank_over_plain_http(media: MediaUpstream, stack: Stack) -> None:
    query = f"solar power {uuid.uuid4().hex[:6]}"
    body = {
        "model": "ranker",
        "query": query,
        "documents": ["wind farms", "solar panels and power", {"text": "solar energy"}],
        "top_n": 2,
        "return_documents": True,
    }
    reply = httpx.post(f"{stack.edge_url}/v1/rerank", json=body, timeout=10)
    assert reply.status_code == 200, reply.text
    results = reply.json()["results"]
    assert [r["index"] for r in results] == [1, 2]
    assert results[0]["document"] == {"text": "solar panels and power"}
    assert results[0]["relevance_score"] > results[1]["relevance_score"]
    bare = httpx.post(
        f"{stack.edge_url}/v1/rerank",
        json={**body, "return_documents": False, "top_n": 1},
        timeout=10,
    ).json()
    assert len(bare["results"]) == 1
    assert "document" not in bare["results"][0]


def test_images_generate_counted_per_image(
    client: openai.OpenAI, media: MediaUpstream, stack: Stack
) -> None:
    images = client.images.generate(
        model="painter", prompt="a lighthouse", n=3, size="256x256", response_format="b64_json"
    )
    assert images.data is not None
    assert len(images.data) == 3
    assert base64.b64decode(images.data[0].b64_json or "").startswith(b"\x89PNG")
    urls = client.images.generate(model="painter", prompt="a harbour")
    assert urls.data is not None
    assert urls.data[0].url


def test_a_model_of_another_kind_is_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        client.images.generate(model="voice", prompt="a lighthouse")


def _summary_requests(edge: str) -> int:
    today = dt.datetime.now(dt.UTC).date().isoformat()
    reply = httpx.get(f"{edge}/v1/usage/summary", params={"start": today, "end": today})
    reply.raise_for_status()
    return int(reply.json()["total_requests"])


LEDGER = (
    "SELECT operation, audio_seconds, characters, search_units, images, cached, "
    "total_cost_nanos FROM switchboard.usage_events FINAL ORDER BY event_id"
)


def test_each_call_counted_once_in_its_unit(media: MediaUpstream, tmp_path: Path) -> None:
    """One of each call on a stack of its own, stopped before its ClickHouse is read."""
    text = f"counted once {uuid.uuid4().hex[:8]}"
    with running_stack(_config(media), tmp_path, ENV) as own:
        with openai.OpenAI(base_url=f"{own.edge_url}/v1", api_key="x", max_retries=0) as client:
            client.audio.transcriptions.create(
                model="whisper", file=("a.wav", tone_wav(2.25), "audio/wav")
            )
            for _ in range(2):
                client.audio.speech.create(model="voice", voice="alloy", input=text)
            client.images.generate(model="painter", prompt="a lighthouse", n=3)
        body = {"model": "ranker", "query": "q", "documents": ["a", "b"]}
        httpx.post(f"{own.edge_url}/v1/rerank", json=body, timeout=10).raise_for_status()
        deadline = time.monotonic() + 20
        while _summary_requests(own.edge_url) < 5:
            assert time.monotonic() < deadline, "usage did not reach ClickHouse in time"
            time.sleep(0.2)
        assert _summary_requests(own.edge_url) == 5
    ledger = clickhouse_connect.get_client(dsn=f"chdb://{own.home / 'clickhouse'}")
    try:
        rows = ledger.query(LEDGER).result_rows
    finally:
        ledger.close()
    paid_speech = round(len(text) * PER_1K_CHARS / 1000 * 1e9)
    by_kind = sorted(rows, key=lambda r: (r[0], r[5]))
    assert [r[0] for r in by_kind] == ["image", "rerank", "speech", "speech", "transcription"]
    image, rerank, speech, cached, heard = by_kind
    assert image[4] == 3
    assert image[6] == round(3 * PER_IMAGE * 1e9)
    assert rerank[3] == 1
    assert rerank[6] == round(PER_SEARCH * 1e9)
    assert (speech[2], speech[5], speech[6]) == (len(text), False, paid_speech)
    # The repeat: served from the cache, counted, at zero cost.
    assert (cached[2], cached[5], cached[6]) == (len(text), True, 0)
    assert heard[1] == pytest.approx(2.25)
    assert heard[6] == round(2.25 * PER_SECOND * 1e9)


def _set_default(stack: Stack, use: str, model: str) -> None:
    httpx.put(
        f"{stack.edge_url}/v1/admin/defaults/MODEL_USE_{use.upper()}",
        json={"model": model},
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
        timeout=10,
    ).raise_for_status()


def test_a_call_with_no_model_goes_to_the_default_for_its_use(stack: Stack) -> None:
    body = {"query": "solar", "documents": ["solar", "wind"]}
    refused = httpx.post(f"{stack.edge_url}/v1/rerank", json=body, timeout=10)
    assert refused.status_code == 400
    assert "/v1/admin/defaults/MODEL_USE_RERANK" in refused.json()["error"]["message"]
    for model in ("ranker", "ranker-b"):
        _set_default(stack, "rerank", model)
        served = ""
        deadline = time.monotonic() + 1.0
        while served != model:
            assert time.monotonic() < deadline, f"the default did not move to {model} in 1s"
            reply = httpx.post(f"{stack.edge_url}/v1/rerank", json=body, timeout=10)
            assert reply.status_code == 200, reply.text
            served = reply.headers["x-switchboard-model"]
    # Another use, named by a header: the knowledge base's default (unset) is refused.
    refused = httpx.post(
        f"{stack.edge_url}/v1/rerank",
        json=body,
        headers={"x-switchboard-use": "knowledge_base"},
        timeout=10,
    )
    assert refused.status_code == 400
    assert "'knowledge_base'" in refused.json()["error"]["message"]
    _set_default(stack, "knowledge_base", "ranker")
    deadline = time.monotonic() + 1.0
    while True:
        reply = httpx.post(
            f"{stack.edge_url}/v1/rerank",
            json=body,
            headers={"x-switchboard-use": "knowledge_base"},
            timeout=10,
        )
        if reply.status_code == 200:
            break
        assert time.monotonic() < deadline, reply.text
    assert reply.headers["x-switchboard-model"] == "ranker"
