"""Property-based: API key checks under hostile metadata.

Keys are held as SHA-256 digests only and compared in constant time (every
configured key, equal-length digests); whatever a caller sends, the answer is
the key it presented or a 401, never another error.
"""

from __future__ import annotations

import gc
import hashlib
import hmac
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from switchboard.router.v1 import router_pb2
from switchboard_common import credentials
from switchboard_common.config import SwitchboardConfig
from switchboard_common.errors import R, SwitchboardError
from switchboard_common.keys import KeyTable
from switchboard_common.policy import AccessPolicy

FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None)
SECRETS = {"alpha": "sk-alpha-0123456789abcdef", "beta": "sk-beta-0123456789abcdef"}
ADMIN_KEY = "admin-0123456789abcdef"
UNAUTHENTICATED = {R.ERROR_REASON_MISSING_API_KEY, R.ERROR_REASON_INVALID_API_KEY}


def _authenticator() -> KeyTable:
    config = SwitchboardConfig.model_validate(
        {
            "keys": [
                {"name": name, "key_sha256": hashlib.sha256(secret.encode()).hexdigest()}
                for name, secret in SECRETS.items()
            ]
        }
    )
    return KeyTable(config)


AUTH = _authenticator()
# An ADMIN method (router.proto): what the access policy checks the admin key on.
ADMIN_METHOD = (
    f"/{router_pb2.DESCRIPTOR.services_by_name['RouterService'].full_name}/GetRoutingHealth"
)


def require_admin(metadata: list[tuple[str, str | bytes]], admin_key: str | None) -> None:
    AccessPolicy(admin_key).admit(ADMIN_METHOD, metadata)


def _refusal(call: Callable[[], object]) -> SwitchboardError | None:
    try:
        call()
    except SwitchboardError as err:
        return err
    return None


HEADER_NAMES = st.sampled_from(["authorization", "x-api-key", "x-request-id", "cookie"])
VALUES = (
    st.text(max_size=40)
    | st.binary(max_size=40)
    | st.sampled_from(
        [
            "Bearer ' OR '1'='1",
            "Bearer x'; DROP TABLE api_keys; --",
            "Bearer " + "A" * 600,
            "Basic YWxwaGE6YmV0YQ==",
            "Bearer",
            "bearer " + SECRETS["alpha"],
        ]
    )
)


@FUZZ
@given(metadata=st.lists(st.tuples(HEADER_NAMES, VALUES), max_size=4))
def test_any_metadata_is_a_key_or_a_401(metadata: list[tuple[str, str | bytes]]) -> None:
    err = _refusal(lambda: AUTH.authenticate(metadata))
    if err is not None:
        assert err.reason in UNAUTHENTICATED
        assert err.http_status == 401
        return
    key = AUTH.authenticate(metadata)
    assert key is not None
    assert SECRETS[key.name] == credentials.presented_key(metadata)


def _counting(calls: list[tuple[int, int]]) -> Callable[[bytes, bytes], bool]:
    """hmac.compare_digest, noting the lengths it compared."""
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((len(a), len(b)))
        return real(a, b)

    return counting


def _variants(secret: str) -> list[str]:
    return [
        secret.upper(),
        secret[:-1],
        secret + "x",
        secret[1:],
        "x" + secret,
        secret.replace("-", "_"),
        secret.replace("-", "\u2010"),
        secret + "\u0000",
        secret + "\u200b",
        secret[:8] + " " + secret[8:],
        f"{secret},{secret}",
        "'" + secret + "' OR 1=1",
        hashlib.sha256(secret.encode()).hexdigest(),
    ]


@pytest.mark.parametrize("name", sorted(SECRETS))
def test_near_misses_are_invalid(name: str) -> None:
    for variant in _variants(SECRETS[name]):
        for header, value in (("authorization", f"Bearer {variant}"), ("x-api-key", variant)):
            with pytest.raises(SwitchboardError) as info:
                AUTH.authenticate([(header, value)])
            assert info.value.reason in UNAUTHENTICATED, variant


@FUZZ
@given(presented=st.sampled_from([*SECRETS.values(), "sk-wrong", "x" * 500]) | st.text(min_size=1))
def test_every_key_is_compared_by_equal_length_digests(presented: str) -> None:
    """The work done does not depend on which key matched, or whether one did."""
    calls: list[tuple[int, int]] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hmac, "compare_digest", _counting(calls))
        _refusal(lambda: AUTH.authenticate([("authorization", f"Bearer {presented}")]))
    if presented.strip() and presented == presented.strip():
        assert calls == [(32, 32)] * len(SECRETS)


def _reachable(root: object) -> Iterator[object]:
    seen: set[int] = set()
    stack = [root]
    skip = (type, type(gc), type(_reachable), type(len))
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, skip):
            continue
        seen.add(id(obj))
        yield obj
        stack.extend(gc.get_referents(obj))


def test_only_digests_are_held(monkeypatch: pytest.MonkeyPatch) -> None:
    """Built from key_env (the plaintext in the environment), the authenticator
    keeps digests only."""
    monkeypatch.setenv("FUZZ_KEY_A", SECRETS["alpha"])
    config = SwitchboardConfig.model_validate({"keys": [{"name": "a", "key_env": "FUZZ_KEY_A"}]})
    authenticator = KeyTable(config)
    texts = [o for o in _reachable(authenticator) if isinstance(o, str | bytes)]
    secret = SECRETS["alpha"]
    assert [t for t in texts if (secret in t if isinstance(t, str) else secret.encode() in t)] == []
    assert hashlib.sha256(secret.encode()).digest() in texts
    key = authenticator.authenticate([("x-api-key", secret)])
    assert key is not None
    assert key.name == "a"


@FUZZ
@given(metadata=st.lists(st.tuples(HEADER_NAMES, VALUES), max_size=3))
def test_admin_check_is_a_pass_or_a_401(metadata: list[tuple[str, str | bytes]]) -> None:
    err = _refusal(lambda: require_admin(metadata, ADMIN_KEY))
    if err is not None:
        assert err.reason in UNAUTHENTICATED
        return
    assert credentials.presented_key(metadata) == ADMIN_KEY


def test_admin_key_is_compared_by_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(hmac, "compare_digest", _counting(calls))

    def admin(presented: str) -> SwitchboardError | None:
        return _refusal(lambda: require_admin([("x-api-key", presented)], ADMIN_KEY))

    refusals = [admin(presented) for presented in ("a", ADMIN_KEY, ADMIN_KEY * 10)]
    assert [e.reason if e else None for e in refusals] == [
        R.ERROR_REASON_INVALID_API_KEY,
        None,
        R.ERROR_REASON_INVALID_API_KEY,
    ]
    assert calls == [(32, 32)] * 3
    with pytest.raises(SwitchboardError) as off:
        require_admin([("authorization", f"Bearer {ADMIN_KEY}")], None)
    assert off.value.reason == R.ERROR_REASON_PERMISSION_DENIED
