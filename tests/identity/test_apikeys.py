"""API keys over HTTP: shown once, stored as digests, scoped, narrowed, revoked, tenant-bound."""

from __future__ import annotations

import asyncio
import re
import time
import weakref
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from asgi_lifespan import LifespanManager
from sqlalchemy import select, update

from keel import Keel, create_app
from keel.core.ids import secret_digest
from keel.identity.access import user_permissions
from keel.identity.models import ApiKey, User
from keel.identity.runtime import identity_runtime
from keel.identity.tokens import issue_tokens
from tests.conftest import client_for
from tests.identity.support import Org, json_of
from tests.protection.test_guard import assert_problem

KEY = re.compile(r"keel_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
NEW_USER = {"email": "fresh@example.com", "roles": []}
_TOKENS: weakref.WeakKeyDictionary[Keel, dict[str, str]] = weakref.WeakKeyDictionary()


async def signed_in(org: Org, email: str) -> httpx.AsyncClient:
    """A client sending a bearer access token of `email`, issued as `POST /auth/token` would
    but without its slow password check; one token per test and user.

    Not for a user whose tokens the test has revoked (by a role or status change)."""
    tokens = _TOKENS.setdefault(org.keel, {})
    if email not in tokens:
        runtime = identity_runtime(org.keel)
        async with org.keel.db.transaction() as session:
            user = await session.get(User, org.users[email])
            assert user is not None
            held = await user_permissions(session, runtime.catalog, user)
            issued = await issue_tokens(session, runtime.keys, org.keel.config, user, held)
        tokens[email] = issued.access_token
    return org.client(authorization=f"Bearer {tokens[email]}")


async def make_key(org: Org, email: str, scopes: list[str], **body: Any) -> tuple[str, str]:
    """A key created by `email` through the API: (its id, its plaintext)."""
    async with await signed_in(org, email) as http:
        created = json_of(
            await http.post("/api/v1/api-keys", json={"name": "ci", "scopes": scopes, **body})
        )
    return str(created["key"]["id"]), str(created["secret"])


def with_key(org: Org, secret: str) -> httpx.AsyncClient:
    """A client presenting `secret` as a bearer credential."""
    return org.client(authorization=f"Bearer {secret}")


async def last_used(org: Org, key_id: str) -> datetime | None:
    """The key's `last_used_at`, as stored."""
    async with org.keel.db.session() as session:
        return await session.scalar(select(ApiKey.last_used_at).where(ApiKey.id == key_id))


async def test_a_key_is_shown_once_and_stored_as_a_digest(org: Org) -> None:
    """The secret appears only in the create answer; the row holds its SHA-256 and the prefix."""
    async with await signed_in(org, "admin-a@example.com") as http:
        response = await http.post(
            "/api/v1/api-keys", json={"name": "deploy", "scopes": ["users:read"]}
        )
        assert response.status_code == 201, response.text
        assert response.headers["cache-control"] == "no-store"
        body = response.json()
        match = KEY.fullmatch(body["secret"])
        assert match is not None, body["secret"]
        prefix, secret = match.groups()
        key = body["key"]
        assert key["prefix"] == prefix and key["name"] == "deploy"
        assert key["user_id"] == org.users["admin-a@example.com"]
        assert key["tenant_id"] == org.tenants["acme"]
        assert key["scopes"] == ["users:read"]
        assert "secret" not in key
        listed = await http.get("/api/v1/api-keys")
        shown = await http.get(f"/api/v1/api-keys/{key['id']}")
    assert [item["id"] for item in json_of(listed)["items"]] == [key["id"]]
    assert json_of(shown)["prefix"] == prefix
    for later in (listed, shown):
        assert secret not in later.text and "secret" not in later.json()
    async with org.keel.db.session() as session:
        row = (await session.execute(select(ApiKey.__table__))).one()._asdict()
    assert row["secret_hash"] == secret_digest(secret) != secret
    assert not [column for column, value in row.items() if secret in str(value)]


async def test_bearer_and_header_both_work_and_last_use_is_written_once(org: Org) -> None:
    """`Authorization: Bearer keel_…` and `X-API-Key` authenticate as the key's user;
    `last_used_at` is set on first use and not rewritten by a use within the minute."""
    key_id, secret = await make_key(org, "admin-a@example.com", ["users:read"])
    assert await last_used(org, key_id) is None
    async with with_key(org, secret) as http:
        assert (await http.get("/api/v1/users")).status_code == 200
        me = json_of(await http.get("/api/v1/auth/session"))
    assert me["via"] == "api_key" and me["user"]["email"] == "admin-a@example.com"
    assert me["permissions"] == ["users:read"]
    first = await last_used(org, key_id)
    assert first is not None and datetime.now(UTC) - first < timedelta(seconds=30)
    async with org.client(**{"x-api-key": secret}) as http:
        assert (await http.get("/api/v1/users")).status_code == 200
    assert await last_used(org, key_id) == first


async def test_scopes_are_enforced_and_cannot_exceed_the_creator(org: Org) -> None:
    """A users:read key reads but cannot create users (its admin owner could); a key cannot
    be made with a permission its creator lacks, an unknown one, or none."""
    _, secret = await make_key(org, "admin-a@example.com", ["users:read"])
    async with with_key(org, secret) as http:
        assert (await http.get("/api/v1/users")).status_code == 200
        assert_problem(await http.post("/api/v1/users", json=NEW_USER), 403)
    async with await signed_in(org, "viewer-a@example.com") as http:
        escalate = await http.post(
            "/api/v1/api-keys", json={"name": "x", "scopes": ["users:manage"]}
        )
        assert_problem(escalate, 403)
    async with await signed_in(org, "admin-a@example.com") as http:
        unknown = await http.post(
            "/api/v1/api-keys", json={"name": "x", "scopes": ["users:read", "users:fly"]}
        )
        errors = assert_problem(unknown, 422)["errors"]
        assert [(e["pointer"], e["code"]) for e in errors] == [("/scopes", "unknown_permission")]
        assert_problem(await http.post("/api/v1/api-keys", json={"name": "x", "scopes": []}), 422)
        listed = json_of(await http.get("/api/v1/api-keys"))["items"]
    assert len(listed) == 1, "no refused key was stored"


async def test_a_personal_key_narrows_to_what_its_user_still_holds(org: Org) -> None:
    """Demoting the key's user takes the rights away from the key within a second (at once in
    the process that made the change); disabling the user makes the key a 401."""
    _, secret = await make_key(org, "admin-a@example.com", ["users:manage", "users:read"])
    admin_a = org.users["admin-a@example.com"]
    async with with_key(org, secret) as key, await signed_in(org, "owner@example.com") as owner:
        assert (await key.post("/api/v1/users", json=NEW_USER)).status_code == 201
        json_of(await owner.patch(f"/api/v1/users/{admin_a}", json={"roles": ["viewer"]}))
        second = {**NEW_USER, "email": "second@example.com"}
        deadline = time.monotonic() + 1.0
        while (response := await key.post("/api/v1/users", json=second)).status_code != 403:
            assert response.status_code != 201, "the demoted key created a user"
            assert time.monotonic() < deadline, response.text
            await asyncio.sleep(0.05)
        assert_problem(response, 403)
        json_of(await owner.patch(f"/api/v1/users/{admin_a}", json={"status": "disabled"}))
        assert_problem(await key.get("/api/v1/users"), 401)


async def test_a_revoked_key_is_refused_here_at_once_and_elsewhere_within_a_second(
    org: Org,
) -> None:
    """DELETE revokes: this process refuses the key on the next request, and another process
    on the same database (which had the key cached) within the revocation poll."""
    key_id, secret = await make_key(org, "admin-a@example.com", ["users:read"])
    other = create_app(org.keel.config, configure_logs=False)
    async with (
        LifespanManager(other),
        client_for(other) as elsewhere,
        with_key(org, secret) as here,
    ):
        elsewhere.headers["authorization"] = f"Bearer {secret}"
        assert (await elsewhere.get("/api/v1/users")).status_code == 200
        assert (await here.get("/api/v1/users")).status_code == 200
        async with await signed_in(org, "admin-a@example.com") as admin:
            revoked = await admin.delete(f"/api/v1/api-keys/{key_id}")
            assert revoked.status_code == 204
            assert json_of(await admin.get(f"/api/v1/api-keys/{key_id}"))["revoked_at"]
        assert_problem(await here.get("/api/v1/users"), 401)
        started = time.monotonic()
        while (response := await elsewhere.get("/api/v1/users")).status_code == 200:
            assert time.monotonic() - started < 1.5, "still accepted in the other process"
            await asyncio.sleep(0.05)
        assert_problem(response, 401)


async def test_expiry(org: Org) -> None:
    """A key cannot be made already expired (nor with a time zone-less expiry); one whose
    expiry passes is refused."""
    async with await signed_in(org, "admin-a@example.com") as http:
        past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
        refused = await http.post(
            "/api/v1/api-keys", json={"name": "x", "scopes": ["users:read"], "expires_at": past}
        )
        assert assert_problem(refused, 422)["errors"][0]["pointer"] == "/expires_at"
        naive = await http.post(
            "/api/v1/api-keys",
            json={"name": "x", "scopes": ["users:read"], "expires_at": "2999-01-01T00:00:00"},
        )
        assert assert_problem(naive, 422)["errors"][0]["code"] == "naive"
    soon = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    key_id, secret = await make_key(org, "admin-a@example.com", ["users:read"], expires_at=soon)
    async with with_key(org, secret) as http:
        assert (await http.get("/api/v1/users")).status_code == 200
        async with org.keel.db.transaction() as session:
            await session.execute(
                update(ApiKey)
                .where(ApiKey.id == key_id)
                .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
            )
        identity_runtime(org.keel).api_keys._cache.clear()
        assert_problem(await http.get("/api/v1/users"), 401)


async def test_forged_and_malformed_keys_are_401(org: Org) -> None:
    """A wrong secret behind a real prefix (cached or not), an unknown prefix and a malformed
    key are each a 401 problem, sent either way, never a 500."""
    _, secret = await make_key(org, "admin-a@example.com", ["users:read"])
    prefix = secret.split("_")[1]
    forged = [
        f"keel_{prefix}_{'A' * 43}",
        f"keel_{'0' * 12}_{secret[-43:]}",
        "keel_xyz",
        f"keel_{prefix}_{secret[-42:]}",
        secret + "x",
    ]
    async with with_key(org, secret) as http:
        assert (await http.get("/api/v1/users")).status_code == 200, "the prefix is now cached"
    for presented in forged:
        for headers in ({"authorization": f"Bearer {presented}"}, {"x-api-key": presented}):
            async with org.client(**headers) as http:
                assert_problem(await http.get("/api/v1/users"), 401)


async def test_a_tenant_service_key_acts_in_its_tenant_only(org: Org) -> None:
    """The owner makes a service key for acme: it has no user, lists acme's users and cannot
    see bolt's. Bolt's admin cannot make one for acme (404), a viewer none at all (403)."""
    async with await signed_in(org, "owner@example.com") as http:
        created = json_of(
            await http.post(
                "/api/v1/api-keys",
                json={"name": "etl", "scopes": ["users:read"], "service_tenant": "acme"},
            )
        )
    assert created["key"]["user_id"] is None
    assert created["key"]["tenant_id"] == org.tenants["acme"]
    async with with_key(org, created["secret"]) as http:
        users = json_of(await http.get("/api/v1/users"))["items"]
        assert {u["tenant_id"] for u in users} == {org.tenants["acme"]}
        assert len(users) == 3
        assert_problem(await http.get(f"/api/v1/users/{org.users['admin-b@example.com']}"), 404)
        assert (await http.get(f"/api/v1/users/{org.users['admin-a@example.com']}")).is_success
        assert_problem(await http.get("/api/v1/auth/session"), 401)  # not a signed-in person
    service = {"name": "etl", "scopes": ["api-keys:create"], "service_tenant": "acme"}
    async with await signed_in(org, "admin-b@example.com") as http:
        assert_problem(await http.post("/api/v1/api-keys", json=service), 404)
    async with await signed_in(org, "viewer-a@example.com") as http:
        assert_problem(await http.post("/api/v1/api-keys", json=service), 403)


async def test_keys_are_confined_to_their_tenant_and_owner(org: Org) -> None:
    """Bolt's admin gets 404 for acme's key (show and revoke); a viewer lists only its own
    keys; acme's admin (api-keys:manage) lists all of acme's and none of bolt's."""
    admin_key, admin_secret = await make_key(org, "admin-a@example.com", ["users:read"])
    viewer_key, _ = await make_key(org, "viewer-a@example.com", ["api-keys:create"])
    bolt_key, _ = await make_key(org, "admin-b@example.com", ["users:read"])
    async with await signed_in(org, "admin-b@example.com") as http:
        assert_problem(await http.get(f"/api/v1/api-keys/{admin_key}"), 404)
        assert_problem(await http.delete(f"/api/v1/api-keys/{admin_key}"), 404)
        assert [k["id"] for k in json_of(await http.get("/api/v1/api-keys"))["items"]] == [bolt_key]
    async with with_key(org, admin_secret) as http:
        assert (await http.get("/api/v1/users")).status_code == 200, "not revoked"
    async with await signed_in(org, "viewer-a@example.com") as http:
        assert [k["id"] for k in json_of(await http.get("/api/v1/api-keys"))["items"]] == [
            viewer_key
        ]
        assert_problem(await http.get(f"/api/v1/api-keys/{admin_key}"), 404)
        assert_problem(await http.delete(f"/api/v1/api-keys/{admin_key}"), 404)
    async with await signed_in(org, "admin-a@example.com") as http:
        listed = {k["id"] for k in json_of(await http.get("/api/v1/api-keys"))["items"]}
    assert listed == {admin_key, viewer_key}


async def test_a_service_key_without_manage_sees_only_itself(org: Org) -> None:
    """A service key holding api-keys:create but not api-keys:manage has no user whose keys
    are "its own": it sees (and can revoke) itself only, not its tenant's other service keys."""
    async with await signed_in(org, "owner@example.com") as http:
        keys = [
            json_of(
                await http.post(
                    "/api/v1/api-keys",
                    json={"name": name, "scopes": scopes, "service_tenant": "acme"},
                )
            )
            for name, scopes in (("lister", ["api-keys:create"]), ("etl", ["users:read"]))
        ]
    lister, etl = keys
    async with with_key(org, lister["secret"]) as http:
        listed = json_of(await http.get("/api/v1/api-keys"))["items"]
        assert [k["id"] for k in listed] == [lister["key"]["id"]]
        assert_problem(await http.get(f"/api/v1/api-keys/{etl['key']['id']}"), 404)
        assert_problem(await http.delete(f"/api/v1/api-keys/{etl['key']['id']}"), 404)
    async with with_key(org, etl["secret"]) as http:
        assert (await http.get("/api/v1/users")).status_code == 200, "not revoked"
