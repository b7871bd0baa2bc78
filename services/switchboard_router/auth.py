"""API key checks at the front door. Keys are compared by SHA-256 digest in
constant time, against every configured key so timing reveals nothing."""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Iterable

from switchboard_common.config import KeyConfig, SwitchboardConfig
from switchboard_common.credentials import presented_key
from switchboard_common.errors import R, SwitchboardError
from switchboard_common.logs import log_fields

log = logging.getLogger(__name__)


class Authenticator:
    def __init__(self, config: SwitchboardConfig) -> None:
        self.open = config.keys is None
        self._keys: list[tuple[bytes, KeyConfig]] = []
        for key in config.keys or []:
            digest = key.secret_sha256()
            if digest is None:
                log.warning(
                    "key has no secret: its environment variable is unset",
                    extra=log_fields(key=key.name, key_env=key.key_env),
                )
                continue
            self._keys.append((bytes.fromhex(digest), key))

    def authenticate(self, metadata: Iterable[tuple[str, str | bytes]]) -> KeyConfig | None:
        """The caller's key config; None when the edge is open (no keys configured)."""
        presented = presented_key(metadata)
        if self.open:
            return None
        if not presented:
            raise SwitchboardError(
                R.ERROR_REASON_MISSING_API_KEY,
                "Missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'.",
            )
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        found: KeyConfig | None = None
        for expected, key in self._keys:
            if hmac.compare_digest(digest, expected):
                found = key
        if found is None:
            raise SwitchboardError(R.ERROR_REASON_INVALID_API_KEY, "Invalid API key.")
        return found
