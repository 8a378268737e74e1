"""Route guards and tenant isolation, checked across every route of the assembled app."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fastapi.routing
import pytest
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.routing import Mount, Route

import keel
from keel.audit import Actor, bind_actor, reset_actor
from keel.core.database import Base
from keel.core.guards import guard_kind
from keel.jobs import enqueue, job
from tests.identity.support import Org, json_of


@job("test.access.noop")
async def _noop(ctx: Any) -> None:
    """A job kind for the isolation test."""


# The OpenAPI document is public by design (it describes the API, not its data).
PUBLIC_BY_DESIGN = {"/api/v1/openapi.json"}


def _calls(dependant: Dependant) -> Iterator[Any]:
    for dependency in dependant.dependencies:
        yield dependency.call
        yield from _calls(dependency)


def flat_routes(app: FastAPI) -> Iterator[Any]:
    """Every route of `app`, with included routers expanded (FastAPI keeps them nested)."""
    iterate = getattr(fastapi.routing, "iter_route_contexts", None)
    yield from iterate(app.routes) if iterate is not None else app.routes


def api_routes(app: FastAPI) -> Iterator[Any]:
    """The FastAPI routes (path, methods, dependant) of `app`."""
    for route in flat_routes(app):
        if isinstance(getattr(route, "original_route", route), APIRoute):
            yield route


def unguarded_routes(app: FastAPI) -> list[str]:
    """Routes of `app` that carry neither a guard nor the `public` marker."""
    missing = []
    for route in flat_routes(app):
        original = getattr(route, "original_route", route)
        if isinstance(original, APIRoute):
            if not any(guard_kind(call) for call in _calls(route.dependant) if call):
                missing.append(f"{sorted(route.methods)} {route.path}")
        elif isinstance(original, Mount):
            if original.path != "/static":
                missing.append(f"mount {original.path}")
        elif isinstance(original, Route) and original.path not in PUBLIC_BY_DESIGN:
            missing.append(f"route {original.path}")
    return missing


async def test_every_route_has_a_guard_or_is_marked_public(org: Org) -> None:
    """A route without `require(…)`, `require_user` or `public` fails this test."""
    assert unguarded_routes(org.app) == []


async def test_the_route_walk_catches_an_unguarded_route(org: Org) -> None:
    """The walk is not vacuous: a route added without a guard is reported."""

    @org.app.get("/api/v1/forgotten")
    async def forgotten() -> dict[str, str]:
        return {}

    assert unguarded_routes(org.app) == ["['GET'] /api/v1/forgotten"]


# --- tenant isolation on every route -----------------------------------------------------------


async def _acme_resources(org: Org) -> dict[str, str]:
    """One resource of tenant acme for each path parameter an API route can take."""
    async with await org.as_user("admin-a@example.com") as http:
        role = json_of(
            await http.post(
                "/api/v1/roles", json={"name": "auditor", "permissions": ["users:read"]}
            )
        )
        key = json_of(
            await http.post("/api/v1/api-keys", json={"name": "k", "scopes": ["users:read"]})
        )
        share = json_of(
            await http.post(
                "/api/v1/shares",
                json={"resource_type": "thing", "resource_id": "t1", "permissions": ["users:read"]},
            )
        )
    async with org.client() as browser:
        signed_in = await browser.post(
            "/api/v1/auth/session",
            json={"email": "viewer-a@example.com", "password": "correct horse battery staple"},
        )
        session_id = json_of(signed_in)["session"]["id"]
    token = bind_actor(
        Actor("user", org.users["admin-a@example.com"], tenant_id=org.tenants["acme"])
    )
    try:
        async with org.keel.db.transaction() as session:
            acme_job = await enqueue(
                session, "test.access.noop", run_at=datetime(2999, 1, 1, tzinfo=UTC)
            )
    finally:
        reset_actor(token)
    async with await org.as_user("admin-a@example.com") as http:
        registry_asset = json_of(
            await http.post(
                "/api/v1/registry/sql_query",
                json={"name": "acme-query", "data": {"sql": "SELECT 1"}},
            )
        )
    from keel.deps import service as deps_service

    async with org.keel.db.transaction() as session:
        incident = await deps_service.open_incident(session, title="deployment-wide")
        window = await deps_service.add_maintenance(
            session, title="deployment-wide", cron="0 3 * * *", minutes=30
        )
    return {
        "incident_id": incident.id,
        "window_id": window.id,
        "job_id": acme_job.id,
        "user_id": org.users["viewer-a@example.com"],
        "tenant_id": org.tenants["acme"],
        "role_id": role["id"],
        "key_id": key["key"]["id"],
        "share_id": share["share"]["id"],
        "session_id": session_id,
        "kind": "sql_query",
        "name": registry_asset["name"],
        "version": "1",
        # A deployment-wide setting: a tenant's account must not learn it exists.
        "key": "deps.probes_paused",
    }


# Path parameters that name a class of resources, not one resource: a route taking only
# these is a list or a create, checked by the list sweep below, not by the 404 sweep.
NOT_IDS = {"kind"}
# A version number ("1") is not an identifier that could leak.
NOT_SECRET = {"version"}


BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("PATCH", "/api/v1/users/{user_id}"): {"display_name": "pwned"},
    ("PUT", "/api/v1/settings/{key}"): {"value": True, "reason": "pwned"},
    ("POST", "/api/v1/settings/{key}/rollback"): {"change_id": "x", "reason": "pwned"},
    ("POST", "/api/v1/registry/{kind}/{name}/versions"): {"data": {"sql": "SELECT 2"}},
    ("POST", "/api/v1/registry/{kind}/{name}/rollback"): {"to": 1},
    ("POST", "/api/v1/registry/{kind}/{name}/archive"): {"force": True, "reason": "pwned"},
}
QUERIES: dict[tuple[str, str], str] = {
    ("GET", "/api/v1/registry/{kind}/{name}/diff"): "?from=1&to=1",
}


async def test_another_tenants_resources_are_404_on_every_route(org: Org) -> None:
    """An admin of tenant bolt gets 404 (never 403, never data) for every acme resource, on
    every route that takes an id; and no list shows any of acme's ids."""
    acme = await _acme_resources(org)
    checked = 0
    async with await org.as_user("admin-b@example.com") as http:
        for route in api_routes(org.app):
            if "{" not in route.path:
                continue
            params = re.findall(r"{(\w+)}", route.path)
            if set(params) <= NOT_IDS:
                continue
            unknown = [name for name in params if name not in acme]
            assert not unknown, f"{route.path}: add an acme resource for {unknown} to this test"
            url = route.path.format(**{name: acme[name] for name in params})
            for method in route.methods:
                body = BODIES.get((method, route.path), {})
                response = await http.request(
                    method,
                    url + QUERIES.get((method, route.path), ""),
                    json=body if method in {"POST", "PATCH", "PUT"} else None,
                )
                assert response.status_code == 404, (method, route.path, response.text)
                checked += 1
        for route in api_routes(org.app):
            params = re.findall(r"{(\w+)}", route.path)
            if "GET" in route.methods and set(params) <= NOT_IDS:
                if not route.path.startswith("/api/v1/"):
                    continue
                text = (await http.get(route.path.format(**acme))).text
                leaked = [
                    name
                    for name, value in acme.items()
                    if value in text and name not in NOT_IDS | NOT_SECRET
                ]
                # The tenant list shows bolt only; acme's id must not appear anywhere.
                assert leaked == [], (route.path, leaked)
    assert checked >= 10
    # Nothing was changed by the attempts.
    async with await org.as_user("admin-a@example.com") as http:
        viewer = json_of(await http.get(f"/api/v1/users/{acme['user_id']}"))
        assert viewer["display_name"] != "pwned" and viewer["status"] == "active"
        assert json_of(await http.get(f"/api/v1/api-keys/{acme['key_id']}"))["revoked_at"] is None
        asset = json_of(await http.get(f"/api/v1/registry/sql_query/{acme['name']}"))
        assert asset["state"] == "active" and asset["latest_version"] == 1


# --- the static check: tenant-scoped queries go through tenant_scope ---------------------------


def tenant_scoped_models() -> set[str]:
    """Names of the mapped classes whose table carries `tenant_id`."""
    import keel.identity.models  # noqa: F401

    return {
        mapper.class_.__name__
        for mapper in Base.registry.mappers
        if "tenant_id" in mapper.local_table.c
    }


def unscoped_queries(source: str, models: set[str]) -> list[str]:
    """Functions in `source` that select/update/delete a tenant-scoped model without calling
    `tenant_scope` and without an `# unscoped: <reason>` comment."""
    tree = ast.parse(source)
    lines = source.splitlines()
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        touched = set()
        scoped = False
        for call in ast.walk(node):
            if not isinstance(call, ast.Call):
                continue
            name = call.func.id if isinstance(call.func, ast.Name) else None
            if name == "tenant_scope":
                scoped = True
            if name in {"select", "update", "delete"}:
                for arg in call.args:
                    base = arg
                    while isinstance(base, ast.Attribute):
                        base = base.value
                    if isinstance(base, ast.Name) and base.id in models:
                        touched.add(base.id)
        body = "\n".join(lines[node.lineno - 1 : node.end_lineno])
        if touched and not scoped and "# unscoped:" not in body:
            found.append(f"{node.name} ({', '.join(sorted(touched))})")
    return found


def test_tenant_scoped_queries_use_the_helper() -> None:
    """Every query on a tenant-scoped table in Keel's source is scoped or says why not."""
    models = tenant_scoped_models()
    assert {"User", "ApiKey", "ShareLink", "Role"} <= models
    package = Path(keel.__file__).parent
    problems = []
    for path in sorted(package.rglob("*.py")):
        if "migrations" in path.parts:
            continue
        for function in unscoped_queries(path.read_text(encoding="utf-8"), models):
            problems.append(f"{path.relative_to(package)}: {function}")
    assert problems == []


@pytest.mark.parametrize(
    ("source", "flagged"),
    [
        ("async def f(s):\n    return await s.scalars(select(User))\n", ["f (User)"]),
        ("def f():\n    return update(ApiKey).values(name='x')\n", ["f (ApiKey)"]),
        ("def f(p):\n    return tenant_scope(select(User), User, p)\n", []),
        ("def f():\n    # unscoped: the system counts all users\n    return select(User.id)\n", []),
        ("def f():\n    return select(Tenant)\n", []),
    ],
)
def test_the_static_check_flags_unscoped_queries(source: str, flagged: list[str]) -> None:
    """The checker itself: an unscoped query is flagged, a scoped or annotated one is not."""
    assert unscoped_queries(source, {"User", "ApiKey"}) == flagged
