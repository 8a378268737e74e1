"""Browser sessions over HTTP: cookie flags, fixation, CSRF, logout, timeouts, revocation."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy import select, update

from keel import Config, Keel, create_app
from keel.identity import create_user
from keel.identity.sessions import BrowserSession
from tests.conftest import client_for, hashed
from tests.protection.test_guard import assert_problem

PASSWORD = "correct horse battery staple"


@pytest.fixture
async def auth_app(config: Config) -> AsyncIterator[tuple[FastAPI, Keel]]:
    """Keel's app with two users, ada and bob."""
    application = create_app(config, configure_logs=False)
    async with LifespanManager(application):
        keel: Keel = application.state.keel
        async with keel.db.transaction() as session:
            for name in ("ada", "bob"):
                await create_user(
                    session, email=f"{name}@example.com", password_hash=await hashed(PASSWORD)
                )
        yield application, keel


@pytest.fixture
def browser(auth_app: tuple[FastAPI, Keel]) -> Callable[[], httpx.AsyncClient]:
    """A fresh browser (own cookie jar) for the app."""
    return lambda: client_for(auth_app[0])


async def sign_in(http: httpx.AsyncClient, email: str = "ada@example.com") -> str:
    """Sign in; returns the CSRF token."""
    response = await http.post("/api/v1/auth/session", json={"email": email, "password": PASSWORD})
    assert response.status_code == 201, response.text
    return str(response.json()["csrf_token"])


async def test_sign_in_sets_a_safe_cookie(browser: Callable[[], httpx.AsyncClient]) -> None:
    """The session cookie is HttpOnly, SameSite=Lax, path /, and the answer is not cached."""
    async with browser() as http:
        response = await http.post(
            "/api/v1/auth/session", json={"email": "ADA@example.com", "password": PASSWORD}
        )
        assert response.status_code == 201
        cookie = response.headers["set-cookie"]
        assert cookie.startswith("keel_session=")
        assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/" in cookie
        assert response.headers["cache-control"] == "no-store"
        body = response.json()
        assert body["user"]["email"] == "ada@example.com"
        assert "password" not in response.text
        me = await http.get("/api/v1/auth/session")
        assert me.json()["user"]["email"] == "ada@example.com"


async def test_wrong_password_sets_no_cookie(browser: Callable[[], httpx.AsyncClient]) -> None:
    """A failed sign-in is a 401 problem and leaves the browser anonymous."""
    async with browser() as http:
        response = await http.post(
            "/api/v1/auth/session", json={"email": "ada@example.com", "password": "nope" * 4}
        )
        assert_problem(response, 401, "login-failed")
        assert "set-cookie" not in response.headers
        assert_problem(await http.get("/api/v1/auth/session"), 401)


async def test_https_cookie_is_host_prefixed_and_secure(
    make_config: Callable[..., Config],
) -> None:
    """Behind https the cookie is `__Host-` prefixed and Secure."""
    application = create_app(make_config(public_url="https://ops.example"), configure_logs=False)
    async with LifespanManager(application):
        keel: Keel = application.state.keel
        async with keel.db.transaction() as session:
            await create_user(
                session, email="ada@example.com", password_hash=await hashed(PASSWORD)
            )
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=application), base_url="https://ops.example"
        ) as http:
            response = await http.post(
                "/api/v1/auth/session", json={"email": "ada@example.com", "password": PASSWORD}
            )
    cookie = response.headers["set-cookie"]
    assert cookie.startswith("__Host-keel_session=")
    assert "Secure" in cookie


async def test_session_fixation_is_defeated(
    browser: Callable[[], httpx.AsyncClient], auth_app: tuple[FastAPI, Keel]
) -> None:
    """Signing in with a cookie already in the jar (planted or old) issues a new token and
    revokes the old session."""
    async with browser() as http:
        await sign_in(http)
        planted = http.cookies["keel_session"]
        await sign_in(http)
        fresh = http.cookies["keel_session"]
    assert fresh != planted
    async with browser() as attacker:
        attacker.cookies.set("keel_session", planted)
        assert_problem(await attacker.get("/api/v1/auth/session"), 401)


async def test_csrf_missing_or_wrong_is_refused_and_changes_nothing(
    browser: Callable[[], httpx.AsyncClient], auth_app: tuple[FastAPI, Keel]
) -> None:
    """A cookie-authenticated unsafe request needs the session's CSRF token."""
    async with browser() as http:
        csrf = await sign_in(http)
        sessions = (await http.get("/api/v1/auth/sessions")).json()
        missing = await http.delete("/api/v1/auth/session")
        assert_problem(missing, 403, "csrf-failed")
        wrong = await http.delete("/api/v1/auth/session", headers={"x-csrf-token": "x" * 43})
        assert_problem(wrong, 403, "csrf-failed")
        assert (await http.get("/api/v1/auth/session")).status_code == 200, "still signed in"
        assert (await http.get("/api/v1/auth/sessions")).json() == sessions
        ok = await http.delete("/api/v1/auth/session", headers={"x-csrf-token": csrf})
        assert ok.status_code == 204
        assert_problem(await http.get("/api/v1/auth/session"), 401)


async def test_forged_cookie_is_anonymous(browser: Callable[[], httpx.AsyncClient]) -> None:
    """A made-up or malformed session cookie is no session, and not an error."""
    async with browser() as http:
        http.cookies.set("keel_session", "forged-token")
        assert_problem(await http.get("/api/v1/auth/session"), 401)
        response = await http.get("/healthz", headers={"cookie": 'keel_session="\\x; ;;='})
        assert response.status_code == 200


async def test_list_and_revoke_my_sessions_only(
    browser: Callable[[], httpx.AsyncClient],
) -> None:
    """I see my sessions, can end another of mine, and get 404 for someone else's."""
    async with browser() as laptop, browser() as phone, browser() as bob:
        laptop_csrf = await sign_in(laptop)
        await sign_in(phone)
        await sign_in(bob, "bob@example.com")
        mine = (await laptop.get("/api/v1/auth/sessions")).json()
        assert len(mine) == 2
        assert sum(1 for s in mine if s["current"]) == 1
        phone_id = next(s["id"] for s in mine if not s["current"])
        bob_id = (await bob.get("/api/v1/auth/session")).json()["session_id"]
        refused = await laptop.delete(
            f"/api/v1/auth/sessions/{bob_id}", headers={"x-csrf-token": laptop_csrf}
        )
        assert_problem(refused, 404)
        assert (await bob.get("/api/v1/auth/session")).status_code == 200
        ended = await laptop.delete(
            f"/api/v1/auth/sessions/{phone_id}", headers={"x-csrf-token": laptop_csrf}
        )
        assert ended.status_code == 204
        assert_problem(await phone.get("/api/v1/auth/session"), 401)


async def test_idle_and_absolute_timeouts(
    browser: Callable[[], httpx.AsyncClient], auth_app: tuple[FastAPI, Keel]
) -> None:
    """A session unused for longer than the idle timeout, or older than its absolute
    lifetime, no longer authenticates."""
    keel = auth_app[1]
    async with browser() as http:
        await sign_in(http)
        old = datetime.now(UTC) - timedelta(minutes=keel.config.session_idle_minutes + 1)
        async with keel.db.transaction() as session:
            await session.execute(update(BrowserSession).values(last_seen_at=old))
        assert_problem(await http.get("/api/v1/auth/session"), 401)
    async with browser() as http:
        await sign_in(http)
        async with keel.db.transaction() as session:
            await session.execute(
                update(BrowserSession)
                .where(BrowserSession.revoked_at.is_(None))
                .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
            )
        assert_problem(await http.get("/api/v1/auth/session"), 401)


async def test_only_a_hash_of_the_token_is_stored(
    browser: Callable[[], httpx.AsyncClient], auth_app: tuple[FastAPI, Keel]
) -> None:
    """The database never holds the cookie value itself."""
    async with browser() as http:
        await sign_in(http)
        token = http.cookies["keel_session"]
    async with auth_app[1].db.session() as session:
        stored = (await session.scalars(select(BrowserSession.token_hash))).all()
    assert token not in stored
    assert all(len(value) == 64 for value in stored)


async def test_sign_out_everywhere_and_disable_end_sessions(
    browser: Callable[[], httpx.AsyncClient], auth_app: tuple[FastAPI, Keel]
) -> None:
    """An admin can end all of a user's sessions; disabling a user ends them too."""
    from keel.identity.service import disable_user, sign_out_everywhere

    keel = auth_app[1]
    async with browser() as laptop, browser() as phone, browser() as bob:
        await sign_in(laptop)
        await sign_in(phone)
        await sign_in(bob, "bob@example.com")
        async with keel.db.transaction() as session:
            assert await sign_out_everywhere(session, "ada@example.com", config=keel.config) == 2
        assert_problem(await laptop.get("/api/v1/auth/session"), 401)
        assert_problem(await phone.get("/api/v1/auth/session"), 401)
        assert (await bob.get("/api/v1/auth/session")).status_code == 200
        async with keel.db.transaction() as session:
            await disable_user(session, "bob@example.com", config=keel.config)
        assert_problem(await bob.get("/api/v1/auth/session"), 401)
    async with keel.db.session() as session:
        live = (
            await session.scalars(select(BrowserSession).where(BrowserSession.revoked_at.is_(None)))
        ).all()
    assert live == []
