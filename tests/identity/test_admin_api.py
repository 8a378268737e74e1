"""The admin API: users, roles and tenants, with no escalation and privilege changes that
end sessions."""

from __future__ import annotations

from sqlalchemy import func, select

from keel.identity.models import Role, Tenant, User
from tests.identity.support import PASSWORD, Org, json_of
from tests.protection.test_guard import assert_problem


async def _count(org: Org, model: type) -> int:
    async with org.keel.db.session() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def test_admin_creates_users_in_its_own_tenant(org: Org) -> None:
    """A tenant admin's new user lands in its tenant whatever the body says, with roles."""
    async with await org.as_user("admin-a@example.com") as http:
        created = await http.post(
            "/api/v1/users",
            json={
                "email": "New@Example.com",
                "password": PASSWORD,
                "roles": ["operator"],
                "tenant": "bolt",
            },
        )
        body = json_of(created)
        assert created.status_code == 201
        assert body["email"] == "new@example.com"
        assert body["tenant_id"] == org.tenants["acme"]
        assert body["roles"] == ["operator"]
        assert "password" not in created.text
    async with await org.as_user("new@example.com") as http:
        me = json_of(await http.get("/api/v1/auth/session"))
        assert "users:read" in me["permissions"] and "users:manage" not in me["permissions"]


async def test_bad_user_input_changes_nothing(org: Org) -> None:
    """Bad email, weak password, unknown role, duplicate email: 4xx problem, nobody created."""
    before = await _count(org, User)
    async with await org.as_user("admin-a@example.com") as http:
        assert_problem(await http.post("/api/v1/users", json={"email": "nope"}), 422)
        weak = await http.post("/api/v1/users", json={"email": "w@example.com", "password": "x"})
        assert_problem(weak, 422)
        unknown = await http.post(
            "/api/v1/users", json={"email": "r@example.com", "roles": ["emperor"]}
        )
        assert_problem(unknown, 422)
        taken = await http.post("/api/v1/users", json={"email": "viewer-b@example.com"})
        assert_problem(taken, 409)
        assert_problem(await http.post("/api/v1/users", json=[1, 2]), 422)
    assert await _count(org, User) == before


async def test_no_escalation(org: Org) -> None:
    """Viewers cannot manage users; an admin cannot hand out owner, nor change itself or an
    owner; a custom role cannot carry rights its creator lacks."""
    async with await org.as_user("viewer-a@example.com") as http:
        assert_problem(await http.post("/api/v1/users", json={"email": "v@example.com"}), 403)
    async with await org.as_user("admin-a@example.com") as http:
        owner = await http.post(
            "/api/v1/users", json={"email": "o@example.com", "roles": ["owner"]}
        )
        assert_problem(owner, 403)
        me = org.users["admin-a@example.com"]
        assert_problem(await http.patch(f"/api/v1/users/{me}", json={"roles": ["owner"]}), 403)
        role = await http.post(
            "/api/v1/roles", json={"name": "sneaky", "permissions": ["tenants:manage"]}
        )
        assert_problem(role, 403)
    async with await org.as_user("owner@example.com") as http:
        promoted = await http.patch(
            f"/api/v1/users/{org.users['admin-b@example.com']}", json={"roles": ["owner"]}
        )
        assert json_of(promoted)["roles"] == ["owner"]
    async with await org.as_user("owner@example.com") as http:
        tenant = await http.post("/api/v1/tenants", json={"slug": "third"})
        assert tenant.status_code == 201
    async with await org.as_user("admin-b@example.com") as http:
        # Now a tenant's owner: every permission, but still confined to its tenant.
        assert_problem(await http.post("/api/v1/tenants", json={"slug": "fourth"}), 403)
    assert await _count(org, Tenant) == 3


async def test_a_role_change_ends_the_users_sessions(org: Org) -> None:
    """No session survives a privilege change: the user signs in again to get the new rights
    (so a session fixed before the change can never carry them)."""
    async with org.client() as browser:
        signed_in = await browser.post(
            "/api/v1/auth/session", json={"email": "viewer-a@example.com", "password": PASSWORD}
        )
        assert signed_in.status_code == 201
        assert "users:read" not in json_of(await browser.get("/api/v1/auth/session"))["permissions"]
        async with await org.as_user("admin-a@example.com") as admin:
            changed = await admin.patch(
                f"/api/v1/users/{org.users['viewer-a@example.com']}", json={"roles": ["operator"]}
            )
            assert json_of(changed)["roles"] == ["operator"]
        assert_problem(await browser.get("/api/v1/auth/session"), 401)
        again = await browser.post(
            "/api/v1/auth/session", json={"email": "viewer-a@example.com", "password": PASSWORD}
        )
        assert again.status_code == 201
        assert "users:read" in json_of(await browser.get("/api/v1/auth/session"))["permissions"]


async def test_disable_and_sign_out_a_user(org: Org) -> None:
    """Disabling a user ends its tokens; sign-out ends sessions and tokens, keeping the account."""
    victim = await org.as_user("operator-a@example.com")
    async with victim, await org.as_user("admin-a@example.com") as admin:
        assert (await victim.get("/api/v1/users")).status_code == 200
        ended = await admin.post(f"/api/v1/users/{org.users['operator-a@example.com']}/sign-out")
        assert json_of(ended) == {"sessions_ended": 0}
        assert_problem(await victim.get("/api/v1/users"), 401)
        fresh = await org.as_user("operator-a@example.com")
        async with fresh:
            disabled = await admin.patch(
                f"/api/v1/users/{org.users['operator-a@example.com']}", json={"status": "disabled"}
            )
            assert json_of(disabled)["status"] == "disabled"
            assert_problem(await fresh.get("/api/v1/users"), 401)
        assert_problem(
            await org.client().post(
                "/api/v1/auth/token", json={"email": "operator-a@example.com", "password": PASSWORD}
            ),
            401,
        )


async def test_custom_roles(org: Org) -> None:
    """A tenant's custom role grants its permissions; a held role cannot be deleted; names
    are unique per tenant; unknown permissions are refused."""
    async with await org.as_user("admin-a@example.com") as http:
        role = json_of(
            await http.post(
                "/api/v1/roles",
                json={"name": "Reader", "permissions": ["users:read", "users:read"]},
            )
        )
        assert role["name"] == "reader" and role["permissions"] == ["users:read"]
        assert role["tenant_id"] == org.tenants["acme"]
        assert_problem(
            await http.post("/api/v1/roles", json={"name": "reader", "permissions": []}), 409
        )
        unknown = await http.post("/api/v1/roles", json={"name": "x", "permissions": ["nope:x"]})
        assert_problem(unknown, 422)
        assert_problem(
            await http.post("/api/v1/roles", json={"name": "admin", "permissions": []}), 422
        )
        viewer = org.users["viewer-a@example.com"]
        assigned = await http.patch(f"/api/v1/users/{viewer}", json={"roles": ["reader"]})
        assert json_of(assigned)["roles"] == ["reader"]
        assert_problem(await http.delete(f"/api/v1/roles/{role['id']}"), 409)
        listed = json_of(await http.get("/api/v1/roles"))
        assert [r["name"] for r in listed if r["builtin"]] == [
            "owner",
            "admin",
            "operator",
            "viewer",
        ]
        assert "reader" in [r["name"] for r in listed]
        permissions = json_of(await http.get("/api/v1/roles/permissions"))
        assert {"users:read", "users:manage", "api-keys:create"} <= {p["name"] for p in permissions}
    async with await org.as_user("viewer-a@example.com") as http:
        assert (await http.get("/api/v1/users")).status_code == 200
    async with await org.as_user("admin-b@example.com") as http:
        # Bolt does not have acme's role; the name is free there.
        other = await http.post(
            "/api/v1/roles", json={"name": "reader", "permissions": ["users:read"]}
        )
        assert other.status_code == 201
        unknown_role = await http.patch(
            f"/api/v1/users/{org.users['viewer-b@example.com']}", json={"roles": ["auditor"]}
        )
        assert_problem(unknown_role, 422)
    assert await _count(org, Role) == 2


async def test_users_page_by_keyset(org: Org) -> None:
    """`/api/v1/users` pages with `limit` and `cursor` → `next_cursor`."""
    async with await org.as_user("owner@example.com") as http:
        first = json_of(await http.get("/api/v1/users", params={"limit": 4}))
        assert len(first["items"]) == 4 and first["next_cursor"]
        second = json_of(
            await http.get("/api/v1/users", params={"limit": 4, "cursor": first["next_cursor"]})
        )
        assert len(second["items"]) == 2 and second["next_cursor"] is None
        emails = [u["email"] for u in first["items"] + second["items"]]
        assert len(set(emails)) == 6
        assert_problem(await http.get("/api/v1/users", params={"limit": 0}), 422)
        assert_problem(await http.get("/api/v1/users", params={"status": "asleep"}), 422)
