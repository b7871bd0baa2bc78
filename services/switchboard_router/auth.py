"""API key checks at the front door. Keys are compared by SHA-256 digest in
constant time, against every configured key so timing reveals nothing. Only
the digests are held: the router never sees a client key's plaintext except
in the request presenting it."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterable

from switchboard_common.config import KeyConfig, SwitchboardConfig
from switchboard_common.credentials import digest, presented_key
from switchboard_common.errors import R, SwitchboardError
from switchboard_common.logs import log_fields

log = logging.getLogger(__name__)


class Authenticator:
    def __init__(self, config: SwitchboardConfig) -> None:
        self.open = config.keys is None
        self._keys: list[tuple[bytes, KeyConfig]] = []
        for key in config.keys or []:
            secret_sha256 = key.secret_sha256()
            if secret_sha256 is None:
                log.warning(
                    "key has no secret: its environment variable is unset",
                    extra=log_fields(key=key.name, key_env=key.key_env),
                )
                continue
            self._keys.append((bytes.fromhex(secret_sha256), key))

    def authenticate(self, metadata: Iterable[tuple[str, str | bytes]]) -> KeyConfig | None:
        """The caller's key config; None when the edge is open (no keys configured)."""
        if self.open:
            return None
        presented = presented_key(metadata)
        if not presented:
            raise SwitchboardError(
                R.ERROR_REASON_MISSING_API_KEY,
                "Missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'.",
            )
        presented_digest = digest(presented)
        found: KeyConfig | None = None
        # Every configured key is compared, matched or not: the time taken does
        # not say which one (or whether any) matched.
        for expected, key in self._keys:
            if hmac.compare_digest(presented_digest, expected):
                found = key
        if found is None:
            raise SwitchboardError(R.ERROR_REASON_INVALID_API_KEY, "Invalid API key.")
        return found
