"""Password hashing (argon2id, bcrypt accepted for migration) and the password policy.

Hashing is slow on purpose, so it always runs in a worker thread, never on the event loop.
Nothing here logs or returns a password.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from functools import cache

from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher
from pwdlib.hashers.bcrypt import BcryptHasher

from keel.core.errors import ValidationFailed
from keel.observability.logging import get_logger

__all__ = [
    "MAX_LENGTH",
    "MIN_LENGTH",
    "PasswordRejected",
    "Verification",
    "check_policy",
    "hash_password",
    "verify_password",
]

MIN_LENGTH = 12
MAX_LENGTH = 1024

# argon2id is the first hasher, so new hashes use it; bcrypt only verifies imported hashes.
_hasher = PasswordHash((Argon2Hasher(), BcryptHasher()))


class PasswordRejected(ValidationFailed):
    """The password does not meet the password policy."""

    slug = "weak-password"
    title = "Password Rejected"


@cache
def _common_passwords() -> frozenset[str]:
    from zxcvbn.frequency_lists import FREQUENCY_LISTS

    return frozenset(word.lower() for word in FREQUENCY_LISTS["passwords"])


@dataclass(frozen=True, slots=True)
class Verification:
    """The outcome of checking a password against a stored hash."""

    ok: bool
    new_hash: str | None = None
    """A fresh argon2id hash to store when the old one was bcrypt or weaker argon2."""


def check_policy(password: str, *, email: str | None = None) -> None:
    """Raise `PasswordRejected` listing every rule the password breaks."""
    problems: list[tuple[str, str]] = []
    if len(password) < MIN_LENGTH:
        problems.append(("too_short", f"Use at least {MIN_LENGTH} characters."))
    if len(password) > MAX_LENGTH:
        problems.append(("too_long", f"Use at most {MAX_LENGTH} characters."))
    lowered = password.lower()
    if lowered in _common_passwords() or lowered.strip() in _common_passwords():
        problems.append(("common", "This password is among the most common ones; pick another."))
    if email:
        name = email.split("@", 1)[0].lower()
        if len(name) >= 4 and name in lowered:
            problems.append(("contains_email", "Do not build the password from your email."))
    if problems:
        raise PasswordRejected(
            "The password does not meet the policy.",
            errors=[
                {"location": "body", "pointer": "/password", "detail": text, "code": code}
                for code, text in problems
            ],
        )


async def hash_password(password: str) -> str:
    """An argon2id hash of `password`, computed off the event loop."""
    return await asyncio.to_thread(_hasher.hash, password)


@cache
def _dummy_hash() -> str:
    return _hasher.hash("keel-dummy-password-for-timing")


async def verify_password(password: str, stored: str | None) -> Verification:
    """Check `password` against `stored` (None: no password set, e.g. unknown user).

    Always spends one hash verification, so the time taken does not reveal whether an
    account exists.
    """
    if stored is None:
        await _spend_dummy_verification(password)
        return Verification(ok=False)
    if stored.startswith(("$2a$", "$2b$", "$2y$")) and len(password.encode()) > _BCRYPT_LIMIT:
        # The legacy app's bcrypt only ever saw the first 72 bytes; newer bcrypt refuses longer
        # input instead of truncating, which would lock these users out.
        ok = await asyncio.to_thread(_bcrypt_truncated_check, password, stored)
        return Verification(ok=ok, new_hash=await hash_password(password) if ok else None)
    try:
        ok, updated = await asyncio.to_thread(_hasher.verify_and_update, password, stored)
    except Exception as exc:  # noqa: BLE001 - an unreadable stored hash verifies nothing
        get_logger("keel.identity").warning("unreadable password hash", error=type(exc).__name__)
        await _spend_dummy_verification(password)
        return Verification(ok=False)
    return Verification(ok=ok, new_hash=updated if ok else None)


_BCRYPT_LIMIT = 72


def _bcrypt_truncated_check(password: str, stored: str) -> bool:
    import bcrypt

    try:
        return bool(bcrypt.checkpw(password.encode()[:_BCRYPT_LIMIT], stored.encode()))
    except ValueError:
        return False


async def _spend_dummy_verification(password: str) -> None:
    # The same work as checking a real argon2id hash, so a missing or unreadable hash is not
    # told apart by the time it takes.
    dummy = await asyncio.to_thread(_dummy_hash)
    await asyncio.to_thread(_hasher.verify, password[:MAX_LENGTH], dummy)
