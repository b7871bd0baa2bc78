"""The config file: a valid one loads, every mistake fails with its field path."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Any

import pytest

from switchboard_common.config import ConfigError, KeyConfig, load_config, parse_config

REPO_ROOT = Path(__file__).resolve().parents[2]
SHA = "a" * 64


def _valid() -> dict[str, Any]:
    return {
        "providers": [
            {"name": "mock", "kind": "mock"},
            {
                "name": "oa",
                "kind": "openai",
                "base_url": "https://api.example.test/v1",
                "api_key_env": "OA_KEY",
                "timeout_s": 30,
                "options": {"dialect": "dashscope"},
            },
        ],
        "models": [
            {
                "name": "chat-a",
                "aliases": ["a"],
                "deployments": [
                    {"provider": "mock", "model": "echo", "weight": 3},
                    {"provider": "oa", "model": "gpt", "weight": 1, "priority": 2},
                ],
                "fallbacks": ["chat-b"],
                "pricing": {"input_per_1k": 0.5, "output_per_1k": 1.5},
                "description": "first",
            },
            {"name": "chat-b", "deployments": [{"provider": "mock", "model": "echo"}]},
            {
                "name": "emb",
                "kind": "embedding",
                "deployments": [{"provider": "mock", "model": "embed"}],
            },
        ],
        "keys": [
            {"name": "team-a", "key_env": "TEAM_A_KEY", "models": ["chat-a"], "rpm": 60},
            {"name": "team-b", "key_sha256": SHA},
        ],
    }


def _with(path: str, value: object) -> dict[str, Any]:
    """The valid config with the value at a dotted path (list indexes as digits) replaced."""
    data = copy.deepcopy(_valid())
    *parents, last = path.split(".")
    node: Any = data
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    if last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return data


def test_valid_config_round_trips_every_field() -> None:
    config = parse_config(_valid())

    assert [p.name for p in config.providers] == ["mock", "oa"]
    oa = config.provider("oa")
    assert oa is not None
    assert oa.base_url == "https://api.example.test/v1"
    assert oa.timeout_s == 30
    assert oa.connect_timeout_s == 5.0
    assert oa.options == {"dialect": "dashscope"}
    assert config.provider("nope") is None

    chat_a = config.models[0]
    assert chat_a.kind == "chat"
    assert chat_a.aliases == ["a"]
    assert [(d.provider, d.model, d.weight, d.priority) for d in chat_a.deployments] == [
        ("mock", "echo", 3, 0),
        ("oa", "gpt", 1, 2),
    ]
    assert chat_a.fallbacks == ["chat-b"]
    assert chat_a.pricing.input_per_1k == 0.5
    assert chat_a.pricing.currency == "USD"
    assert chat_a.online is True
    assert config.models[2].kind == "embedding"

    assert config.keys is not None
    assert config.keys[0].models == ["chat-a"]
    assert config.keys[0].rpm == 60
    assert config.keys[1].models is None
    # Dumping and re-parsing yields an equal config.
    assert parse_config(config.model_dump()) == config


@pytest.mark.parametrize("data", [None, {}])
def test_empty_config_is_valid_and_open(data: dict[str, object] | None) -> None:
    config = parse_config(data)
    assert config.providers == []
    assert config.models == []
    assert config.keys is None


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        pytest.param(
            "models.0.deployments.1.provider",
            "ghost",
            "models[0].deployments[1].provider: unknown provider 'ghost'",
            id="unknown-provider-in-deployment",
        ),
        pytest.param(
            "models.0.fallbacks",
            ["ghost"],
            "models[0].fallbacks: unknown model 'ghost'",
            id="unknown-fallback",
        ),
        pytest.param(
            "models.1.name", "chat-a", "models: duplicate name 'chat-a'", id="duplicate-model-name"
        ),
        pytest.param("models.1.aliases", ["a"], "models: duplicate name 'a'", id="duplicate-alias"),
        pytest.param(
            "models.1.aliases",
            ["chat-a"],
            "models: duplicate name 'chat-a'",
            id="alias-shadows-model-name",
        ),
        pytest.param(
            "providers.1.name", "mock", "providers: duplicate name 'mock'", id="duplicate-provider"
        ),
        pytest.param(
            "keys.1.name", "team-a", "keys: duplicate name 'team-a'", id="duplicate-key-name"
        ),
        pytest.param(
            "keys.0.models",
            ["ghost"],
            "keys[0].models: unknown model 'ghost'",
            id="unknown-key-model",
        ),
        pytest.param(
            "keys.0.models",
            ["a"],
            "keys[0].models: unknown model 'a'",
            id="key-model-must-be-a-name-not-alias",
        ),
        pytest.param(
            "keys.0",
            {"name": "both", "key_env": "X", "key_sha256": SHA},
            "keys.0: Value error, exactly one of key_env or key_sha256 is required",
            id="key-with-both-secrets",
        ),
        pytest.param(
            "keys.0",
            {"name": "neither"},
            "keys.0: Value error, exactly one of key_env or key_sha256 is required",
            id="key-with-no-secret",
        ),
        pytest.param(
            "keys.1.key_sha256", "A" * 64, "keys.1.key_sha256: String should match", id="sha-upper"
        ),
        pytest.param(
            "keys.1.key_sha256", "ab" * 10, "keys.1.key_sha256: String should match", id="sha-short"
        ),
        pytest.param(
            "keys.0.rpm", -1, "keys.0.rpm: Input should be greater than or equal to 0", id="rpm<0"
        ),
        pytest.param(
            "providers.1",
            {"name": "oa", "kind": "openai"},
            "providers.1: Value error, base_url is required for kind 'openai'",
            id="openai-without-base-url",
        ),
        pytest.param(
            "providers.0.kind", "cohere", "providers.0.kind: Input should be", id="bad-kind"
        ),
        pytest.param(
            "providers.1.timeout_s",
            0,
            "providers.1.timeout_s: Input should be greater than 0",
            id="zero-timeout",
        ),
        pytest.param(
            "models.0.deployments",
            [],
            "models[0].deployments: a model needs at least one",
            id="no-deployments",
        ),
        pytest.param(
            "models.0.deployments.0.weight",
            -1,
            "models.0.deployments.0.weight: Input should be greater than or equal to 0",
            id="negative-weight",
        ),
        pytest.param(
            "models.0.kind",
            "video",
            "models.0.kind: Input should be 'chat', 'embedding', 'asr', 'tts', 'rerank' or 'image'",
            id="bad-model-kind",
        ),
    ],
)
def test_invalid_config_names_the_field(path: str, value: object, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_with(path, value), source="cfg.yaml")
    message = str(info.value)
    assert message.startswith("cfg.yaml: ")
    assert expected in message


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("colour", "colour"),
        ("providers.0.colour", "providers.0.colour"),
        ("models.0.colour", "models.0.colour"),
        ("models.0.deployments.0.colour", "models.0.deployments.0.colour"),
        ("models.0.pricing.colour", "models.0.pricing.colour"),
        ("keys.0.colour", "keys.0.colour"),
    ],
)
def test_unknown_field_is_rejected_with_its_path(path: str, field: str) -> None:
    with pytest.raises(ConfigError, match=rf"{field}: Extra inputs are not permitted"):
        parse_config(_with(path, "blue"))


def test_config_error_lists_every_problem() -> None:
    data = _with("providers.0.kind", "nope")
    data["models"][1]["colour"] = "red"
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    message = str(info.value)
    assert "providers.0.kind" in message
    assert "models.1.colour" in message


def test_load_config_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=r"cannot read config .*nope\.yaml: No such file"):
        load_config(missing)


def test_load_config_directory_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path)


def test_load_config_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("providers: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML"):
        load_config(path)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_load_config_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    path = tmp_path / "list.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"list\.yaml: the top level must be a mapping"):
        load_config(path)


def test_load_config_empty_file_is_an_empty_config(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing yet\n", encoding="utf-8")
    assert load_config(path).models == []


def test_load_config_validation_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text("providers:\n  - {name: m, kind: mock, colour: red}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"typo\.yaml: providers\.0\.colour"):
        load_config(path)


def test_shipped_default_config_loads() -> None:
    config = load_config(REPO_ROOT / "config" / "switchboard.yaml")
    names = {m.name for m in config.models}
    assert {"mock-chat", "mock-embedding"} <= names
    assert config.keys is None
    for model in config.models:
        for dep in model.deployments:
            assert config.provider(dep.provider) is not None


def test_key_secret_sha256_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    key = KeyConfig(name="k", key_env="SB_TEST_KEY")
    monkeypatch.setenv("SB_TEST_KEY", "s3cret")
    assert key.secret_sha256() == hashlib.sha256(b"s3cret").hexdigest()


@pytest.mark.parametrize("value", [None, ""])
def test_key_secret_sha256_none_when_env_unset_or_empty(
    monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv("SB_TEST_KEY", raising=False)
    else:
        monkeypatch.setenv("SB_TEST_KEY", value)
    assert KeyConfig(name="k", key_env="SB_TEST_KEY").secret_sha256() is None


def test_key_secret_sha256_literal_hash_ignores_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SB_TEST_KEY", "ignored")
    assert KeyConfig(name="k", key_sha256=SHA).secret_sha256() == SHA


def test_provider_api_key_reads_env(monkeypatch: pytest.MonkeyPatch) -> None:
    config = parse_config(_valid())
    oa, mock = config.provider("oa"), config.provider("mock")
    assert oa is not None
    assert mock is not None
    monkeypatch.delenv("OA_KEY", raising=False)
    assert oa.api_key() is None
    monkeypatch.setenv("OA_KEY", "sk-x")
    assert oa.api_key() == "sk-x"
    assert mock.api_key() is None


def test_config_is_frozen() -> None:
    config = parse_config(_valid())
    with pytest.raises(ValueError, match="frozen"):
        config.models[0].online = False


@pytest.mark.parametrize(
    ("fallbacks", "expected"),
    [
        (["chat-a"], "models.0.fallbacks: a model cannot fall back to itself"),
        (["emb"], "models.0.fallbacks: 'emb' is a embedding model, not chat"),
    ],
)
def test_fallbacks_must_be_another_model_of_the_same_kind(
    fallbacks: list[str], expected: str
) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(_with("models.0.fallbacks", fallbacks))
    assert expected.split(": ", 1)[1] in str(err.value)
