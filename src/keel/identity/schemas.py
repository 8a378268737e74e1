"""Request and response bodies of the identity API."""

from __future__ import annotations

from datetime import datetime
from typing import Generic, Literal, TypeVar

from pydantic import BaseModel, Field

T = TypeVar("T")


class LoginRequest(BaseModel):
    """Credentials for signing in."""

    email: str = Field(min_length=3, max_length=320)
    password: str = Field(min_length=1, max_length=1024)


class SetupRequest(BaseModel):
    """The first account, created with the setup link's token."""

    token: str = Field(min_length=16, max_length=128)
    email: str = Field(min_length=3, max_length=320)
    password: str = Field(min_length=1, max_length=1024)
    display_name: str | None = Field(default=None, max_length=200)


class UserOut(BaseModel):
    """A user as the API shows it (never its password hash)."""

    id: str
    email: str
    display_name: str
    status: str


class SessionOut(BaseModel):
    """A browser session as its owner sees it."""

    id: str
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime
    client_ip: str | None
    user_agent: str | None
    current: bool


class LoginResponse(BaseModel):
    """The result of signing in: who, which session, and the CSRF token to send back."""

    user: UserOut
    session: SessionOut
    csrf_token: str


class TokenRequest(BaseModel):
    """Credentials for an access token."""

    email: str = Field(min_length=3, max_length=320)
    password: str = Field(min_length=1, max_length=1024)


class RefreshRequest(BaseModel):
    """A refresh token to spend."""

    refresh_token: str = Field(min_length=16, max_length=200)


class LogoutRequest(BaseModel):
    """What to revoke: this refresh token's family (and/or the bearer token's)."""

    refresh_token: str | None = Field(default=None, min_length=16, max_length=200)


class TokenResponse(BaseModel):
    """An access token (JWT) and the refresh token that renews it."""

    access_token: str
    token_type: Literal["Bearer"] = "Bearer"  # noqa: S105 - the scheme name
    expires_in: int
    refresh_token: str


class UserDetail(UserOut):
    """A user as admins see it."""

    tenant_id: str | None
    roles: list[str]
    created_at: datetime
    last_login_at: datetime | None


class UserCreate(BaseModel):
    """A new user, created by an admin."""

    email: str = Field(min_length=3, max_length=320)
    display_name: str | None = Field(default=None, max_length=200)
    password: str | None = Field(default=None, min_length=1, max_length=1024)
    roles: list[str] = Field(default_factory=lambda: ["viewer"], max_length=20)
    tenant: str | None = Field(
        default=None, max_length=63, description="Tenant id or slug (deployment admins only)."
    )


class UserPatch(BaseModel):
    """Changes to a user; absent fields stay as they are."""

    display_name: str | None = Field(default=None, min_length=1, max_length=200)
    status: Literal["active", "disabled"] | None = None
    roles: list[str] | None = Field(default=None, max_length=20)


class TenantCreate(BaseModel):
    """A new tenant."""

    slug: str = Field(min_length=2, max_length=63)
    name: str | None = Field(default=None, max_length=200)


class TenantOut(BaseModel):
    """A tenant."""

    id: str
    slug: str
    name: str
    created_at: datetime


class PermissionOut(BaseModel):
    """A declared permission and the built-in roles holding it."""

    name: str
    description: str
    roles: list[str]


class RoleCreate(BaseModel):
    """A new custom role."""

    name: str = Field(min_length=1, max_length=63)
    permissions: list[str] = Field(max_length=200)
    description: str = Field(default="", max_length=500)
    tenant: str | None = Field(default=None, max_length=63, description="Deployment admins only.")


class RoleOut(BaseModel):
    """A role: built-in (no id) or custom."""

    id: str | None
    name: str
    builtin: bool
    tenant_id: str | None
    description: str
    permissions: list[str]


class ApiKeyCreate(BaseModel):
    """A new API key."""

    name: str = Field(min_length=1, max_length=200)
    scopes: list[str] = Field(min_length=1, max_length=200)
    expires_at: datetime | None = None
    service_tenant: str | None = Field(
        default=None,
        max_length=63,
        description="Make a service-account key of this tenant (id or slug), not a personal one.",
    )


class ApiKeyOut(BaseModel):
    """An API key (never its secret)."""

    id: str
    name: str
    prefix: str
    user_id: str | None
    tenant_id: str | None
    scopes: list[str]
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiKeyCreated(BaseModel):
    """A new key and its secret, shown this once."""

    key: ApiKeyOut
    secret: str


class ShareCreate(BaseModel):
    """A new share link for one resource."""

    resource_type: str = Field(min_length=1, max_length=63, pattern=r"^[a-z][a-z0-9_-]*$")
    resource_id: str = Field(min_length=1, max_length=200)
    permissions: list[str] = Field(min_length=1, max_length=50)
    expires_in_seconds: int = Field(default=86400, ge=60, le=30 * 86400)
    max_uses: int | None = Field(default=None, ge=1, le=1_000_000)
    note: str = Field(default="", max_length=500)


class ShareOut(BaseModel):
    """A share link (never its token)."""

    id: str
    created_by: str
    tenant_id: str | None
    resource_type: str
    resource_id: str
    permissions: list[str]
    note: str
    created_at: datetime
    expires_at: datetime
    max_uses: int | None
    uses: int
    revoked_at: datetime | None


class ShareCreated(BaseModel):
    """A new link and its token, shown this once."""

    share: ShareOut
    token: str


class Page(BaseModel, Generic[T]):
    """One page of a keyset-paginated list."""

    items: list[T]
    next_cursor: str | None
