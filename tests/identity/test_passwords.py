"""Passwords: argon2id hashes, legacy bcrypt upgraded, and the policy."""

from __future__ import annotations

import bcrypt
import pytest

from keel.identity.passwords import (
    MAX_LENGTH,
    PasswordRejected,
    check_policy,
    hash_password,
    verify_password,
)


async def test_new_hashes_are_argon2id_and_verify() -> None:
    """A new hash is argon2id, salted (two hashes differ), and verifies only the right password."""
    first = await hash_password("correct horse battery")
    second = await hash_password("correct horse battery")
    assert first.startswith("$argon2id$")
    assert first != second
    assert (await verify_password("correct horse battery", first)).ok
    assert not (await verify_password("correct horse batterY", first)).ok
    assert (await verify_password("correct horse battery", first)).new_hash is None


async def test_legacy_bcrypt_hash_verifies_and_is_upgraded() -> None:
    """A bcrypt hash imported from an old app verifies and yields an argon2id replacement."""
    legacy = bcrypt.hashpw(b"imported password", bcrypt.gensalt(rounds=4)).decode()
    result = await verify_password("imported password", legacy)
    assert result.ok
    assert result.new_hash is not None and result.new_hash.startswith("$argon2id$")
    assert (await verify_password("imported password", result.new_hash)).ok
    assert not (await verify_password("wrong password!!", legacy)).ok


async def test_garbage_hash_and_missing_hash_never_verify() -> None:
    """A corrupted stored hash or no hash at all never lets anyone in."""
    good = await hash_password("correct horse battery")
    assert not (await verify_password("correct horse battery", good[:-8] + "AAAAAAAA")).ok
    assert not (await verify_password("correct horse battery", "not-a-hash")).ok
    assert not (await verify_password("correct horse battery", None)).ok


@pytest.mark.parametrize(
    ("password", "code"),
    [
        ("short1!", "too_short"),
        ("x" * (MAX_LENGTH + 1), "too_long"),
        ("qwerty123456", "common"),
        ("LeaveMeAlone", "common"),
        ("ada.lovelace-2026", "contains_email"),
    ],
)
def test_policy_rejects(password: str, code: str) -> None:
    """Each policy rule is reported with its code, for the right field."""
    with pytest.raises(PasswordRejected) as caught:
        check_policy(password, email="ada.lovelace@example.com")
    codes = {error["code"] for error in caught.value.errors or []}
    assert code in codes
    assert all(error["pointer"] == "/password" for error in caught.value.errors or [])
    assert caught.value.status == 422


def test_policy_accepts_long_passphrases_without_composition_rules() -> None:
    """A long passphrase with no digits or symbols passes; 64+ characters are allowed."""
    check_policy("correct horse battery staple", email="ada@example.com")
    check_policy("a" * 20 + " long passphrase " * 4, email="ada@example.com")


def test_policy_reports_every_problem_at_once() -> None:
    """A short, common password gets both reasons in one answer."""
    with pytest.raises(PasswordRejected) as caught:
        check_policy("dragon", email="x@example.com")
    assert {e["code"] for e in caught.value.errors or []} == {"too_short", "common"}


async def test_long_password_against_legacy_bcrypt_hash() -> None:
    """A legacy bcrypt app only used the first 72 bytes; such users still sign in and get a
    full-length argon2id hash."""
    password = "x" * 60 + "the rest is beyond bcrypt's 72 bytes"
    legacy = bcrypt.hashpw(password.encode()[:72], bcrypt.gensalt(rounds=4)).decode()
    result = await verify_password(password, legacy)
    assert result.ok
    assert result.new_hash is not None
    assert (await verify_password(password, result.new_hash)).ok
    assert not (await verify_password(password[:72], result.new_hash)).ok
