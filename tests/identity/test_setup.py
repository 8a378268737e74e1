"""First-owner setup: one link, one use, one hour; never a default password."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy import func, select

from keel import Config, Keel, create_app
from keel.core.database import Database
from keel.core.errors import Conflict
from keel.identity import User
from keel.identity.setup import (
    SetupTokenInvalid,
    complete_setup,
    issue_setup_token,
    setup_link,
)
from tests.conftest import client_for, hashed
from tests.protection.test_guard import assert_problem

PASSWORD = "correct horse battery staple"


async def users(db: Database) -> int:
    """How many users exist."""
    async with db.session() as session:
        return int(await session.scalar(select(func.count()).select_from(User)) or 0)


async def test_token_works_once(migrated_db: Database) -> None:
    """A token creates the first account once, as its owner; a second use is refused."""
    from keel.identity.access import user_roles

    async with migrated_db.transaction() as session:
        token = await issue_setup_token(session)
    assert token is not None
    async with migrated_db.transaction() as session:
        first = await complete_setup(
            session, token=token, email="owner@example.com", password_hash=await hashed(PASSWORD)
        )
        assert await user_roles(session, first.id) == ["owner"]
    with pytest.raises(SetupTokenInvalid):
        async with migrated_db.transaction() as session:
            await complete_setup(
                session, token=token, email="x@example.com", password_hash=await hashed(PASSWORD)
            )
    assert await users(migrated_db) == 1
    async with migrated_db.transaction() as session:
        assert await issue_setup_token(session) is None, "no new links once accounts exist"


async def test_expired_wrong_and_superseded_tokens_are_refused(migrated_db: Database) -> None:
    """Expired after an hour, unknown tokens, and older links (a newer one was issued) fail."""
    now = datetime.now(UTC)
    async with migrated_db.transaction() as session:
        old = await issue_setup_token(session, now=now)
    async with migrated_db.transaction() as session:
        new = await issue_setup_token(session, now=now)
    assert old and new
    for token, at in ((old, now), ("forged-token-value-123", now), (new, now + timedelta(hours=1))):
        with pytest.raises(SetupTokenInvalid):
            async with migrated_db.transaction() as session:
                await complete_setup(
                    session,
                    token=token,
                    email="owner@example.com",
                    password_hash=await hashed(PASSWORD),
                    now=at,
                )
    assert await users(migrated_db) == 0


async def test_racing_setups_create_one_account(config: Config, migrated_db: Database) -> None:
    """Two browsers using the same link at once: one account, the other refused."""
    link = await setup_link(migrated_db, "http://127.0.0.1:8000")
    assert link is not None
    token = link.split("#token=")[1]
    engines = [Database(config) for _ in range(3)]

    async def use(db: Database, index: int) -> str:
        try:
            async with db.transaction() as session:
                await complete_setup(
                    session,
                    token=token,
                    email=f"owner{index}@example.com",
                    password_hash=await hashed(PASSWORD),
                )
        except (SetupTokenInvalid, Conflict):
            return "refused"
        return "created"

    try:
        outcomes = await asyncio.gather(*(use(db, i) for i, db in enumerate(engines)))
    finally:
        for db in engines:
            await db.dispose()
    assert sorted(outcomes) == ["created", "refused", "refused"]
    assert await users(migrated_db) == 1


async def test_setup_over_http_signs_in(config: Config) -> None:
    """The page is served, the API creates the owner and signs them in; bad tokens write
    nothing."""
    application = create_app(config, configure_logs=False)
    async with LifespanManager(application), client_for(application) as http:
        keel: Keel = application.state.keel
        page = await http.get("/setup")
        assert page.status_code == 200
        assert 'src="/static/keel-setup.js"' in page.text
        assert (await http.get("/static/keel-setup.js")).status_code == 200
        body = {"email": "owner@example.com", "password": PASSWORD}
        refused = await http.post(
            "/api/v1/auth/setup", json={**body, "token": "not-the-token-at-all"}
        )
        assert_problem(refused, 403, "setup-token-invalid")
        assert await users(keel.db) == 0
        weak = await http.post(
            "/api/v1/auth/setup", json={**body, "password": "short", "token": "x" * 20}
        )
        assert_problem(weak, 422, "weak-password")
        link = await setup_link(keel.db, "http://127.0.0.1:8000")
        assert link is not None
        token = link.split("#token=")[1]
        created = await http.post("/api/v1/auth/setup", json={**body, "token": token})
        assert created.status_code == 201, created.text
        assert created.json()["user"]["email"] == "owner@example.com"
        me = await http.get("/api/v1/auth/session")
        assert me.json()["user"]["email"] == "owner@example.com"
        again = await http.post("/api/v1/auth/setup", json={**body, "token": token})
        assert_problem(again, 403)


def test_link_is_only_in_the_url_fragment() -> None:
    """The token rides in the fragment, which browsers never send to a server."""
    link = asyncio.run(_link_for_fresh_db())
    assert "/setup#token=" in link
    assert "?" not in link


async def _link_for_fresh_db() -> str:
    import tempfile

    from keel.core.migrate import upgrade

    db = Database(Config(data_dir=tempfile.mkdtemp()))
    try:
        await upgrade(db)
        link = await setup_link(db, "http://127.0.0.1:8000/")
    finally:
        await db.dispose()
    assert link is not None
    return link
