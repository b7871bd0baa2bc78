"""The seed APIs' edge routes: document prefixes by default, moved, off, refused."""

from __future__ import annotations

from typing import cast

import pytest

from switchboard_stack import edge_surfaces


def _routes() -> dict[str, dict[str, str]]:
    """The prefix routes (Bisheng's exact paths carry no metadata)."""
    return {
        str(r["match"]["prefix"]): r["metadata"]["filter_metadata"][edge_surfaces.LUA_FILTER]  # type: ignore[index]
        for r in edge_surfaces.routes()
        if "metadata" in r
    }


def test_bisheng_paths_come_before_the_prefix_of_002(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SWITCHBOARD_BISHENG_API", raising=False)
    matches = [cast(dict[str, str], r["match"]) for r in edge_surfaces.routes()]
    first_prefix = matches.index({"prefix": "/api/v1/llm/"})
    exact = [m["path"] for m in matches[:first_prefix] if "path" in m]
    assert exact[:3] == ["/api/v1/llm", "/api/v1/llm/info", "/api/v1/llm/online"]
    assert {"/api/v1/llm/knowledge", "/api/v1/llm/assistant/llm_list", "/health"} <= set(exact)
    assert {"prefix": "/api/v2/assistant/chat/completions"} in matches[:first_prefix]
    # The workbench's speech, and the TTS links, whose answer names the host called.
    assert {"/api/v1/llm/workbench/asr", "/api/v1/llm/workbench/tts"} <= set(exact)
    assert {"prefix": "/api/v1/llm/workbench/tts/audio/"} in matches[:first_prefix]
    tts = next(
        r for r in edge_surfaces.routes() if r["match"] == {"path": "/api/v1/llm/workbench/tts"}
    )
    assert tts["request_headers_to_add"] == [
        {
            "header": {"key": "x-forwarded-host", "value": "%REQ(:authority)%"},
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
        }
    ]
    # 002's own paths under /api/v1/llm/ are not claimed.
    assert not [p for p in exact if p.split("/")[4:5] in (["generate"], ["models"], ["stats"])]
    monkeypatch.setenv("SWITCHBOARD_BISHENG_API", "off")
    assert all("metadata" in r for r in edge_surfaces.routes())


def test_defaults_are_the_documents_prefixes(monkeypatch: pytest.MonkeyPatch) -> None:
    for surface in edge_surfaces.SURFACES.values():
        monkeypatch.delenv(surface.env, raising=False)
    routes = _routes()
    assert list(routes) == ["/api/v1/llm/", "/api/llm/", "/api/v1/", "/api/"]
    assert routes["/api/llm/"]["owns"] == ",chat,config,generate,health,models,stats,"
    assert routes["/api/v1/llm/"]["canonical"] == "/api/llm/"
    # Seeds 003 and 004 share /api/v1 (004's models/{id}/…, system, monitoring, config, auth).
    assert routes["/api/v1/"]["owns"] == (",auth,chat,config,models,monitoring,system,vision,")
    assert routes["/api/"]["owns"] == ",auth,config,models,monitoring,system,"


def test_moved_and_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWITCHBOARD_QWEN_CHAT_PREFIX", "/qwen/")
    monkeypatch.setenv("SWITCHBOARD_MULTI_LLM_PREFIX", "off")
    monkeypatch.setenv("SWITCHBOARD_VISION_CHAT_PREFIX", "/vision,/caiqi/api/v1")
    monkeypatch.setenv("SWITCHBOARD_INFERENCE_MANAGER_PREFIX", "off")
    monkeypatch.setenv("SWITCHBOARD_INFERENCE_MANAGER_V1_PREFIX", "off")
    routes = _routes()
    assert routes["/qwen/"] == {
        "prefix": "/qwen/",
        "canonical": "/api/llm/",
        "owns": ",chat,models,",
    }
    assert set(routes) == {"/qwen/", "/vision/", "/caiqi/api/v1/"}


@pytest.mark.parametrize("prefix", ["/v1", "/v1/x", "/console", "api", "/a b", "/x,/v1/y"])
def test_unusable_prefixes_are_refused(monkeypatch: pytest.MonkeyPatch, prefix: str) -> None:
    monkeypatch.setenv("SWITCHBOARD_QWEN_CHAT_PREFIX", prefix)
    with pytest.raises(ValueError, match="SWITCHBOARD_QWEN_CHAT_PREFIX"):
        edge_surfaces.routes()


def test_two_apis_with_different_protos_cannot_share_a_prefix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SWITCHBOARD_VISION_CHAT_PREFIX", "/api/llm")
    with pytest.raises(ValueError, match="already serves"):
        edge_surfaces.routes()


def test_cors_has_no_origin_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SWITCHBOARD_CORS_ORIGINS", raising=False)
    assert edge_surfaces.cors_policy()["allow_origin_string_match"] == []
    monkeypatch.setenv("SWITCHBOARD_CORS_ORIGINS", "https://a.example, https://b.example")
    assert edge_surfaces.cors_policy()["allow_origin_string_match"] == [
        {"exact": "https://a.example"},
        {"exact": "https://b.example"},
    ]
