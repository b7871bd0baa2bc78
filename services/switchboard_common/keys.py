"""The client key table every service authenticates against, built from the
registry snapshot the service follows. Keys are compared by SHA-256 digest in
constant time, against every configured key so timing reveals nothing. Only
the digests are held: a service never sees a client key's plaintext except in
the request presenting it."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from switchboard_common.config import KeyConfig, SwitchboardConfig
from switchboard_common.credentials import digest, presented_key
from switchboard_common.errors import R, SwitchboardError
from switchboard_common.logs import log_fields

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Table:
    # No `keys:` at all (local development): requests without a key are let in.
    open: bool
    keys: tuple[tuple[bytes, KeyConfig], ...]


def missing_key() -> SwitchboardError:
    return SwitchboardError(
        R.ERROR_REASON_MISSING_API_KEY,
        "Missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'.",
    )


class KeyTable:
    """Swapped whole on each registry update, so a call sees one table. Until
    the first update no key exists and every key is refused."""

    def __init__(self, config: SwitchboardConfig | None = None) -> None:
        self._table = _Table(open=False, keys=())
        if config is not None:
            self.replace(config)

    @property
    def open(self) -> bool:
        return self._table.open

    def replace(self, config: SwitchboardConfig) -> None:
        keys: list[tuple[bytes, KeyConfig]] = []
        for key in config.keys or []:
            secret_sha256 = key.secret_sha256()
            if secret_sha256 is None:
                log.warning(
                    "key has no secret: its environment variable is unset",
                    extra=log_fields(key=key.name, key_env=key.key_env),
                )
                continue
            keys.append((bytes.fromhex(secret_sha256), key))
        self._table = _Table(open=config.keys is None, keys=tuple(keys))

    def find(self, presented: str) -> KeyConfig | None:
        """The key whose secret is `presented`, or None."""
        presented_digest = digest(presented)
        found: KeyConfig | None = None
        # Every configured key is compared, matched or not: the time taken does
        # not say which one (or whether any) matched.
        for expected, key in self._table.keys:
            if hmac.compare_digest(presented_digest, expected):
                found = key
        return found

    def named(self, name: str) -> KeyConfig | None:
        """The key called `name` (a login token names the key whose policy it carries)."""
        return next((key for _, key in self._table.keys if key.name == name), None)

    def authenticate(self, metadata: Iterable[tuple[str, str | bytes]]) -> KeyConfig | None:
        """The caller's key config; None when the table is open (no keys configured)."""
        if self._table.open:
            return None
        presented = presented_key(metadata)
        if not presented:
            raise missing_key()
        found = self.find(presented)
        if found is None:
            raise SwitchboardError(R.ERROR_REASON_INVALID_API_KEY, "Invalid API key.")
        return found
