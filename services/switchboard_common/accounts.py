"""Accounts for token login (seed 004's POST /api/auth/token), managed by the
admin in one file (SWITCHBOARD_ACCOUNTS_FILE), a line per account:

    username:role:scrypt$n$r$p$salt_hex$hash_hex

role is "admin" (the token acts as the admin key) or the name of a client key
in the config (the token acts as that key: its models, limits and usage).
Passwords are hashed with scrypt (hashlib, n=2**14, r=8, p=1). Write a line:

    echo "$PASSWORD" | python -m switchboard_common.accounts USER ROLE >> accounts.txt
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

ADMIN_ROLE = "admin"
_N, _R, _P = 2**14, 8, 1
# A fixed hash to check unknown users against, so timing does not say which exist.
_DUMMY = "scrypt$16384$8$1$" + "00" * 16 + "$" + "00" * 32


@dataclass(frozen=True)
class Account:
    username: str
    role: str
    password_hash: str


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    derived = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return f"scrypt${_N}${_R}${_P}${salt.hex()}${derived.hex()}"


def check_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, expected = stored.split("$")
        if scheme != "scrypt":
            return False
        derived = hashlib.scrypt(
            password.encode(),
            salt=bytes.fromhex(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(bytes.fromhex(expected)),
            maxmem=64 * 1024 * 1024,
        )
    except ValueError:
        return False
    return hmac.compare_digest(derived, bytes.fromhex(expected))


def load(path: Path) -> dict[str, Account]:
    accounts: dict[str, Account] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        username, sep, rest = line.partition(":")
        role, sep2, password_hash = rest.partition(":")
        if not (sep and sep2 and username and role and password_hash.startswith("scrypt$")):
            raise ValueError(f"{path}:{number}: expected username:role:scrypt$…")
        accounts[username] = Account(username, role, password_hash)
    return accounts


def authenticate(accounts: dict[str, Account], username: str, password: str) -> Account | None:
    account = accounts.get(username)
    matched = check_password(password, account.password_hash if account else _DUMMY)
    return account if account is not None and matched else None


def main(argv: list[str]) -> int:
    if len(argv) != 2 or ":" in argv[0] or ":" in argv[1]:
        print("usage: python -m switchboard_common.accounts USERNAME ROLE  (password on stdin)")
        return 2
    password = sys.stdin.readline().rstrip("\n")
    if not password:
        print("no password given on stdin", file=sys.stderr)
        return 2
    print(f"{argv[0]}:{argv[1]}:{hash_password(password)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
