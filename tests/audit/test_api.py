"""Reading the trail over HTTP and the CLI, and the events identity records."""

from __future__ import annotations

from keel.audit.service import seal_all
from tests.identity.support import PASSWORD, Org, json_of
from tests.protection.test_guard import assert_problem


async def _activity(org: Org) -> None:
    """Some audited activity in both tenants, then sealed."""
    async with org.client() as http:
        failed = await http.post(
            "/api/v1/auth/token", json={"email": "admin-a@example.com", "password": "wrong" * 3}
        )
        assert failed.status_code == 401
    async with await org.as_user("admin-a@example.com") as http:
        json_of(
            await http.post(
                "/api/v1/users",
                json={"email": "new-a@example.com", "password": PASSWORD, "roles": ["viewer"]},
            )
        )
    async with await org.as_user("admin-b@example.com") as http:
        json_of(await http.post("/api/v1/users", json={"email": "new-b@example.com"}))
    await seal_all(org.keel.db)


async def test_identity_records_sign_ins_and_admin_changes(org: Org) -> None:
    """Sign-ins (failed and successful) and a user creation are in the trail, with actor,
    tenant, address, trace id and no secret."""
    await _activity(org)
    async with await org.as_user("owner@example.com") as http:
        page = json_of(await http.get("/api/v1/audit/events", params={"action": "auth.login"}))
        outcomes = {(e["outcome"], e["actor_type"]) for e in page["items"]}
        assert ("failed", "anonymous") in outcomes and ("success", "user") in outcomes
        created = json_of(await http.get("/api/v1/audit/events", params={"action": "user.create"}))[
            "items"
        ]
        event = next(e for e in created if e["changes"]["email"][1] == "new-a@example.com")
        assert event["actor_id"] == org.users["admin-a@example.com"]
        assert event["tenant_id"] == org.tenants["acme"]
        assert event["client_ip"] == "127.0.0.1"
        assert event["trace_id"] and len(event["trace_id"]) == 32
        assert event["seq"] is not None and event["hash"]
        everything = (await http.get("/api/v1/audit/events", params={"limit": 500})).text
        assert PASSWORD not in everything and "argon2" not in everything


async def test_tenant_admins_see_only_their_tenant(org: Org) -> None:
    """A tenant's reader gets its tenant's events only, whatever filter it sends."""
    await _activity(org)
    async with await org.as_user("admin-b@example.com") as http:
        page = json_of(await http.get("/api/v1/audit/events", params={"limit": 500}))
        assert page["items"]
        assert {e["tenant_id"] for e in page["items"]} == {org.tenants["bolt"]}
        other = json_of(
            await http.get("/api/v1/audit/events", params={"tenant": org.tenants["acme"]})
        )
        assert other["items"] == []
    async with await org.as_user("viewer-a@example.com") as http:
        assert_problem(await http.get("/api/v1/audit/events"), 403)


async def test_filters_and_keyset_pages(org: Org) -> None:
    """Filters narrow the list; pages follow `next_cursor` without repeats."""
    await _activity(org)
    async with await org.as_user("owner@example.com") as http:
        seen: list[str] = []
        cursor = None
        while True:
            params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
            page = json_of(await http.get("/api/v1/audit/events", params=params))
            seen += [e["id"] for e in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert len(seen) == len(set(seen)) >= 4
        assert seen == sorted(seen, reverse=True)
        failed = json_of(await http.get("/api/v1/audit/events", params={"outcome": "failed"}))
        assert {e["outcome"] for e in failed["items"]} == {"failed"}
        assert_problem(await http.get("/api/v1/audit/events", params={"outcome": "meh"}), 422)
        assert_problem(await http.get("/api/v1/audit/events", params={"since": "yesterday"}), 422)


async def test_verify_over_http(org: Org) -> None:
    """Deployment admins verify the chain; tenant admins may not (it spans every tenant)."""
    await _activity(org)
    async with await org.as_user("owner@example.com") as http:
        result = json_of(await http.get("/api/v1/audit/verify"))
        assert result["ok"] is True and result["checked"] >= 4
    async with await org.as_user("admin-a@example.com") as http:
        assert_problem(await http.get("/api/v1/audit/verify"), 403)


async def test_a_sensitive_read_is_recorded(org: Org) -> None:
    """`audited_read` records who looked at which user, even though nothing changed."""
    target = org.users["viewer-a@example.com"]
    async with await org.as_user("admin-a@example.com") as http:
        json_of(await http.get(f"/api/v1/users/{target}"))
    await seal_all(org.keel.db)
    async with await org.as_user("owner@example.com") as http:
        reads = json_of(await http.get("/api/v1/audit/events", params={"action": "user.read"}))[
            "items"
        ]
    assert [(e["resource_id"], e["actor_id"]) for e in reads] == [
        (target, org.users["admin-a@example.com"])
    ]
