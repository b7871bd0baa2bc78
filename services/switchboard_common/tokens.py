"""Login tokens (seed 004's POST /api/auth/token): short-lived JWTs (HS256,
PyJWT) that stand for an account, accepted as `Authorization: Bearer` on every
surface by the access policy, under the same policy as the key they map to.

The signing key is derived from the admin key, which every service already
holds: no new secret to distribute, and rotating the admin key revokes every
token. Claims: sub (the account), key (the client key's name whose policy the
token carries) or adm (the admin's), iat, exp, iss."""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass

import jwt

ISSUER = "switchboard"
ALGORITHM = "HS256"
DEFAULT_TTL_S = 3600
_LABEL = b"switchboard login tokens v1"


@dataclass(frozen=True)
class Claims:
    subject: str
    admin: bool
    # The client key whose allow-list, limits and usage the token carries.
    key_name: str
    # When it stops being accepted (Unix seconds): what a long-lived
    # connection admitted with it (the monitor socket) lasts until.
    expires_at: int = 0


def signing_key(admin_key: str) -> bytes:
    return hmac.new(admin_key.encode(), _LABEL, hashlib.sha256).digest()


def looks_like_token(presented: str) -> bool:
    # Keys are opaque strings; a JWT is three base64url parts of a JSON header.
    return presented.startswith("eyJ") and presented.count(".") == 2


def issue(admin_key: str, claims: Claims, ttl_s: int = DEFAULT_TTL_S) -> str:
    now = int(time.time())
    payload: dict[str, object] = {"sub": claims.subject, "iat": now, "exp": now + ttl_s}
    payload["iss"] = ISSUER
    if claims.admin:
        payload["adm"] = True
    else:
        payload["key"] = claims.key_name
    return jwt.encode(payload, signing_key(admin_key), algorithm=ALGORITHM)


def verify(secret: bytes, token: str) -> Claims | None:
    """The token's claims, or None when it is forged, expired or malformed."""
    try:
        payload = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            issuer=ISSUER,
            options={"require": ["exp", "iat", "sub", "iss"]},
        )
    except jwt.PyJWTError:
        return None
    admin = payload.get("adm") is True
    key = payload.get("key")
    expires_at = int(payload["exp"])
    if admin:
        return Claims(subject=str(payload["sub"]), admin=True, key_name="", expires_at=expires_at)
    if not isinstance(key, str):
        return None
    return Claims(subject=str(payload["sub"]), admin=False, key_name=key, expires_at=expires_at)
