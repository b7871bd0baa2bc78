"""A loopback upstream for the media kinds, speaking the wire formats Switchboard
calls: OpenAI's /v1/audio/transcriptions, /v1/audio/translations (multipart),
/v1/audio/speech (audio streamed in chunks) and /v1/images/generations, and the
Cohere/Jina /v1/rerank that vLLM and llama.cpp serve.

Deterministic answers, so tests can compare what came back with what was sent:
- a transcription is "heard <seconds> seconds" (seconds measured from the WAV
  with the `wave` module, 2 decimals), in the requested response_format;
- speech is a real WAV (16 kHz mono 16-bit, a 440 Hz tone) lasting
  SECONDS_PER_CHARACTER per input character, sent in CHUNK_BYTES pieces;
- rerank scores a document by the share of the query's words it contains;
- images are a 1x1 PNG (b64_json) or a URL naming the image's index.
`calls` counts each route's answered requests: the ground truth for usage.
"""

from __future__ import annotations

import asyncio
import base64
import io
import math
import struct
import wave
from collections import Counter
from typing import Any

from aiohttp import web

SECONDS_PER_CHARACTER = 0.05
SAMPLE_RATE = 16_000
CHUNK_BYTES = 4096
# The smallest valid PNG: 1x1, one grey pixel.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABSK+kcQAAAABJRU5ErkJggg=="
)


def tone_wav(seconds: float, rate: int = SAMPLE_RATE) -> bytes:
    """A mono 16-bit WAV of a 440 Hz tone lasting `seconds`."""
    frames = round(seconds * rate)
    samples = (int(8000 * math.sin(2 * math.pi * 440 * i / rate)) for i in range(frames))
    out = io.BytesIO()
    with wave.open(out, "wb") as audio:
        audio.setnchannels(1)
        audio.setsampwidth(2)
        audio.setframerate(rate)
        audio.writeframes(b"".join(struct.pack("<h", s) for s in samples))
    return out.getvalue()


def wav_duration(data: bytes) -> float:
    with wave.open(io.BytesIO(data), "rb") as audio:
        return audio.getnframes() / audio.getframerate()


def _timestamp(seconds: float, separator: str) -> str:
    whole = int(seconds)
    millis = round((seconds - whole) * 1000)
    return f"{whole // 3600:02d}:{whole // 60 % 60:02d}:{whole % 60:02d}{separator}{millis:03d}"


class MediaUpstream:
    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        self.calls: Counter[str] = Counter()
        self.requests: list[dict[str, Any]] = []
        self.base_url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application(client_max_size=32 * 1024 * 1024)
        app.router.add_post("/v1/audio/transcriptions", self._transcribe)
        app.router.add_post("/v1/audio/translations", self._transcribe)
        app.router.add_post("/v1/audio/speech", self._speech)
        app.router.add_post("/v1/rerank", self._rerank)
        app.router.add_post("/v1/images/generations", self._images)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runner = runner
        port = runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}/v1"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> MediaUpstream:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def _authorised(self, request: web.Request) -> bool:
        return request.headers.get("authorization") == f"Bearer {self.api_key}"

    @staticmethod
    def _error(status: int, message: str) -> web.Response:
        body = {"error": {"message": message, "type": "invalid_request_error", "code": None}}
        return web.json_response(body, status=status)

    async def _transcribe(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return self._error(401, "bad key")
        form = await request.post()
        upload = form.get("file")
        if not isinstance(upload, web.FileField):
            return self._error(400, "file is required")
        fields = {k: str(v) for k, v in form.items() if k != "file"}
        self.requests.append({"path": request.path, **fields})
        seconds = wav_duration(upload.file.read())
        text = f"heard {seconds:.2f} seconds"
        fmt = fields.get("response_format", "json")
        self.calls[request.path] += 1
        if fmt == "text":
            return web.Response(text=text + "\n", content_type="text/plain")
        if fmt in ("srt", "vtt"):
            sep = "," if fmt == "srt" else "."
            cue = f"{_timestamp(0, sep)} --> {_timestamp(seconds, sep)}\n{text}\n"
            subtitles = f"1\n{cue}" if fmt == "srt" else f"WEBVTT\n\n{cue}"
            return web.Response(text=subtitles, content_type="text/plain")
        if fmt == "verbose_json":
            task = "translate" if request.path.endswith("translations") else "transcribe"
            segment = {"id": 0, "start": 0.0, "end": seconds, "text": text}
            verbose = {
                "task": task,
                "language": fields.get("language") or "english",
                "duration": seconds,
                "text": text,
                "segments": [segment],
            }
            return web.json_response(verbose)
        return web.json_response({"text": text})

    async def _speech(self, request: web.Request) -> web.StreamResponse:
        if not self._authorised(request):
            return self._error(401, "bad key")
        body = await request.json()
        self.requests.append({"path": request.path, **body})
        audio = tone_wav(len(body["input"]) * SECONDS_PER_CHARACTER)
        fmt = body.get("response_format") or "mp3"
        content_type = "audio/wav" if fmt == "wav" else f"audio/{fmt}"
        response = web.StreamResponse(headers={"content-type": content_type})
        await response.prepare(request)
        for start in range(0, len(audio), CHUNK_BYTES):
            await response.write(audio[start : start + CHUNK_BYTES])
            # Let each piece leave as its own chunk, as a synthesiser's would.
            await asyncio.sleep(0)
        await response.write_eof()
        self.calls[request.path] += 1
        return response

    async def _rerank(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return self._error(401, "bad key")
        body = await request.json()
        self.requests.append({"path": request.path, **body})
        words = set(body["query"].lower().split())
        documents = [d["text"] if isinstance(d, dict) else d for d in body["documents"]]
        scored = [
            (len(words & set(doc.lower().split())) / max(len(words), 1), i)
            for i, doc in enumerate(documents)
        ]
        scored.sort(key=lambda pair: (-pair[0], pair[1]))
        top_n = body.get("top_n") or len(scored)
        results = []
        for score, index in scored[:top_n]:
            result: dict[str, Any] = {"index": index, "relevance_score": score}
            if body.get("return_documents"):
                result["document"] = {"text": documents[index]}
            results.append(result)
        tokens = len(body["query"].split()) + sum(len(d.split()) for d in documents)
        self.calls[request.path] += 1
        return web.json_response(
            {
                "id": "rerank-loopback",
                "model": body["model"],
                "results": results,
                "usage": {"total_tokens": tokens},
            }
        )

    async def _images(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return self._error(401, "bad key")
        body = await request.json()
        self.requests.append({"path": request.path, **body})
        n = body.get("n") or 1
        b64 = body.get("response_format") == "b64_json"
        data = [
            {"b64_json": base64.b64encode(PNG).decode()}
            if b64
            else {"url": f"https://images.loopback.invalid/{i}.png"}
            for i in range(n)
        ]
        self.calls[request.path] += 1
        return web.json_response({"created": 1_700_000_000, "data": data})
