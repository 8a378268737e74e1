"""Users: create, find, list, disable and authenticate, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

import bcrypt
import pytest
from sqlalchemy import func, select

from keel import Config
from keel.core.database import Database
from keel.core.errors import Conflict, NotFound, ValidationFailed
from keel.core.migrate import upgrade
from keel.identity import (
    PasswordRejected,
    User,
    UserStatus,
    create_user,
    disable_user,
    get_user_by_email,
    list_users,
    login,
    prepare_password,
)
from tests.conftest import hashed

PASSWORD = "correct horse battery staple"


@pytest.fixture
def db(migrated_db: Database) -> Database:
    """A migrated database."""
    return migrated_db


async def count_users(db: Database) -> int:
    """Rows in the users table."""
    async with db.session() as session:
        return int(await session.scalar(select(func.count()).select_from(User)) or 0)


async def test_create_and_find_case_insensitively(db: Database) -> None:
    """Emails are stored normalised; lookups ignore case and surrounding spaces."""
    async with db.transaction() as session:
        user = await create_user(
            session, email="  Ada@Example.COM ", password_hash=await hashed(PASSWORD)
        )
    assert user.email == "ada@example.com"
    assert user.display_name == "ada"
    assert user.password_hash is not None and PASSWORD not in user.password_hash
    async with db.session() as session:
        found = await get_user_by_email(session, "ADA@example.com")
    assert found is not None and found.id == user.id


async def test_duplicate_email_is_a_conflict_and_changes_nothing(db: Database) -> None:
    """A second user with the same email (any case) is refused with 409."""
    async with db.transaction() as session:
        await create_user(session, email="ada@example.com", password_hash=await hashed(PASSWORD))
    with pytest.raises(Conflict, match="already exists"):
        async with db.transaction() as session:
            await create_user(
                session, email="ADA@example.com", password_hash=await hashed(PASSWORD)
            )
    assert await count_users(db) == 1


async def test_concurrent_creates_of_one_email_leave_one_user(config: Config) -> None:
    """Racing creates of the same email (separate engines, like separate processes) leave
    exactly one user; the losers get Conflict, not a crash."""
    dbs = [Database(config) for _ in range(3)]
    await upgrade(dbs[0])

    async def attempt(db: Database) -> str:
        try:
            async with db.transaction() as session:
                await create_user(
                    session, email="race@example.com", password_hash=await hashed(PASSWORD)
                )
        except Conflict:
            return "conflict"
        return "created"

    try:
        outcomes = await asyncio.gather(*(attempt(db) for db in dbs))
        assert sorted(outcomes) == ["conflict", "conflict", "created"]
        assert await count_users(dbs[0]) == 1
    finally:
        for db in dbs:
            await db.dispose()


@pytest.mark.parametrize("email", ["no-at-sign", "two@@example.com", "a@b", "sp ace@example.com"])
async def test_malformed_email_is_refused(db: Database, email: str) -> None:
    """A malformed email is a validation error and nothing is stored."""
    with pytest.raises(ValidationFailed):
        async with db.transaction() as session:
            await create_user(session, email=email, password_hash=await hashed(PASSWORD))
    assert await count_users(db) == 0


async def test_weak_password_is_refused_and_nothing_stored(db: Database) -> None:
    """The policy runs before anything is written."""
    with pytest.raises(PasswordRejected):
        await prepare_password("password", email="ada@example.com")
    assert await count_users(db) == 0


async def test_imported_bcrypt_user_is_rehashed_on_login(db: Database) -> None:
    """A user migrated with a bcrypt hash signs in, and the stored hash becomes argon2id."""
    async with db.transaction() as session:
        user = await create_user(session, email="old@example.com", password_hash=None)
        user.password_hash = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
    signed_in = await login(db, email="old@example.com", password=PASSWORD, client_ip=None)
    assert signed_in.last_login_at is not None
    async with db.session() as session:
        stored = await get_user_by_email(session, "old@example.com")
    assert stored is not None and stored.password_hash is not None
    assert stored.password_hash.startswith("$argon2id$")


async def test_list_pages_by_keyset(db: Database) -> None:
    """Listing follows creation order, filters by status, and pages with `after`."""
    async with db.transaction() as session:
        for index in range(5):
            await create_user(session, email=f"user{index}@example.com", password_hash=None)
        await disable_user(session, "user3@example.com", config=db.config)
    async with db.session() as session:
        first = await list_users(session, limit=2)
        rest = await list_users(session, limit=10, after=first[-1].id)
        disabled = await list_users(session, status=UserStatus.DISABLED)
        with pytest.raises(ValidationFailed):
            await list_users(session, status="deleted")
    assert [u.email for u in [*first, *rest]] == [f"user{i}@example.com" for i in range(5)]
    assert [u.email for u in disabled] == ["user3@example.com"]


async def test_disable_unknown_user_is_not_found(db: Database) -> None:
    """Disabling a user that does not exist is a 404-class error."""
    with pytest.raises(NotFound):
        async with db.transaction() as session:
            await disable_user(session, "ghost@example.com", config=db.config)
