"""Login throttling and lockout: the limit holds under parallel guessing, on both dialects."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from keel import Config
from keel.core.database import Database
from keel.identity import create_user, disable_user
from keel.identity import throttle as throttle_module
from keel.identity.throttle import (
    LoginAttempt,
    LoginFailed,
    LoginPolicy,
    LoginThrottled,
    lock_state,
    login,
    unlock,
)
from tests.conftest import hashed

PASSWORD = "correct horse battery staple"
# The attempts' clock starts now: `unlock` compares a lock with the real time.
T0 = datetime.now(UTC).replace(microsecond=0)
POLICY = LoginPolicy(account_failures=3, base_lock=timedelta(minutes=1), address_failures=8)


@pytest.fixture
async def db(migrated_db: Database) -> Database:
    """A migrated database with one user, ada@example.com."""
    async with migrated_db.transaction() as session:
        await create_user(session, email="ada@example.com", password_hash=await hashed(PASSWORD))
    return migrated_db


async def attempt(db: Database, password: str, *, at: datetime = T0, **kw: Any) -> str:
    """'ok', 'failed' or 'throttled'."""
    try:
        await login(
            db,
            email=kw.get("email", "ada@example.com"),
            password=password,
            client_ip=kw.get("ip", "203.0.113.7"),
            policy=POLICY,
            now=at,
        )
    except LoginFailed:
        return "failed"
    except LoginThrottled:
        return "throttled"
    return "ok"


async def test_success_and_failure(db: Database) -> None:
    """The right password logs in; a wrong one is a generic 401."""
    assert await attempt(db, PASSWORD) == "ok"
    assert await attempt(db, "wrong password here") == "failed"


async def test_lockout_then_growing_delay_then_expiry(db: Database) -> None:
    """After 3 failures the account locks (even for the right password) for 1 min; the lock
    expires by itself and the next failure locks for twice as long."""
    results = [await attempt(db, "wrong password here") for _ in range(3)]
    assert results == ["failed", "failed", "failed"]
    assert await attempt(db, PASSWORD, at=T0 + timedelta(seconds=30)) == "throttled"
    later = T0 + timedelta(minutes=1, seconds=1)
    assert await attempt(db, "wrong password here", at=later) == "failed"
    async with db.session() as session:
        until = await lock_state(session, "ada@example.com", now=later)
    assert until == later + timedelta(minutes=2)
    assert await attempt(db, PASSWORD, at=later + timedelta(minutes=3)) == "ok"
    assert await attempt(db, "wrong password here", at=later + timedelta(minutes=3)) == "failed"


async def test_throttled_answer_carries_retry_after(db: Database) -> None:
    """The 429 tells the client when to come back."""
    for _ in range(3):
        await attempt(db, "wrong password here")
    with pytest.raises(LoginThrottled) as caught:
        await login(
            db,
            email="ada@example.com",
            password=PASSWORD,
            client_ip=None,
            policy=POLICY,
            now=T0 + timedelta(seconds=20),
        )
    assert caught.value.status == 429
    assert caught.value.headers == {"Retry-After": "40"}


async def test_unknown_emails_lock_like_real_ones(db: Database) -> None:
    """An unknown email fails, then locks, exactly like a real account: no enumeration."""
    real = [await attempt(db, "wrong password here") for _ in range(4)]
    ghost = [await attempt(db, "wrong password here", email="ghost@example.com") for _ in range(4)]
    assert real == ghost == ["failed", "failed", "failed", "throttled"]


async def test_disabled_user_cannot_log_in(db: Database) -> None:
    """A disabled account answers like a wrong password."""
    async with db.transaction() as session:
        await disable_user(session, "ada@example.com", config=db.config)
    assert await attempt(db, PASSWORD) == "failed"


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every password check login makes (one entry per check)."""
    seen: list[str] = []
    real_verify = throttle_module.verify_password

    async def counting_verify(password: str, stored: str | None) -> Any:
        seen.append(password)
        return await real_verify(password, stored)

    monkeypatch.setattr(throttle_module, "verify_password", counting_verify)
    return seen


async def test_parallel_guesses_cannot_exceed_the_limit(db: Database, checks: list[str]) -> None:
    """Forty simultaneous guesses get at most 3 password checks; the rest are refused."""
    results = await asyncio.gather(
        *(attempt(db, f"guess number {i:04d}", ip=f"198.51.100.{i}") for i in range(40))
    )
    assert len(checks) <= POLICY.account_failures
    assert results.count("throttled") >= 40 - POLICY.account_failures
    assert "ok" not in results


async def test_one_address_guessing_many_accounts_is_throttled(db: Database) -> None:
    """Spraying one password over many accounts from one address locks the address."""
    results = [await attempt(db, "Summer2026!!", email=f"user{i}@example.com") for i in range(10)]
    assert results[:8] == ["failed"] * 8
    assert results[8:] == ["throttled", "throttled"]
    assert await attempt(db, PASSWORD, ip="192.0.2.1") == "ok", "other addresses unaffected"


async def test_admin_unlock_and_attempts_are_recorded(db: Database) -> None:
    """An admin unlock clears the lock at once; every attempt left a record."""
    # `unlock` compares the lock with the real clock: start this test's attempts now, not at
    # import (the suite may reach this test long after T0).
    t0 = datetime.now(UTC).replace(microsecond=0)
    for _ in range(4):
        await attempt(db, "wrong password here", at=t0)
    async with db.transaction() as session:
        assert await unlock(session, "ada@example.com")
    assert await attempt(db, PASSWORD, at=t0 + timedelta(seconds=5)) == "ok"
    async with db.session() as session:
        rows = (
            await session.execute(
                select(LoginAttempt.outcome, func.count()).group_by(LoginAttempt.outcome)
            )
        ).all()
    assert dict(rows) == {"failed": 3, "throttled": 1, "success": 1}


async def test_password_change_during_a_login_wins(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If an admin changes the password (or disables the user) while a login is checking the
    old one, the login fails and the new password stays."""
    from keel.identity import User

    real_verify = throttle_module.verify_password
    new_hash = await hashed("a brand new passphrase")

    async def verify_then_admin_acts(password: str, stored: str | None) -> Any:
        result = await real_verify(password, stored)
        async with db.transaction() as session:
            user = (await session.scalars(select(User))).one()
            user.password_hash = new_hash
        return result

    monkeypatch.setattr(throttle_module, "verify_password", verify_then_admin_acts)
    assert await attempt(db, PASSWORD) == "failed"
    async with db.session() as session:
        assert (await session.scalars(select(User.password_hash))).one() == new_hash


async def test_successes_do_not_fill_the_address_limit(db: Database) -> None:
    """Many people signing in correctly from one address (an office NAT) are never throttled."""
    results = [
        await attempt(db, PASSWORD, at=T0 + timedelta(minutes=i))
        for i in range(POLICY.address_failures + 4)
    ]
    assert set(results) == {"ok"}


def test_addresses_are_grouped_sensibly() -> None:
    """IPv6 clients are keyed by /64 (one client holds a whole /64); IPv4-mapped IPv6 is IPv4."""
    from keel.identity.throttle import address_key

    assert address_key("2001:db8:1:2::1") == address_key("2001:db8:1:2:ffff::9")
    assert address_key("2001:db8:1:2::1") != address_key("2001:db8:1:3::1")
    assert address_key("::ffff:198.51.100.7") == address_key("198.51.100.7") == "ip:198.51.100.7"
    assert address_key(None) is None


async def test_parallel_guesses_from_several_processes(
    config: Config, db: Database, checks: list[str]
) -> None:
    """The limit holds across processes too (separate engines share only the database)."""
    engines = [Database(config) for _ in range(4)]

    async def guess(index: int) -> str:
        try:
            await login(
                engines[index % 4],
                email="ada@example.com",
                password=f"guess {index:04d} wrong",
                client_ip=f"198.51.100.{index}",
                policy=POLICY,
                now=T0,
            )
        except LoginFailed:
            return "failed"
        except LoginThrottled:
            return "throttled"
        return "ok"

    try:
        results = await asyncio.gather(*(guess(i) for i in range(24)))
    finally:
        for engine in engines:
            await engine.dispose()
    assert len(checks) <= POLICY.account_failures
    assert "ok" not in results
