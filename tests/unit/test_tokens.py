"""Login tokens and accounts: scrypt hashes, signed and expiring JWTs, and the
access policy taking a token as the key it names."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jwt
import pytest

from switchboard_common import accounts, tokens
from switchboard_common.config import SwitchboardConfig
from switchboard_common.errors import SwitchboardError
from switchboard_common.keys import KeyTable
from switchboard_common.policy import ADMIN, AccessPolicy

ADMIN_KEY = "unit-admin-key-0123456789"


def test_passwords_are_hashed_with_scrypt_and_checked(tmp_path: Path) -> None:
    stored = accounts.hash_password("s3cret")
    assert stored.startswith("scrypt$16384$8$1$")
    assert "s3cret" not in stored
    assert accounts.hash_password("s3cret") != stored  # salted
    assert accounts.check_password("s3cret", stored)
    assert not accounts.check_password("s3cret!", stored)
    path = tmp_path / "accounts.txt"
    path.write_text(f"# accounts\nbob:team-a:{stored}\n")
    table = accounts.load(path)
    found = accounts.authenticate(table, "bob", "s3cret")
    assert found is not None
    assert found.role == "team-a"
    assert accounts.authenticate(table, "bob", "wrong") is None
    assert accounts.authenticate(table, "nobody", "s3cret") is None
    path.write_text("bob:plain-password\n")
    with pytest.raises(ValueError, match=r"accounts\.txt:1"):
        accounts.load(path)


def test_tokens_are_signed_and_expire() -> None:
    secret = tokens.signing_key(ADMIN_KEY)
    before = int(time.time())
    token = tokens.issue(ADMIN_KEY, tokens.Claims("bob", False, "team-a"))
    assert tokens.looks_like_token(token)
    claims = tokens.verify(secret, token)
    assert claims is not None
    assert dataclasses.replace(claims, expires_at=0) == tokens.Claims("bob", False, "team-a")
    # Expiry in whole seconds, the default lifetime from issue.
    assert before + tokens.DEFAULT_TTL_S <= claims.expires_at <= time.time() + tokens.DEFAULT_TTL_S
    assert tokens.verify(tokens.signing_key("another-admin-key"), token) is None
    expired = tokens.issue(ADMIN_KEY, tokens.Claims("bob", True, ""), ttl_s=-10)
    assert tokens.verify(secret, expired) is None
    # Signed with another key, and "alg": "none": both refused.
    other = jwt.encode(
        {"sub": "bob", "adm": True, "iat": 0, "exp": 2**40, "iss": "switchboard"},
        b"x" * 32,
        algorithm="HS256",
    )
    assert tokens.verify(secret, other) is None
    unsigned = jwt.encode(
        {"sub": "bob", "adm": True, "iat": 0, "exp": 2**40, "iss": "switchboard"},
        "",
        algorithm="none",
    )
    assert tokens.verify(secret, unsigned) is None


def _policy() -> AccessPolicy:
    config = SwitchboardConfig.model_validate(
        {"keys": [{"name": "team-a", "key_sha256": "ab" * 32}]}
    )
    return AccessPolicy(ADMIN_KEY, KeyTable(config))


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def test_the_policy_takes_a_token_as_the_key_it_names() -> None:
    policy = _policy()
    client = tokens.issue(ADMIN_KEY, tokens.Claims("bob", False, "team-a"))
    caller = policy._client(_bearer(client))
    assert caller.key is not None
    assert caller.key.name == "team-a"
    admin = tokens.issue(ADMIN_KEY, tokens.Claims("root", True, ""))
    assert policy._admin(_bearer(admin)) == ADMIN
    assert policy._client(_bearer(admin)) == ADMIN
    with pytest.raises(SwitchboardError, match="Invalid admin key"):
        policy._admin(_bearer(client))
    gone = tokens.issue(ADMIN_KEY, tokens.Claims("bob", False, "removed-key"))
    with pytest.raises(SwitchboardError, match="Invalid or expired token"):
        policy._client(_bearer(gone))
    expired = tokens.issue(ADMIN_KEY, tokens.Claims("root", True, ""), ttl_s=-10)
    with pytest.raises(SwitchboardError, match="Invalid or expired token"):
        policy._admin(_bearer(expired))
