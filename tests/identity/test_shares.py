"""Share links over HTTP: one resource, the sharer's rights at most, use limits, revocation.

No Keel route serves a shareable resource yet, so the app here carries a tiny module with
`GET /api/v1/things/{thing_id}` (guarded with `resource=("thing", "thing_id")`) and
`GET /api/v1/things2/{thing_id}` (guarded without a resource).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import httpx
import pytest
from fastapi import APIRouter, Depends
from sqlalchemy import func, select, update

from keel import Config, Keel
from keel.core.ids import secret_digest
from keel.core.modules import KeelModule
from keel.identity.access import require
from keel.identity.models import ShareLink, ShareUse
from keel.identity.principal import Principal
from tests.identity.support import Org, build_org, json_of
from tests.identity.test_apikeys import signed_in
from tests.protection.test_guard import assert_problem

TOKEN = re.compile(r"keel_sh_[A-Za-z0-9_-]{43}")
SharedThing = Annotated[Principal, Depends(require("users:read", resource=("thing", "thing_id")))]
AnyThing = Annotated[Principal, Depends(require("users:read"))]


def things_router(_keel: Keel) -> APIRouter:
    """A shareable resource (`things`) and a route that names no resource (`things2`)."""
    router = APIRouter(prefix="/api/v1", tags=["things"])

    @router.get("/things/{thing_id}")
    async def thing(thing_id: str, principal: SharedThing) -> dict[str, Any]:
        return {"id": thing_id, "via": principal.via, "permissions": sorted(principal.permissions)}

    @router.get("/things2/{thing_id}")
    async def thing2(thing_id: str, principal: AnyThing) -> dict[str, Any]:
        return {"id": thing_id, "via": principal.via}

    return router


THINGS = KeelModule(name="things", routers=(things_router,))


@pytest.fixture
async def org(make_config: Callable[..., Config]) -> AsyncIterator[Org]:
    """support's organisation (tenants acme and bolt, `PEOPLE`) on an app serving `THINGS`."""
    async for built in build_org(make_config(rate_limit_login="10000/minute"), [THINGS]):
        yield built


def link(
    resource_id: str = "t1", permissions: tuple[str, ...] = ("users:read",), **more: Any
) -> dict[str, Any]:
    """The body creating a share link to thing `resource_id`."""
    return {
        "resource_type": "thing",
        "resource_id": resource_id,
        "permissions": list(permissions),
        **more,
    }


async def make_share(org: Org, email: str = "admin-a@example.com", **more: Any) -> tuple[str, str]:
    """A link made by `email` through the API: (its id, its token)."""
    async with await signed_in(org, email) as http:
        created = json_of(await http.post("/api/v1/shares", json=link(**more)))
    return str(created["share"]["id"]), str(created["token"])


def with_share(org: Org, token: str) -> httpx.AsyncClient:
    """A client without an account, presenting `token` in `X-Share-Token`."""
    return org.client(**{"x-share-token": token})


async def use_count(org: Org, share_id: str) -> tuple[int, int]:
    """(recorded uses in keel_share_uses, the link's `uses` counter)."""
    async with org.keel.db.session() as session:
        recorded = await session.scalar(
            select(func.count()).select_from(ShareUse).where(ShareUse.share_id == share_id)
        )
        counter = await session.scalar(select(ShareLink.uses).where(ShareLink.id == share_id))
    return int(recorded or 0), int(counter or 0)


async def test_a_link_is_shown_once_and_works_without_an_account(org: Org) -> None:
    """The token is in the create answer only, stored as its SHA-256; anyone holding it
    reaches the resource by `?share=` or by `X-Share-Token`, as a share principal."""
    async with await signed_in(org, "admin-a@example.com") as http:
        response = await http.post("/api/v1/shares", json=link(note="for the auditors"))
        assert response.status_code == 201, response.text
        assert response.headers["cache-control"] == "no-store"
        body = response.json()
    token = body["token"]
    assert TOKEN.fullmatch(token), token
    share = body["share"]
    assert share["created_by"] == org.users["admin-a@example.com"]
    assert share["tenant_id"] == org.tenants["acme"]
    assert (share["resource_type"], share["resource_id"]) == ("thing", "t1")
    assert share["permissions"] == ["users:read"] and share["uses"] == 0
    assert "token" not in share
    async with org.client() as anonymous:
        assert_problem(await anonymous.get("/api/v1/things/t1"), 401)
        by_query = json_of(await anonymous.get("/api/v1/things/t1", params={"share": token}))
    async with with_share(org, token) as http:
        by_header = json_of(await http.get("/api/v1/things/t1"))
    expected = {"id": "t1", "via": "share", "permissions": ["users:read"]}
    assert by_query == by_header == expected
    async with org.keel.db.session() as session:
        row = (await session.execute(select(ShareLink.__table__))).one()._asdict()
    assert row["token_hash"] == secret_digest(token)
    assert not [column for column, value in row.items() if token[8:] in str(value)]


async def test_a_link_reaches_only_its_resource(org: Org) -> None:
    """Another thing, a route naming no resource and the rest of the API all answer as if
    nothing were there (404), never with data."""
    _, token = await make_share(org)
    async with with_share(org, token) as http:
        assert (await http.get("/api/v1/things/t1")).status_code == 200
        assert_problem(await http.get("/api/v1/things/t2"), 404)
        assert_problem(await http.get("/api/v1/things2/t1"), 404)
        assert_problem(await http.get("/api/v1/users"), 404)
        assert_problem(await http.get(f"/api/v1/users/{org.users['admin-a@example.com']}"), 404)
        assert_problem(await http.get("/api/v1/auth/session"), 401)
        assert_problem(await http.get("/api/v1/tenants"), 401)


async def test_a_link_never_grants_more_than_its_sharer_holds(org: Org) -> None:
    """A link cannot ask for a permission its sharer lacks; it stops working once the sharer
    is demoted, or disabled."""
    async with await signed_in(org, "viewer-a@example.com") as http:
        assert_problem(
            await http.post("/api/v1/shares", json=link(permissions=("users:manage",))), 403
        )
        assert_problem(await http.post("/api/v1/shares", json=link()), 403)
    _, admins = await make_share(org, "admin-a@example.com")
    _, operators = await make_share(org, "operator-a@example.com")
    for token in (admins, operators):
        async with with_share(org, token) as http:
            assert (await http.get("/api/v1/things/t1")).status_code == 200
    async with await signed_in(org, "owner@example.com") as owner:
        admin_a, operator_a = org.users["admin-a@example.com"], org.users["operator-a@example.com"]
        json_of(await owner.patch(f"/api/v1/users/{admin_a}", json={"roles": ["viewer"]}))
        json_of(await owner.patch(f"/api/v1/users/{operator_a}", json={"status": "disabled"}))
    for token in (admins, operators):
        async with with_share(org, token) as http:
            assert_problem(await http.get("/api/v1/things/t1"), 401, "invalid-share")


async def test_max_uses_is_enforced_and_every_use_recorded(org: Org) -> None:
    """A link good for 3 uses works 3 times and is refused the 4th; each use is a row."""
    share_id, token = await make_share(org, max_uses=3)
    async with org.client(**{"user-agent": "probe/1.0"}) as http:
        for _ in range(3):
            response = await http.get("/api/v1/things/t1", params={"share": token})
            assert response.status_code == 200, response.text
        assert_problem(await http.get("/api/v1/things/t1", params={"share": token}), 401)
    assert await use_count(org, share_id) == (3, 3)
    async with org.keel.db.session() as session:
        uses = (await session.scalars(select(ShareUse).where(ShareUse.share_id == share_id))).all()
    assert {(u.client_ip, u.user_agent, u.method, u.path) for u in uses} == {
        ("127.0.0.1", "probe/1.0", "GET", "/api/v1/things/t1")
    }


async def test_requests_that_miss_the_resource_spend_nothing(org: Org) -> None:
    """A link preview bot or a wrong URL does not use up a link: only a request that reaches
    the shared resource spends a use."""
    share_id, token = await make_share(org, max_uses=1)
    async with with_share(org, token) as http:
        for path in ("/", "/healthz", "/api/v1/things/t2", "/api/v1/things2/t1", "/nope"):
            assert (await http.get(path)).status_code != 200 or path in ("/", "/healthz")
        assert await use_count(org, share_id) == (0, 0)
        assert (await http.get("/api/v1/things/t1")).status_code == 200
        assert_problem(await http.get("/api/v1/things/t1"), 401)
    assert await use_count(org, share_id) == (1, 1)


async def test_parallel_uses_never_exceed_the_limit(org: Org) -> None:
    """Ten simultaneous uses of a link good for five: exactly five get through."""
    share_id, token = await make_share(org, max_uses=5)
    async with with_share(org, token) as http:
        responses = await asyncio.gather(*(http.get("/api/v1/things/t1") for _ in range(10)))
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [200] * 5 + [401] * 5, [r.text for r in responses]
    assert await use_count(org, share_id) == (5, 5)


async def test_revoked_and_expired_links_are_refused(org: Org) -> None:
    """DELETE revokes a link at once; a link past its expiry is refused."""
    revoked_id, revoked = await make_share(org)
    expired_id, expired = await make_share(org)
    async with await signed_in(org, "admin-a@example.com") as http:
        assert (await http.delete(f"/api/v1/shares/{revoked_id}")).status_code == 204
        assert json_of(await http.get(f"/api/v1/shares/{revoked_id}"))["revoked_at"]
    async with org.keel.db.transaction() as session:
        await session.execute(
            update(ShareLink)
            .where(ShareLink.id == expired_id)
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    for token in (revoked, expired):
        async with with_share(org, token) as http:
            assert_problem(await http.get("/api/v1/things/t1"), 401, "invalid-share")
    assert await use_count(org, revoked_id) == (0, 0)


async def test_bad_input_is_422(org: Org) -> None:
    """Too short or too long a life, unknown or no permissions, no use, a malformed resource
    type or missing fields are each refused, and nothing is stored."""
    bad = [
        link(expires_in_seconds=10),
        link(expires_in_seconds=31 * 86400),
        link(permissions=()),
        link(max_uses=0),
        link(resource_type="Not A Type"),
        {"resource_type": "thing", "resource_id": "t1"},
        {},
    ]
    async with await signed_in(org, "admin-a@example.com") as http:
        for body in bad:
            assert_problem(await http.post("/api/v1/shares", json=body), 422)
        unknown = await http.post("/api/v1/shares", json=link(permissions=("things:fly",)))
        errors = assert_problem(unknown, 422)["errors"]
        assert [(e["pointer"], e["code"]) for e in errors] == [
            ("/permissions", "unknown_permission")
        ]
        assert json_of(await http.get("/api/v1/shares"))["items"] == []


async def test_links_are_listed_to_their_sharer_and_confined_to_their_tenant(org: Org) -> None:
    """The sharer lists its links (never a token); acme's admin (shares:manage) lists all of
    acme's; bolt's admin gets 404 showing or revoking one, and the link keeps working."""
    admins_id, admins = await make_share(org, "admin-a@example.com")
    operators_id, operators = await make_share(org, "operator-a@example.com", resource_id="t2")
    bolts_id, _ = await make_share(org, "admin-b@example.com")
    async with await signed_in(org, "operator-a@example.com") as http:
        mine = await http.get("/api/v1/shares")
        assert [s["id"] for s in json_of(mine)["items"]] == [operators_id]
        assert operators not in mine.text and "token" not in mine.text
        assert_problem(await http.get(f"/api/v1/shares/{admins_id}"), 404)
        assert_problem(await http.delete(f"/api/v1/shares/{admins_id}"), 404)
    async with await signed_in(org, "admin-a@example.com") as http:
        every = await http.get("/api/v1/shares")
        assert {s["id"] for s in json_of(every)["items"]} == {admins_id, operators_id}
        assert admins not in every.text and operators not in every.text
    async with await signed_in(org, "admin-b@example.com") as http:
        assert [s["id"] for s in json_of(await http.get("/api/v1/shares"))["items"]] == [bolts_id]
        assert_problem(await http.get(f"/api/v1/shares/{admins_id}"), 404)
        assert_problem(await http.delete(f"/api/v1/shares/{admins_id}"), 404)
    async with with_share(org, admins) as http:
        assert (await http.get("/api/v1/things/t1")).status_code == 200


async def test_only_a_signed_in_user_can_share_or_make_keys(org: Org) -> None:
    """Neither an API key nor a share link can make a link (it would outlive the rights it
    borrowed); a share link cannot make or list API keys either."""
    async with await signed_in(org, "admin-a@example.com") as http:
        created = json_of(
            await http.post(
                "/api/v1/api-keys", json={"name": "k", "scopes": ["shares:create", "users:read"]}
            )
        )
    async with org.client(authorization=f"Bearer {created['secret']}") as key:
        assert (await key.get("/api/v1/shares")).status_code == 200, "the key holds shares:create"
        assert_problem(await key.post("/api/v1/shares", json=link()), 401)
    _, token = await make_share(org, permissions=("users:read", "shares:create", "api-keys:create"))
    async with with_share(org, token) as http:
        refused = [
            await http.post("/api/v1/shares", json=link()),
            await http.get("/api/v1/shares"),
            await http.post("/api/v1/api-keys", json={"name": "k", "scopes": ["users:read"]}),
            await http.get("/api/v1/api-keys"),
        ]
    assert [response.status_code for response in refused] == [404] * 4
    async with await signed_in(org, "admin-a@example.com") as http:
        shares = json_of(await http.get("/api/v1/shares"))["items"]
        keys = json_of(await http.get("/api/v1/api-keys"))["items"]
    assert len(shares) == 1 and len(keys) == 1, "nothing was created"
