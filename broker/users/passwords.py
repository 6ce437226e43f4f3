"""Password hashes for the --users file: scrypt, salted, in one self-describing string.

    scrypt$16384$8$1$<salt, base64>$<hash, base64>

`slipstream passwd` makes them; the broker checks a HELLO's password against
them. scrypt (in the standard library) is slow and memory-hard on purpose: a
stolen users file costs an attacker about 35 ms and 16 MiB per guess. The
broker pays that once per user and password (broker/users/accounts.py keeps
what it has checked), and a failed check is rationed per address.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets

SCHEME = "scrypt"
# n=2**14, r=8, p=1: the standard interactive-login cost (16 MiB, tens of ms).
DEFAULT_COST = (1 << 14, 8, 1)
_SALT_BYTES = 16
_HASH_BYTES = 32


class BadHashError(ValueError):
    """A string that is not a hash `hash_password` made."""


def hash_password(password: str, cost: tuple[int, int, int] = DEFAULT_COST) -> str:
    n, r, p = cost
    salt = os.urandom(_SALT_BYTES)
    digest = _scrypt(password, salt, n, r, p)
    return "$".join((SCHEME, str(n), str(r), str(p), _b64(salt), _b64(digest)))


def check_hash(stored: str) -> tuple[int, int, int, bytes, bytes]:
    """The parts of a stored hash; BadHashError saying what is wrong."""
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != SCHEME:
        raise BadHashError("not a password hash made by `slipstream passwd` (expected "
                           "'scrypt$N$r$p$salt$hash'; a plain-text password is refused)")
    try:
        n, r, p = (int(part) for part in parts[1:4])
        salt, digest = base64.b64decode(parts[4], validate=True), base64.b64decode(
            parts[5], validate=True)
    except ValueError:
        raise BadHashError("a damaged password hash (its numbers or base64 do not "
                           "parse): make it again with `slipstream passwd`") from None
    if n < 2 or n & (n - 1) or not 1 <= r <= 64 or not 1 <= p <= 16 or n * r > 1 << 22:
        raise BadHashError(f"scrypt cost n={n} r={r} p={p} is out of range (n a power of "
                           "two, n*r at most 4,194,304)")
    if len(salt) < 8 or len(digest) < 16:
        raise BadHashError("salt or hash too short: make it again with `slipstream passwd`")
    return n, r, p, salt, digest


def verify_password(password: str, stored: str) -> bool:
    """Whether `password` is the one `stored` was made from (constant-time compare)."""
    n, r, p, salt, digest = check_hash(stored)
    return hmac.compare_digest(_scrypt(password, salt, n, r, p, len(digest)), digest)


def new_password() -> str:
    """A random password strong enough that the hash's cost hardly matters (128 bits)."""
    return secrets.token_urlsafe(16)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int,
            length: int = _HASH_BYTES) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p,
                          maxmem=n * r * 128 * 2 + (1 << 20), dklen=length)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
