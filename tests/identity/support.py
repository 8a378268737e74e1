"""A small organisation for access tests: a deployment owner and two tenants with users."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from keel import Config, Keel, create_app
from keel.core.modules import KeelModule
from keel.identity.access import Catalog
from keel.identity.runtime import identity_runtime
from keel.identity.service import create_tenant, create_user, set_roles
from tests.conftest import client_for, hashed

PASSWORD = "correct horse battery staple"

# email -> (tenant slug or None, roles)
PEOPLE: dict[str, tuple[str | None, list[str]]] = {
    "owner@example.com": (None, ["owner"]),
    "admin-a@example.com": ("acme", ["admin"]),
    "viewer-a@example.com": ("acme", ["viewer"]),
    "operator-a@example.com": ("acme", ["operator"]),
    "admin-b@example.com": ("bolt", ["admin"]),
    "viewer-b@example.com": ("bolt", ["viewer"]),
}


@dataclass
class Org:
    """The running app and the ids of what was created."""

    app: FastAPI
    keel: Keel
    tenants: dict[str, str] = field(default_factory=dict)  # slug -> id
    users: dict[str, str] = field(default_factory=dict)  # email -> id

    @property
    def catalog(self) -> Catalog:
        return identity_runtime(self.keel).catalog

    def client(self, **headers: str) -> httpx.AsyncClient:
        http = client_for(self.app)
        http.headers.update(headers)
        return http

    async def token(self, email: str) -> str:
        """An access token for `email` (through the API)."""
        async with self.client() as http:
            response = await http.post(
                "/api/v1/auth/token", json={"email": email, "password": PASSWORD}
            )
            assert response.status_code == 200, response.text
            return str(response.json()["access_token"])

    async def as_user(self, email: str) -> httpx.AsyncClient:
        """A client sending `email`'s bearer token."""
        return self.client(authorization=f"Bearer {await self.token(email)}")


async def build_org(
    config: Config, modules: Sequence[KeelModule] | None = None
) -> AsyncIterator[Org]:
    """Start the app (with extra `modules`) and create tenants `acme` and `bolt` and the
    `PEOPLE`."""
    application = create_app(config, modules=modules, configure_logs=False)
    async with LifespanManager(application):
        keel: Keel = application.state.keel
        org = Org(application, keel)
        catalog = identity_runtime(keel).catalog
        async with keel.db.transaction() as session:
            for slug in ("acme", "bolt"):
                org.tenants[slug] = (await create_tenant(session, slug=slug)).id
            for email, (home, roles) in PEOPLE.items():
                user = await create_user(
                    session,
                    email=email,
                    password_hash=await hashed(PASSWORD),
                    tenant_id=org.tenants[home] if home else None,
                )
                await set_roles(session, catalog, None, user, roles, config=keel.config)
                org.users[email] = user.id
        yield org


@pytest.fixture
async def org(make_config: Callable[..., Config]) -> AsyncIterator[Org]:
    """The organisation on the test's database (login rate limit raised for tests)."""
    async for value in build_org(make_config(rate_limit_login="10000/minute")):
        yield value


def json_of(response: httpx.Response) -> Any:
    """The body, after asserting a 2xx."""
    assert response.is_success, (response.status_code, response.text)
    return response.json()
