"""Model resolution, deployment plans and API key checks at the router's front door."""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from typing import Any

import pytest

from switchboard_common.config import KeyConfig, SwitchboardConfig, parse_config
from switchboard_common.credentials import MAX_KEY_LENGTH
from switchboard_common.errors import R, SwitchboardError
from switchboard_common.keys import KeyTable
from switchboard_router.catalog import Catalog
from switchboard_router.limits import LocalLimiter
from switchboard_router.routing import Routing

SECRET_A = "sk-team-a-secret"
SECRET_B = "sk-team-b-secret"


def _sha(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _config(keys: list[dict[str, Any]] | None = None) -> SwitchboardConfig:
    data: dict[str, Any] = {
        "providers": [
            {"name": "mock", "kind": "mock"},
            {"name": "p1", "kind": "openai", "base_url": "https://p1.test/v1"},
            {"name": "p2", "kind": "openai", "base_url": "https://p2.test/v1"},
        ],
        "models": [
            {
                "name": "chat",
                "aliases": ["chat-latest", "c"],
                "deployments": [
                    {"provider": "p1", "model": "big", "weight": 3},
                    {"provider": "p2", "model": "big", "weight": 1},
                    {"provider": "mock", "model": "drained", "weight": 0},
                ],
                "fallbacks": ["backup", "gone"],
            },
            {
                "name": "backup",
                "deployments": [
                    {"provider": "mock", "model": "echo"},
                    {"provider": "p2", "model": "off", "weight": 0},
                ],
            },
            {"name": "gone", "online": False, "deployments": [{"provider": "p1", "model": "old"}]},
            {
                "name": "embed",
                "kind": "embedding",
                "deployments": [{"provider": "mock", "model": "vec"}],
            },
        ],
    }
    if keys is not None:
        data["keys"] = keys
    return parse_config(data)


def _catalog(seed: int = 0) -> Catalog:
    return Catalog(_config(), created=1234)


def _planner(seed: int = 0) -> Routing:
    return Routing(LocalLimiter(), rng=random.Random(seed))


def _key(models: list[str] | None) -> KeyConfig:
    return KeyConfig(name="k", key_sha256="0" * 64, models=models)


@pytest.mark.parametrize("name", ["chat", "chat-latest", "c"])
def test_resolve_by_name_or_alias(name: str) -> None:
    assert _catalog().resolve(name, None).name == "chat"


@pytest.mark.parametrize("name", ["nope", "gone", "CHAT", ""])
def test_resolve_unknown_or_offline_is_model_not_found(name: str) -> None:
    with pytest.raises(SwitchboardError) as info:
        _catalog().resolve(name, None)
    assert info.value.reason == R.ERROR_REASON_MODEL_NOT_FOUND
    assert info.value.param == "model"
    assert info.value.http_status == 404


def test_resolve_respects_key_allow_list() -> None:
    catalog = _catalog()
    key = _key(["backup"])
    assert catalog.resolve("backup", key).name == "backup"
    with pytest.raises(SwitchboardError) as info:
        catalog.resolve("chat", key)
    assert info.value.reason == R.ERROR_REASON_MODEL_NOT_ALLOWED
    assert info.value.param == "model"


def test_key_allow_list_applies_to_aliases() -> None:
    catalog = _catalog()
    assert catalog.resolve("chat-latest", _key(["chat"])).name == "chat"
    with pytest.raises(SwitchboardError) as info:
        catalog.resolve("c", _key(["embed"]))
    assert info.value.reason == R.ERROR_REASON_MODEL_NOT_ALLOWED


@pytest.mark.parametrize("models", [None, ["chat", "embed"]])
def test_resolve_key_with_access(models: list[str] | None) -> None:
    assert _catalog().resolve("embed", _key(models)).name == "embed"


def test_offline_model_is_not_found_even_for_an_allowed_key() -> None:
    with pytest.raises(SwitchboardError) as info:
        _catalog().resolve("gone", _key(["gone"]))
    assert info.value.reason == R.ERROR_REASON_MODEL_NOT_FOUND


@pytest.mark.parametrize(("name", "kind"), [("chat", "embedding"), ("embed", "chat")])
def test_resolve_kind_mismatch_is_invalid_request(name: str, kind: str) -> None:
    with pytest.raises(SwitchboardError) as info:
        _catalog().resolve(name, None, kind=kind)
    assert info.value.reason == R.ERROR_REASON_INVALID_REQUEST
    assert info.value.param == "model"


def test_resolve_matching_kind() -> None:
    assert _catalog().resolve("embed", None, kind="embedding").kind == "embedding"


def test_plan_orders_deployments_then_fallbacks_and_skips_weight_zero() -> None:
    catalog, planner = _catalog(), _planner()
    for _ in range(50):
        ids = [
            c.deployment_id for c in planner.plan(catalog, catalog.resolve("chat", None), False)[0]
        ]
        assert sorted(ids[:2]) == ["chat.p1.big", "chat.p2.big"]
        # Offline fallback "gone" and weight-0 deployments are left out.
        assert ids[2:] == ["backup.mock.echo"]


def test_plan_candidates_carry_their_provider() -> None:
    catalog = _catalog()
    plan, _ = _planner().plan(catalog, catalog.resolve("backup", None), False)
    assert len(plan) == 1
    assert plan[0].provider.name == "mock"
    assert plan[0].model.name == "backup"
    assert plan[0].deployment.model == "echo"


def test_plan_weighted_first_pick_matches_weights() -> None:
    catalog, planner = _catalog(), _planner(seed=12345)
    chat = catalog.resolve("chat", None)
    firsts = Counter(planner.plan(catalog, chat, False)[0][0].provider.name for _ in range(4000))
    assert set(firsts) == {"p1", "p2"}
    assert 0.70 <= firsts["p1"] / 4000 <= 0.80


def test_plan_is_reproducible_with_a_seeded_rng() -> None:
    def picks(seed: int) -> list[str]:
        catalog, planner = _catalog(), _planner(seed)
        chat = catalog.resolve("chat", None)
        return [planner.plan(catalog, chat, False)[0][0].deployment_id for _ in range(20)]

    assert picks(7) == picks(7)


def test_visible_filters_offline_and_by_key() -> None:
    catalog = _catalog()
    assert [m.id for m in catalog.visible(None)] == ["chat", "backup", "embed"]
    assert [m.id for m in catalog.visible(_key(None))] == ["chat", "backup", "embed"]
    assert [m.id for m in catalog.visible(_key(["embed", "gone"]))] == ["embed"]
    assert catalog.visible(_key([])) == []


def test_describe_model_entry() -> None:
    catalog = _catalog()
    chat, embed = catalog.visible(None)[0], catalog.visible(None)[2]
    assert (chat.id, chat.object, chat.created, chat.owned_by) == ("chat", "model", 1234, "p1")
    assert embed.owned_by == "switchboard-mock"


# --- KeyTable ---------------------------------------------------------------


@pytest.fixture
def keyed(monkeypatch: pytest.MonkeyPatch) -> KeyTable:
    monkeypatch.setenv("SB_TEST_KEY_A", SECRET_A)
    monkeypatch.delenv("SB_TEST_KEY_UNSET", raising=False)
    return KeyTable(
        _config(
            keys=[
                {"name": "a", "key_env": "SB_TEST_KEY_A", "models": ["chat"]},
                {"name": "b", "key_sha256": _sha(SECRET_B)},
                {"name": "unset", "key_env": "SB_TEST_KEY_UNSET"},
            ]
        )
    )


def test_open_when_no_keys_section() -> None:
    auth = KeyTable(_config())
    assert auth.open
    assert auth.authenticate([]) is None
    assert auth.authenticate([("authorization", "Bearer whatever")]) is None


def test_empty_keys_section_is_closed() -> None:
    auth = KeyTable(_config(keys=[]))
    assert not auth.open
    with pytest.raises(SwitchboardError) as info:
        auth.authenticate([("x-api-key", "anything")])
    assert info.value.reason == R.ERROR_REASON_INVALID_API_KEY


@pytest.mark.parametrize(
    "metadata",
    [
        pytest.param([], id="no-metadata"),
        pytest.param([("user-agent", "sdk")], id="unrelated-headers"),
        pytest.param([("authorization", "Bearer ")], id="empty-bearer"),
        pytest.param([("authorization", "Basic " + SECRET_A)], id="other-scheme"),
        pytest.param([("x-api-key", "   ")], id="blank-x-api-key"),
        pytest.param([("x-api-key", SECRET_A.encode())], id="binary-value"),
        pytest.param(
            [("authorization", "Bearer " + "k" * (MAX_KEY_LENGTH + 100))], id="overlong-bearer"
        ),
        pytest.param([("x-api-key", "k" * (MAX_KEY_LENGTH + 17))], id="overlong-x-api-key"),
    ],
)
def test_missing_key(keyed: KeyTable, metadata: list[tuple[str, str | bytes]]) -> None:
    with pytest.raises(SwitchboardError) as info:
        keyed.authenticate(metadata)
    assert info.value.reason == R.ERROR_REASON_MISSING_API_KEY
    assert info.value.http_status == 401


@pytest.mark.parametrize(
    "metadata",
    [
        pytest.param([("authorization", "Bearer sk-wrong")], id="wrong-bearer"),
        pytest.param([("x-api-key", "sk-wrong")], id="wrong-x-api-key"),
        pytest.param([("authorization", "Bearer " + SECRET_A + "x")], id="near-miss"),
        pytest.param([("authorization", "Bearer " + SECRET_A.upper())], id="case-matters"),
    ],
)
def test_invalid_key(keyed: KeyTable, metadata: list[tuple[str, str | bytes]]) -> None:
    with pytest.raises(SwitchboardError) as info:
        keyed.authenticate(metadata)
    assert info.value.reason == R.ERROR_REASON_INVALID_API_KEY
    assert info.value.http_status == 401
    assert SECRET_A not in info.value.message


@pytest.mark.parametrize(
    ("metadata", "name"),
    [
        pytest.param([("authorization", f"Bearer {SECRET_A}")], "a", id="bearer"),
        pytest.param([("authorization", f"bearer {SECRET_A}")], "a", id="bearer-lowercase"),
        pytest.param([("authorization", f"BEARER {SECRET_B}")], "b", id="bearer-uppercase"),
        pytest.param([("authorization", f"  Bearer   {SECRET_A}  ")], "a", id="whitespace"),
        pytest.param([("x-api-key", SECRET_B)], "b", id="x-api-key"),
        pytest.param([("x-api-key", f"\t{SECRET_B} ")], "b", id="x-api-key-trimmed"),
        pytest.param(
            [("authorization", "Basic abc"), ("x-api-key", SECRET_A)], "a", id="falls-through"
        ),
        pytest.param(
            [("x-api-key", SECRET_A.encode()), ("x-api-key", SECRET_B)], "b", id="skips-binary"
        ),
    ],
)
def test_valid_key(keyed: KeyTable, metadata: list[tuple[str, str | bytes]], name: str) -> None:
    key = keyed.authenticate(metadata)
    assert key is not None
    assert key.name == name


def test_key_of_max_length_is_accepted() -> None:
    secret = "k" * MAX_KEY_LENGTH
    auth = KeyTable(_config(keys=[{"name": "long", "key_sha256": _sha(secret)}]))
    key = auth.authenticate([("authorization", f"Bearer {secret}")])
    assert key is not None
    assert key.name == "long"


def test_authenticated_key_carries_its_allow_list(keyed: KeyTable) -> None:
    key = keyed.authenticate([("x-api-key", SECRET_A)])
    with pytest.raises(SwitchboardError) as info:
        _catalog().resolve("embed", key)
    assert info.value.reason == R.ERROR_REASON_MODEL_NOT_ALLOWED


def test_key_with_unset_env_is_skipped_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("SB_TEST_KEY_UNSET", raising=False)
    auth = KeyTable(_config(keys=[{"name": "unset", "key_env": "SB_TEST_KEY_UNSET"}]))
    assert not auth.open
    assert [r.getMessage() for r in caplog.records] == [
        "key has no secret: its environment variable is unset"
    ]
    with pytest.raises(SwitchboardError) as info:
        auth.authenticate([("x-api-key", "anything")])
    assert info.value.reason == R.ERROR_REASON_INVALID_API_KEY
