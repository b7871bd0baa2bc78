"""A client of the Bisheng LLM API (seed document 000 names the routes; the field
names are Bisheng's own schemas: LLMServerCreateReq, LLMServerInfo, the
default-model configs, WSModel), with plain httpx: model servers and their
models by integer ids, a model switched offline and back, the five
default-model configs, the assistant's model list, the OpenAI-compatible v2
chat (unary and streamed), the workbench's speech (ASR of an uploaded WAV; TTS
answered with a signed, expiring link to the audio, a repeat served from the
cache), /health, and errors in the envelope {status_code, status_message, data}."""

from __future__ import annotations

import io
import json
import time
import uuid
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import clickhouse_connect
import httpx
import pytest

from switchboard_router.surfaces.bisheng_audio import audio_path, url_key
from switchboard_stack.harness import Stack, running_stack
from tests.conftest import eventually
from tests.e2e.seeds.conftest import SPEECH_MODELS, gemini_provider, speech_models
from tests.e2e.seeds.keys import ADMIN_KEY, CLIENT_KEY, GEMINI_KEY
from tests.support.gemini_upstream import GeminiUpstream
from tests.support.media_upstream import SECONDS_PER_CHARACTER, tone_wav
from tests.support.openai_upstream import OpenAIUpstream

pytestmark = pytest.mark.e2e


def _ok(reply: httpx.Response) -> Any:
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["status_code"] == 200, body
    assert body["status_message"] == "SUCCESS", body
    return body["data"]


def _refused(reply: httpx.Response, status: int) -> str:
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert body["status_code"] == status, body
    assert body["data"] is None, body
    message = body["status_message"]
    assert isinstance(message, str)
    assert message
    return message


@pytest.fixture
def client(stack: Stack) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {CLIENT_KEY}"}
    with httpx.Client(base_url=stack.edge_url, headers=headers, timeout=30) as c:
        yield c


@pytest.fixture
def admin(stack: Stack) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(base_url=stack.edge_url, headers=headers, timeout=30) as c:
        yield c


@pytest.fixture
def server(admin: httpx.Client, upstream: OpenAIUpstream) -> Iterator[dict[str, Any]]:
    """A server added through POST /api/v1/llm, deleted afterwards."""
    created = _ok(
        admin.post(
            "/api/v1/llm",
            json={
                "name": "毕昇测试服务",
                "description": "loopback",
                "type": "qwen",
                "limit_flag": False,
                "limit": 0,
                "config": {
                    "openai_api_base": upstream.base_url,
                    "api_key_env": "SEEDS_PROVIDER_KEY",
                },
                "models": [
                    {"name": "Bisheng chat", "model_name": "bs-chat", "model_type": "llm"},
                    {"name": "Bisheng embed", "model_name": "bs-embed", "model_type": "embedding"},
                ],
            },
        )
    )
    yield created
    # A default model is not deleted: the stack's own defaults back first.
    servers = _ok(admin.get("/api/v1/llm"))
    stack_models = {m["model_name"]: m["id"] for s in servers for m in s["models"]}
    turbo, embed = stack_models["qwen-turbo-up"], stack_models["emb-up"]
    _ok(admin.post("/api/v1/llm/knowledge", json={"embedding_model_id": embed,
                                                  "source_model_id": turbo}))  # fmt: skip
    for use in ("evaluation", "workflow"):
        _ok(admin.post(f"/api/v1/llm/{use}", json={"model_id": turbo}))
    _ok(admin.post("/api/v1/llm/assistant", json={"llm_list": [{"model_id": turbo,
                                                                 "default": True}]}))  # fmt: skip
    assert _ok(admin.request("DELETE", "/api/v1/llm", json={"server_id": created["id"]})) is None
    assert created["id"] not in [s["id"] for s in _ok(admin.get("/api/v1/llm"))]


def _last_model(upstream: OpenAIUpstream) -> object:
    """The model the upstream was last asked for."""
    sent = upstream.requests[-1].json
    assert isinstance(sent, dict)
    return sent["model"]


def _model(server: dict[str, Any], model_name: str) -> dict[str, Any]:
    return next(m for m in server["models"] if m["model_name"] == model_name)


def test_servers_are_listed_created_read_updated_and_deleted(
    client: httpx.Client, admin: httpx.Client, server: dict[str, Any]
) -> None:
    assert isinstance(server["id"], int)
    assert server["id"] > 0
    assert server["name"] == "毕昇测试服务"
    assert server["type"] == "qwen"
    assert server["config"]["api_key_env"] == "SEEDS_PROVIDER_KEY"
    chat = _model(server, "bs-chat")
    assert chat["model_type"] == "llm"
    assert chat["online"] is True
    assert chat["server_id"] == server["id"]
    assert chat["name"] == "Bisheng chat"
    assert _model(server, "bs-embed")["model_type"] == "embedding"

    listed = _ok(client.get("/api/v1/llm"))
    ids = [s["id"] for s in listed]
    assert server["id"] in ids
    # Every server (the config file's too) has its own positive integer id.
    assert len(set(ids)) == len(ids)
    assert all(isinstance(i, int) and i > 0 for i in ids)
    # The stack's own providers are servers too, with their models.
    loopback = next(s for s in listed if s["name"] == "loopback")
    assert {"qwen-turbo-up", "qwen-plus-up"} <= {m["model_name"] for m in loopback["models"]}

    one = _ok(admin.get("/api/v1/llm/info", params={"server_id": server["id"]}))
    assert one["id"] == server["id"]
    assert len(one["models"]) == 2

    # PUT replaces the model list: rename one, drop the other, add a third.
    updated = _ok(
        admin.put(
            "/api/v1/llm",
            json={
                "id": server["id"],
                "name": "毕昇测试服务",
                "description": "changed",
                "type": "qwen",
                "config": one["config"],
                "models": [
                    {**chat, "name": "Renamed chat"},
                    {"name": "Rerank", "model_name": "bs-rerank", "model_type": "rerank"},
                ],
            },
        )
    )
    assert updated["description"] == "changed"
    assert {m["model_name"] for m in updated["models"]} == {"bs-chat", "bs-rerank"}
    renamed = _model(updated, "bs-chat")
    assert renamed["id"] == chat["id"]
    assert renamed["name"] == "Renamed chat"

    _refused(admin.get("/api/v1/llm/info", params={"server_id": 999999}), 404)


def test_a_literal_key_is_refused_and_nothing_is_created(
    admin: httpx.Client, upstream: OpenAIUpstream
) -> None:
    before = _ok(admin.get("/api/v1/llm"))
    message = _refused(
        admin.post(
            "/api/v1/llm",
            json={
                "name": "with-key",
                "type": "openai",
                "config": {"openai_api_base": upstream.base_url, "openai_api_key": "sk-x"},
                "models": [],
            },
        ),
        400,
    )
    assert "api_key_env" in message
    assert len(_ok(admin.get("/api/v1/llm"))) == len(before)


def test_writes_need_the_admin_key(client: httpx.Client) -> None:
    """Bisheng's admin routes take the admin key; a client key is not one (401)."""
    _refused(client.post("/api/v1/llm", json={"name": "x", "type": "openai"}), 401)
    _refused(client.post("/api/v1/llm/online", json={"model_id": 1, "online": False}), 401)
    _refused(client.post("/api/v1/llm/evaluation", json={"model_id": 1}), 401)
    with httpx.Client(base_url=str(client.base_url), timeout=30) as anonymous:
        _refused(anonymous.get("/api/v1/llm"), 401)


def test_a_model_goes_offline_and_back(
    client: httpx.Client, admin: httpx.Client, server: dict[str, Any]
) -> None:
    chat = _model(server, "bs-chat")
    off = _ok(admin.post("/api/v1/llm/online", json={"model_id": chat["id"], "online": False}))
    assert off["id"] == chat["id"]
    assert off["online"] is False

    def offline() -> bool:
        reply = client.post(
            "/api/v2/assistant/chat/completions",
            json={"model": "bs-chat", "messages": [{"role": "user", "content": "hi"}]},
        )
        return reply.status_code >= 400

    eventually(offline, what="the offline model refused")
    on = _ok(admin.post("/api/v1/llm/online", json={"model_id": chat["id"], "online": True}))
    assert on["online"] is True
    _refused(admin.post("/api/v1/llm/online", json={"model_id": chat["id"]}), 400)


def test_the_default_model_configs(
    client: httpx.Client, admin: httpx.Client, server: dict[str, Any]
) -> None:
    chat, embed = _model(server, "bs-chat"), _model(server, "bs-embed")
    listed = _ok(client.get("/api/v1/llm"))
    turbo = next(m for s in listed for m in s["models"] if m["model_name"] == "qwen-turbo-up")

    knowledge = _ok(
        admin.post(
            "/api/v1/llm/knowledge",
            json={"embedding_model_id": embed["id"], "source_model_id": chat["id"],
                  "abstract_enabled": True},
        )
    )  # fmt: skip
    assert knowledge["embedding_model_id"] == embed["id"]
    assert _ok(client.get("/api/v1/llm/knowledge"))["source_model_id"] == chat["id"]
    # A default model is not deleted with its server.
    message = _refused(
        admin.request("DELETE", "/api/v1/llm", json={"server_id": server["id"]}), 400
    )
    assert "default" in message
    # An embedding default must be an embedding model: nothing changes.
    _refused(admin.post("/api/v1/llm/knowledge", json={"embedding_model_id": chat["id"]}), 400)
    _refused(admin.post("/api/v1/llm/knowledge", json={"source_model_id": 999999}), 400)

    for use in ("evaluation", "workflow"):
        assert _ok(admin.post(f"/api/v1/llm/{use}", json={"model_id": chat["id"]})) == {
            "model_id": chat["id"]
        }
        assert _ok(client.get(f"/api/v1/llm/{use}"))["model_id"] == chat["id"]

    assistant = _ok(
        admin.post(
            "/api/v1/llm/assistant",
            json={"llm_list": [{"model_id": chat["id"], "default": True}], "auto_llm": None},
        )
    )
    items = {i["model_id"]: i for i in assistant["llm_list"]}
    assert items[chat["id"]]["default"] is True
    assert items[turbo["id"]]["default"] is False
    assert _ok(client.get("/api/v1/llm/assistant")) == assistant

    # The workbench's task model is the chat default (seed 003's active model):
    # set to the new model, then back to the stack's.
    for model in (chat, turbo):
        workbench = _ok(
            admin.post(
                "/api/v1/llm/workbench",
                json={"task_model": {"id": str(model["id"]), "name": model["name"]}},
            )
        )
        assert workbench["task_model"]["id"] == str(model["id"])
    assert _ok(client.get("/api/v1/llm/workbench"))["task_model"]["id"] == str(turbo["id"])

    # Only the online chat models are offered to assistants.
    offered = _ok(client.get("/api/v1/llm/assistant/llm_list"))
    names = {m["model_name"] for s in offered for m in s["models"]}
    assert "bs-chat" in names
    assert "bs-embed" not in names


def test_v2_chat_completions_unary_streamed_and_by_default(
    client: httpx.Client, admin: httpx.Client, server: dict[str, Any], upstream: OpenAIUpstream
) -> None:
    messages = [{"role": "user", "content": "hello bisheng"}]

    def answered() -> dict[str, Any]:
        reply = client.post(
            "/api/v2/assistant/chat/completions", json={"model": "bs-chat", "messages": messages}
        )
        assert reply.status_code == 200, reply.text
        body: dict[str, Any] = reply.json()
        return body

    body = eventually(answered, what="the new model routed")
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"]
    assert _last_model(upstream) == "bs-chat"

    with client.stream(
        "POST",
        "/api/v2/assistant/chat/completions",
        json={"model": "bs-chat", "messages": messages, "stream": True},
    ) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in reply.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert (
        "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        == body["choices"][0]["message"]["content"]
    )

    # No model: the assistant default.
    chat = _model(server, "bs-chat")
    _ok(admin.post("/api/v1/llm/assistant", json={"llm_list": [{"model_id": chat["id"],
                                                                  "default": True}]}))  # fmt: skip

    def by_default() -> bool:
        reply = client.post("/api/v2/assistant/chat/completions", json={"messages": messages})
        return reply.status_code == 200 and _last_model(upstream) == "bs-chat"

    eventually(by_default, what="the assistant default served")


def test_health_and_the_routes_of_002_beside(client: httpx.Client) -> None:
    health = client.get("/health")
    assert health.status_code == 200
    assert health.json() == {"status": "OK"}
    # Seed 002 keeps its paths under /api/v1/llm/.
    reply = client.get("/api/v1/llm/health")
    assert reply.status_code == 200
    assert "models" in reply.json()
    assert client.get("/api/v1/llm/models").status_code == 200


# -- the workbench's speech ------------------------------------------------------


def _workbench_speech(admin: httpx.Client) -> None:
    """The workbench's ASR and TTS models: the stack's Gemini ones, by Bisheng's config."""
    servers = _ok(admin.get("/api/v1/llm"))
    models = {m["model_name"]: m for s in servers for m in s["models"]}
    asr, tts = (models[upstream] for _, _, upstream, _ in SPEECH_MODELS)
    assert (asr["model_type"], tts["model_type"]) == ("asr", "tts")
    config = _ok(
        admin.post(
            "/api/v1/llm/workbench",
            json={
                "asr_model": {"id": str(asr["id"]), "name": asr["name"]},
                "tts_model": {"id": str(tts["id"]), "name": tts["name"]},
            },
        )
    )
    assert config["asr_model"]["id"] == str(asr["id"])
    assert config["tts_model"]["id"] == str(tts["id"])


def _speak(client: httpx.Client, text: str) -> tuple[str, httpx.Response]:
    reply = client.post("/api/v1/llm/workbench/tts", json={"text": text})
    url = _ok(reply)
    assert isinstance(url, str)
    return url, reply


def _seconds(audio: bytes) -> float:
    assert audio[:4] == b"RIFF"
    assert audio[8:12] == b"WAVE"
    with wave.open(io.BytesIO(audio), "rb") as played:
        return played.getnframes() / played.getframerate()


def test_workbench_asr_transcribes_an_uploaded_wav(
    client: httpx.Client, admin: httpx.Client, gemini: GeminiUpstream
) -> None:
    _workbench_speech(admin)
    audio = tone_wav(1.75)
    reply = client.post(
        "/api/v1/llm/workbench/asr", files={"file": ("speech.wav", audio, "audio/wav")}
    )
    assert _ok(reply) == "heard 1.75 seconds"
    assert gemini.requests[-1].path == "/v1beta/models/gemini-2.5-flash:generateContent"
    # Audio whose length cannot be measured, and no upload at all.
    not_wav = {"file": ("a.mp3", b"ID3\x03not really audio", "audio/mpeg")}
    assert "WAV" in _refused(client.post("/api/v1/llm/workbench/asr", files=not_wav), 400)
    no_file = client.post("/api/v1/llm/workbench/asr", files={"other": ("x.txt", b"x")})
    assert "file" in _refused(no_file, 400)


def test_workbench_tts_answers_a_signed_link_to_playable_audio(
    stack: Stack, client: httpx.Client, admin: httpx.Client, gemini: GeminiUpstream
) -> None:
    _workbench_speech(admin)
    text = f"毕昇 workbench speech {uuid.uuid4().hex[:8]}"
    url, reply = _speak(client, text)
    assert reply.headers["x-switchboard-cache"] == "miss"
    link = httpx.URL(url)
    assert f"{link.scheme}://{link.netloc.decode()}" == stack.edge_url
    assert link.path.startswith("/api/v1/llm/workbench/tts/audio/")
    # The link is the credential: no key goes with it.
    played = httpx.get(url, timeout=10)
    assert played.status_code == 200, played.text
    assert played.headers["content-type"] == "audio/wav"
    assert _seconds(played.content) == pytest.approx(len(text) * SECONDS_PER_CHARACTER, abs=1e-3)
    assert gemini.requests[-1].path.endswith("gemini-2.5-flash-preview-tts:streamGenerateContent")

    # The same text again: the same audio, from the cache, no upstream call.
    served = len(gemini.served)
    again, reply = _speak(client, text)
    assert reply.headers["x-switchboard-cache"] == "hit"
    assert httpx.get(again, timeout=10).content == played.content
    assert len(gemini.served) == served

    forged = link.copy_set_param("signature", "A" * 43)
    assert "signature" in _refused(httpx.get(forged, timeout=10), 403)
    later = link.copy_set_param("expires", int(link.params["expires"]) + 3600)
    assert "signature" in _refused(httpx.get(later, timeout=10), 403)
    # A link signed as the router signs them, but past its expiry (the key is
    # derived from the admin key, which this test holds).
    key = link.path.rsplit("/", 1)[1]
    expired = audio_path(url_key(ADMIN_KEY), key, int(time.time()) - 1)
    assert "expired" in _refused(httpx.get(stack.edge_url + expired, timeout=10), 403)
    unknown = audio_path(url_key(ADMIN_KEY), "0" * 64, int(time.time()) + 60)
    _refused(httpx.get(stack.edge_url + unknown, timeout=10), 404)
    _refused(client.post("/api/v1/llm/workbench/tts", json={"text": ""}), 400)


LEDGER = (
    "SELECT operation, surface, audio_seconds, characters, cached, total_cost_nanos "
    "FROM switchboard.usage_events FINAL ORDER BY operation, cached"
)


def test_workbench_speech_is_counted_once_and_a_cached_repeat_costs_nothing(
    gemini: GeminiUpstream, tmp_path: Path
) -> None:
    """On a stack of its own with no speech defaults, stopped before its
    ClickHouse is read (the embedded engine allows one opener at a time)."""
    config = {"providers": [gemini_provider(gemini)], "models": speech_models()}
    env = {"SEEDS_GEMINI_KEY": GEMINI_KEY, "SWITCHBOARD_ADMIN_KEY": ADMIN_KEY}
    text = f"counted once {uuid.uuid4().hex[:8]}"
    with running_stack(config, tmp_path, env) as own:
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        with httpx.Client(base_url=own.edge_url, headers=headers, timeout=30) as admin:
            # No workbench TTS model yet: refused, saying how to set one.
            assert "default" in _refused(admin.post("/api/v1/llm/workbench/tts",
                                                    json={"text": text}), 400)  # fmt: skip
            _workbench_speech(admin)
            served = len(gemini.served)
            admin.post(
                "/api/v1/llm/workbench/asr", files={"file": ("a.wav", tone_wav(2.5), "audio/wav")}
            ).raise_for_status()
            for _ in range(2):
                _speak(admin, text)
            assert len(gemini.served) - served == 2
            today = time.strftime("%Y-%m-%d", time.gmtime())

            def counted() -> int:
                summary = admin.get("/v1/usage/summary", params={"start": today, "end": today})
                return int(summary.json()["total_requests"])

            eventually(lambda: counted() >= 3, timeout=20, what="usage in ClickHouse")
            assert counted() == 3
    ledger = clickhouse_connect.get_client(dsn=f"chdb://{own.home / 'clickhouse'}")
    try:
        rows = ledger.query(LEDGER).result_rows
    finally:
        ledger.close()
    speech, cached, heard = sorted(rows, key=lambda r: (r[0], r[4]))
    assert [r[1] for r in rows] == ["bisheng"] * 3
    assert (speech[0], speech[3], speech[4]) == ("speech", len(text), False)
    assert speech[5] == round(len(text) * 0.015 / 1000 * 1e9)
    assert (cached[0], cached[3], cached[4], cached[5]) == ("speech", len(text), True, 0)
    assert heard[0] == "transcription"
    assert heard[2] == pytest.approx(2.5)
    assert heard[5] == round(2.5 * 0.0001 * 1e9)
