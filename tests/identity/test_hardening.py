"""Defects a security review found, each pinned by a test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from keel import Config
from tests.identity.support import PASSWORD, Org, build_org, json_of
from tests.protection.test_guard import assert_problem


async def test_a_role_name_means_one_role(org: Org) -> None:
    """A tenant cannot create a role named like a deployment-wide one (or the reverse): an
    assignment by name must never grant the union of two roles' rights."""
    async with await org.as_user("owner@example.com") as http:
        wide = await http.post(
            "/api/v1/roles",
            json={"name": "support", "permissions": ["users:manage", "shares:manage"]},
        )
        assert wide.status_code == 201
    async with await org.as_user("admin-a@example.com") as http:
        squat = await http.post(
            "/api/v1/roles", json={"name": "support", "permissions": ["users:read"]}
        )
        assert_problem(squat, 409)
        json_of(await http.post("/api/v1/roles", json={"name": "helpdesk", "permissions": []}))
    async with await org.as_user("owner@example.com") as http:
        later = await http.post(
            "/api/v1/roles", json={"name": "helpdesk", "permissions": ["api-keys:manage"]}
        )
        assert_problem(later, 409)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/api/v1/users/a%00b", None),
        ("GET", "/api/v1/tenants/a%00b", None),
        ("GET", "/api/v1/users?cursor=%00", None),
        ("POST", "/api/v1/api-keys", {"name": "a\u0000b", "scopes": ["users:read"]}),
    ],
)
async def test_nul_characters_are_a_client_error(
    org: Org, method: str, path: str, body: object
) -> None:
    """NUL in text is never a 500: PostgreSQL cannot store it, so there it is a 4xx (SQLite
    stores it like any character)."""
    async with await org.as_user("admin-a@example.com") as http:
        response = await http.request(method, path, json=body)
        assert response.status_code < 500, response.text
        if org.keel.db.dialect == "postgresql":
            assert response.status_code >= 400, response.text


async def test_nul_in_a_sign_in_email_is_a_client_error(org: Org) -> None:
    """Even before anyone is signed in."""
    async with org.client() as http:
        response = await http.post(
            "/api/v1/auth/token", json={"email": "a\u0000@example.com", "password": "x"}
        )
        assert 400 <= response.status_code < 500, response.text  # a 401 on SQLite


async def test_other_authorization_schemes_are_ignored(org: Org) -> None:
    """A Basic header from a proxy in front does not break public routes or the cookie."""
    async with org.client(authorization="Basic dXNlcjpwYXNz") as http:
        assert (await http.get("/healthz")).status_code == 200
        signed_in = await http.post(
            "/api/v1/auth/session", json={"email": "viewer-a@example.com", "password": PASSWORD}
        )
        assert signed_in.status_code == 201
        assert (await http.get("/api/v1/auth/session")).status_code == 200


async def test_a_query_parameter_ending_in_share_keeps_the_session(org: Org) -> None:
    """`?noshare=1` or an empty `?share=` is not a share link; the cookie still counts."""
    async with org.client() as http:
        await http.post(
            "/api/v1/auth/session", json={"email": "viewer-a@example.com", "password": PASSWORD}
        )
        assert (await http.get("/api/v1/auth/session?noshare=1")).status_code == 200
        assert (await http.get("/api/v1/auth/session?share=")).status_code == 200


@pytest.fixture
async def limited_org(make_config: Callable[..., Config]) -> AsyncIterator[Org]:
    """The organisation with a small default rate limit."""
    config = make_config(rate_limit_login="10000/minute", rate_limit_default="5/minute")
    async for value in build_org(config):
        yield value


async def test_bad_credentials_are_rate_limited(limited_org: Org) -> None:
    """Forged tokens, keys and share links are counted against the address before they are
    refused, so a flood of them meets 429 like any other traffic."""
    headers = [
        {"authorization": "Bearer eyJhbGciOiJFZERTQSJ9.e30.AAAA"},
        {"x-api-key": "keel_000000000000_" + "A" * 43},
        {"x-share-token": "keel_sh_nope"},
    ]
    statuses = []
    async with limited_org.client() as http:
        for index in range(9):
            response = await http.get("/api/v1/users", headers=headers[index % 3])
            statuses.append(response.status_code)
    assert statuses[:5] == [401] * 5
    assert statuses[5:] == [429] * 4
