"""The identity HTTP API: sign in and out with a browser session, list and revoke sessions."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Depends, Query, Request, Response, status
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from keel.audit import audited_read, record
from keel.core.errors import Forbidden, NotFound, Unauthenticated, problem_responses
from keel.core.guards import public
from keel.core.ids import secret_digest
from keel.identity.access import BUILTIN_ROLES, require, user_permissions, user_roles
from keel.identity.apikeys import create_api_key, get_api_key, list_api_keys, revoke_api_key
from keel.identity.middleware import session_cookie_name, session_token
from keel.identity.models import ApiKey, RefreshToken, Role, ShareLink, User
from keel.identity.principal import Principal, current_principal, require_user
from keel.identity.runtime import identity_runtime
from keel.identity.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyOut,
    LoginRequest,
    LoginResponse,
    LogoutRequest,
    Page,
    PermissionOut,
    RefreshRequest,
    RoleCreate,
    RoleOut,
    SessionOut,
    SetupRequest,
    ShareCreate,
    ShareCreated,
    ShareOut,
    TenantCreate,
    TenantOut,
    TokenRequest,
    TokenResponse,
    UserCreate,
    UserDetail,
    UserOut,
    UserPatch,
)
from keel.identity.service import (
    create_role,
    create_tenant,
    create_user,
    delete_role,
    end_everything,
    find_tenant,
    get_user,
    list_roles,
    list_tenants,
    list_users,
    prepare_password,
    set_roles,
    set_status,
)
from keel.identity.sessions import (
    BrowserSession,
    create_session,
    list_sessions,
    revoke_session,
)
from keel.identity.setup import complete_setup
from keel.identity.shares import create_share, get_share, list_shares, revoke_share
from keel.identity.throttle import login, unlock
from keel.identity.tokens import InvalidToken, issue_tokens, redeem_refresh_token, revoke_family

if TYPE_CHECKING:
    from keel.app import Keel

__all__ = ["admin_router", "auth_router", "jwks_router", "setup_page_router"]

T = TypeVar("T")

User_ = Annotated[Principal, Depends(require_user)]
Public = Depends(public)
KeysActor = Annotated[Principal, Depends(require("api-keys:create"))]
SharesActor = Annotated[Principal, Depends(require("shares:create"))]


def _me(principal: Principal) -> str:
    """The signed-in user's id (`require_user` guarantees there is one)."""
    if principal.user_id is None:
        raise Unauthenticated("Sign in first.")
    return principal.user_id


def _user_out(user: User) -> UserOut:
    return UserOut(id=user.id, email=user.email, display_name=user.display_name, status=user.status)


def _session_out(row: BrowserSession, current_id: str | None) -> SessionOut:
    return SessionOut(
        id=row.id,
        created_at=row.created_at,
        last_seen_at=row.last_seen_at,
        expires_at=row.expires_at,
        client_ip=row.client_ip,
        user_agent=row.user_agent,
        current=row.id == current_id,
    )


_templates = Environment(
    loader=FileSystemLoader(
        [Path(__file__).with_name("templates"), Path(__file__).parent.parent / "core" / "templates"]
    ),
    autoescape=select_autoescape(default=True),
)


def setup_page_router() -> APIRouter:
    """The page the setup link opens (`/setup#token=…`)."""
    router = APIRouter()
    page = _templates.get_template("setup.html")

    @router.get(
        "/setup", include_in_schema=False, response_class=HTMLResponse, dependencies=[Public]
    )
    async def setup_page() -> HTMLResponse:
        return HTMLResponse(page.render(), headers={"Cache-Control": "no-store"})

    return router


def auth_router(keel: Keel) -> APIRouter:  # noqa: PLR0915 - one closure per route
    """Routes under /api/v1/auth."""
    router = APIRouter(prefix="/api/v1/auth", tags=["auth"])
    https = keel.config.is_https
    cookie = session_cookie_name(https)
    lifetime = timedelta(hours=keel.config.session_max_hours)

    async def start_session(request: Request, response: Response, user: User) -> LoginResponse:
        client_ip = request.client.host if request.client else None
        async with keel.db.transaction() as session:
            issued = await create_session(
                session,
                user,
                lifetime=lifetime,
                client_ip=client_ip,
                user_agent=request.headers.get("user-agent"),
                replaces=session_token(request.scope, cookie),
            )
        response.set_cookie(
            cookie,
            issued.token,
            max_age=int(lifetime.total_seconds()),
            path="/",
            secure=https,
            httponly=True,
            samesite="lax",
        )
        response.headers["Cache-Control"] = "no-store"
        return LoginResponse(
            user=_user_out(user),
            session=_session_out(issued.row, issued.row.id),
            csrf_token=issued.csrf_token,
        )

    @router.post(
        "/setup",
        status_code=status.HTTP_201_CREATED,
        summary="Create the first account with the one-time setup link's token (signs in)",
        responses=problem_responses(403, 409),
        dependencies=[Public],
    )
    async def first_owner(
        body: SetupRequest, request: Request, response: Response
    ) -> LoginResponse:
        password_hash = await prepare_password(body.password, email=body.email)
        async with keel.db.transaction() as session:
            user = await complete_setup(
                session,
                token=body.token,
                email=body.email,
                password_hash=password_hash,
                display_name=body.display_name,
            )
        return await start_session(request, response, user)

    @router.post(
        "/session",
        status_code=status.HTTP_201_CREATED,
        summary="Sign in: start a browser session (sets the session cookie)",
        responses=problem_responses(401, 429),
        dependencies=[Public],
    )
    async def sign_in(body: LoginRequest, request: Request, response: Response) -> LoginResponse:
        client_ip = request.client.host if request.client else None
        user = await login(keel.db, email=body.email, password=body.password, client_ip=client_ip)
        return await start_session(request, response, user)

    @router.get("/session", summary="Who I am: user, tenant, permissions, session and CSRF token")
    async def current(principal: User_, response: Response) -> dict[str, object]:
        response.headers["Cache-Control"] = "no-store"
        return {
            "user": {
                "id": principal.user_id,
                "email": principal.email,
                "display_name": principal.display_name,
            },
            "via": principal.via,
            "tenant_id": principal.tenant_id,
            "permissions": sorted(principal.permissions),
            "session_id": principal.session_id,
            "csrf_token": principal.csrf_token,
        }

    @router.delete(
        "/session", status_code=status.HTTP_204_NO_CONTENT, summary="Sign out this browser"
    )
    async def sign_out(principal: User_) -> Response:
        if principal.session_id is not None:
            async with keel.db.transaction() as session:
                await revoke_session(session, principal.session_id, user_id=_me(principal))
        response = Response(status_code=status.HTTP_204_NO_CONTENT)
        response.delete_cookie(cookie, path="/", secure=https, httponly=True, samesite="lax")
        return response

    @router.get("/sessions", summary="My live sessions")
    async def my_sessions(principal: User_) -> list[SessionOut]:
        async with keel.db.session() as session:
            rows = await list_sessions(session, _me(principal), now=datetime.now(UTC))
        return [_session_out(row, principal.session_id) for row in rows]

    runtime = identity_runtime(keel)

    async def issue_in(
        session: AsyncSession,
        user: User,
        family_id: str | None = None,
        started: datetime | None = None,
    ) -> TokenResponse:
        permissions = await user_permissions(session, runtime.catalog, user)
        issued = await issue_tokens(
            session,
            runtime.keys,
            keel.config,
            user,
            permissions,
            family_id=family_id,
            family_started_at=started,
        )
        return TokenResponse(
            access_token=issued.access_token,
            expires_in=issued.expires_in,
            refresh_token=issued.refresh_token,
        )

    @router.post(
        "/token",
        summary="Get an access token (JWT) and a refresh token with email and password",
        responses=problem_responses(401, 429),
        dependencies=[Public],
    )
    async def token(body: TokenRequest, request: Request, response: Response) -> TokenResponse:
        client_ip = request.client.host if request.client else None
        user = await login(keel.db, email=body.email, password=body.password, client_ip=client_ip)
        response.headers["Cache-Control"] = "no-store"
        async with keel.db.transaction() as session:
            return await issue_in(session, user)

    @router.post(
        "/refresh",
        summary="Spend a refresh token for a new pair (reusing one revokes its whole family)",
        responses=problem_responses(401),
        dependencies=[Public],
    )
    async def refresh(body: RefreshRequest, response: Response) -> TokenResponse:
        # One transaction: the old token is spent and its successor stored together, under
        # the old row's lock, so no revocation can fall between them.
        issued: TokenResponse | None = None
        async with keel.db.transaction() as session:
            redeemed = await redeem_refresh_token(session, keel.config, body.refresh_token)
            if redeemed.row is not None and redeemed.user is not None:
                issued = await issue_in(
                    session, redeemed.user, redeemed.row.family_id, redeemed.row.family_started_at
                )
        if redeemed.reused or (redeemed.row is not None and redeemed.user is None):
            await runtime.revocations.publish()
        if redeemed.reused:
            raise InvalidToken(
                "This refresh token was already used: every token of its sign-in is now revoked."
            )
        if issued is None:
            raise InvalidToken("The refresh token is not valid.")
        response.headers["Cache-Control"] = "no-store"
        return issued

    @router.post(
        "/logout",
        status_code=status.HTTP_204_NO_CONTENT,
        summary="Revoke a refresh token's family and/or the bearer token's",
        dependencies=[Public],
    )
    async def logout(body: LogoutRequest, request: Request) -> Response:
        principal = current_principal(request)
        families: set[str] = set()
        if principal is not None and principal.token_family is not None:
            families.add(principal.token_family)
        async with keel.db.transaction() as session:
            if body.refresh_token:
                row = await session.scalar(
                    select(RefreshToken).where(
                        RefreshToken.token_hash == secret_digest(body.refresh_token)
                    )
                )
                if row is not None:
                    families.add(row.family_id)
            revoked = [
                family_id
                for family_id in families
                if await revoke_family(session, keel.config, family_id, reason="logout")
            ]
        if revoked:
            await runtime.revocations.publish()
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    @router.delete(
        "/sessions/{session_id}",
        status_code=status.HTTP_204_NO_CONTENT,
        summary="End one of my sessions (another browser)",
    )
    async def end_session(session_id: str, principal: User_) -> Response:
        async with keel.db.transaction() as session:
            if not await revoke_session(session, session_id, user_id=_me(principal)):
                raise NotFound("no such session")
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    return router


def jwks_router(keel: Keel) -> APIRouter:
    """`/.well-known/jwks.json`: the public keys that verify Keel's access tokens."""
    router = APIRouter(tags=["auth"])
    runtime = identity_runtime(keel)

    @router.get(
        "/.well-known/jwks.json",
        summary="Public keys (JWKS) that verify access tokens",
        dependencies=[Public],
    )
    async def jwks(response: Response) -> dict[str, Any]:
        response.headers["Cache-Control"] = "public, max-age=60"
        return runtime.keys.jwks()

    return router


def _user_detail(user: User, roles: list[str]) -> UserDetail:
    return UserDetail(
        id=user.id,
        email=user.email,
        display_name=user.display_name,
        status=user.status,
        tenant_id=user.tenant_id,
        roles=roles,
        created_at=user.created_at,
        last_login_at=user.last_login_at,
    )


def _key_out(row: ApiKey) -> ApiKeyOut:
    return ApiKeyOut(
        id=row.id,
        name=row.name,
        prefix=row.prefix,
        user_id=row.user_id,
        tenant_id=row.tenant_id,
        scopes=list(row.scopes),
        created_at=row.created_at,
        expires_at=row.expires_at,
        last_used_at=row.last_used_at,
        revoked_at=row.revoked_at,
    )


def _share_out(row: ShareLink) -> ShareOut:
    return ShareOut(
        id=row.id,
        created_by=row.created_by,
        tenant_id=row.tenant_id,
        resource_type=row.resource_type,
        resource_id=row.resource_id,
        permissions=list(row.permissions),
        note=row.note,
        created_at=row.created_at,
        expires_at=row.expires_at,
        max_uses=row.max_uses,
        uses=row.uses,
        revoked_at=row.revoked_at,
    )


def _role_out(row: Role) -> RoleOut:
    return RoleOut(
        id=row.id,
        name=row.name,
        builtin=False,
        tenant_id=row.tenant_id,
        description=row.description,
        permissions=list(row.permissions),
    )


def _page(items: list[T], limit: int, cursor: Callable[[T], str]) -> tuple[list[T], str | None]:
    return items, (cursor(items[-1]) if len(items) == limit and items else None)


Limit = Annotated[int, Query(ge=1, le=1000)]
Cursor = Annotated[str | None, Query(max_length=64)]


def admin_router(keel: Keel) -> APIRouter:  # noqa: PLR0915 - one closure per route
    """`/api/v1/users`, `/tenants`, `/roles`, `/api-keys` and `/shares`."""
    router = APIRouter(prefix="/api/v1")
    runtime = identity_runtime(keel)
    catalog = runtime.catalog
    config = keel.config
    err = problem_responses(401, 403, 404)

    async def deployment_tenant(
        session: AsyncSession, actor: Principal, ref: str | None
    ) -> str | None:
        """The tenant a create targets: the actor's own, or (deployment admins) `ref`."""
        if actor.tenant_id is not None:
            return actor.tenant_id
        return None if ref is None else (await find_tenant(session, actor, ref)).id

    # --- users ---------------------------------------------------------------------------
    @router.get("/users", tags=["users"], summary="Users (of my tenant)", responses=err)
    async def users(
        actor: Annotated[Principal, Depends(require("users:read"))],
        limit: Limit = 100,
        cursor: Cursor = None,
        status_filter: Annotated[
            Literal["active", "disabled"] | None, Query(alias="status")
        ] = None,
    ) -> Page[UserDetail]:
        async with keel.db.session() as session:
            rows = list(
                await list_users(
                    session, status=status_filter, limit=limit, after=cursor, actor=actor
                )
            )
            items = [_user_detail(row, await user_roles(session, row.id)) for row in rows]
        page, next_cursor = _page(items, limit, lambda item: item.id)
        return Page(items=page, next_cursor=next_cursor)

    @router.post(
        "/users",
        tags=["users"],
        status_code=status.HTTP_201_CREATED,
        summary="Create a user with roles (in my tenant)",
        responses=problem_responses(401, 403, 404, 409),
    )
    async def create(
        body: UserCreate, actor: Annotated[Principal, Depends(require("users:manage"))]
    ) -> UserDetail:
        password_hash = (
            await prepare_password(body.password, email=body.email)
            if body.password is not None
            else None
        )
        async with keel.db.transaction() as session:
            tenant_id = await deployment_tenant(session, actor, body.tenant)
            user = await create_user(
                session,
                email=body.email,
                password_hash=password_hash,
                display_name=body.display_name,
                tenant_id=tenant_id,
            )
            roles = await set_roles(session, catalog, actor, user, body.roles, config=config)
            await record(
                session,
                "user.create",
                resource=("user", user.id),
                after={"email": user.email, "roles": roles, "tenant_id": tenant_id},
                tenant_id=tenant_id,
            )
        await runtime.revocations.publish()
        return _user_detail(user, roles)

    @router.get(
        "/users/{user_id}",
        tags=["users"],
        summary="One user (the read is recorded in the audit trail)",
        responses=err,
        dependencies=[Depends(audited_read("user.read", resource=("user", "user_id")))],
    )
    async def show_user(
        user_id: str, actor: Annotated[Principal, Depends(require("users:read"))]
    ) -> UserDetail:
        async with keel.db.session() as session:
            user = await get_user(session, actor, user_id)
            return _user_detail(user, await user_roles(session, user.id))

    @router.patch(
        "/users/{user_id}",
        tags=["users"],
        summary="Change a user's name, status or roles (a role or status change ends its sessions)",
        responses=err,
    )
    async def change_user(
        user_id: str,
        body: UserPatch,
        actor: Annotated[Principal, Depends(require("users:manage"))],
    ) -> UserDetail:
        async with keel.db.transaction() as session:
            user = await get_user(session, actor, user_id)
            if body.status is not None or body.roles is not None:
                if user.id == actor.user_id:
                    raise Forbidden("Change your own roles or status through another admin.")
                holder = await user_roles(session, user.id)
                if "owner" in holder and "*" not in actor.permissions:
                    raise Forbidden("Only an owner can change an owner.")
            before = {
                "display_name": user.display_name,
                "status": user.status,
                "roles": await user_roles(session, user.id),
            }
            if body.display_name is not None:
                user.display_name = body.display_name.strip()
                user.updated_at = datetime.now(UTC)
            if body.status is not None:
                await set_status(session, user, body.status, config=config)
            roles = (
                await set_roles(session, catalog, actor, user, body.roles, config=config)
                if body.roles is not None
                else await user_roles(session, user.id)
            )
            await record(
                session,
                "user.update",
                resource=("user", user.id),
                before=before,
                after={"display_name": user.display_name, "status": user.status, "roles": roles},
                tenant_id=user.tenant_id,
            )
        await runtime.revocations.publish()
        return _user_detail(user, roles)

    @router.post(
        "/users/{user_id}/unlock",
        tags=["users"],
        status_code=status.HTTP_204_NO_CONTENT,
        summary="Lift a login lockout",
        responses=err,
    )
    async def unlock_user(
        user_id: str, actor: Annotated[Principal, Depends(require("users:manage"))]
    ) -> Response:
        async with keel.db.transaction() as session:
            user = await get_user(session, actor, user_id)
            if await unlock(session, user.email):
                await record(
                    session, "user.unlock", resource=("user", user.id), tenant_id=user.tenant_id
                )
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    @router.post(
        "/users/{user_id}/sign-out",
        tags=["users"],
        summary="End every session and token of a user",
        responses=err,
    )
    async def sign_out_user(
        user_id: str, actor: Annotated[Principal, Depends(require("users:manage"))]
    ) -> dict[str, int]:
        async with keel.db.transaction() as session:
            user = await get_user(session, actor, user_id)
            ended = await end_everything(session, user.id, config=config, reason="admin-sign-out")
            await record(
                session,
                "user.sign_out",
                resource=("user", user.id),
                after={"sessions_ended": ended},
                tenant_id=user.tenant_id,
            )
        await runtime.revocations.publish()
        return {"sessions_ended": ended}

    # --- tenants -------------------------------------------------------------------------
    @router.get("/tenants", tags=["tenants"], summary="Tenants (a tenant's user: its own)")
    async def tenants(actor: User_, limit: Limit = 100, cursor: Cursor = None) -> Page[TenantOut]:
        async with keel.db.session() as session:
            rows = await list_tenants(session, actor, limit=limit, after=cursor)
        items = [
            TenantOut(id=r.id, slug=r.slug, name=r.name, created_at=r.created_at) for r in rows
        ]
        page, next_cursor = _page(items, limit, lambda item: item.id)
        return Page(items=page, next_cursor=next_cursor)

    @router.post(
        "/tenants",
        tags=["tenants"],
        status_code=status.HTTP_201_CREATED,
        summary="Create a tenant (deployment-level accounts only)",
        responses=problem_responses(401, 403, 409),
    )
    async def new_tenant(
        body: TenantCreate, actor: Annotated[Principal, Depends(require("tenants:manage"))]
    ) -> TenantOut:
        if actor.tenant_id is not None:
            raise Forbidden("Only a deployment-level account can create tenants.")
        async with keel.db.transaction() as session:
            row = await create_tenant(session, slug=body.slug, name=body.name)
            await record(
                session,
                "tenant.create",
                resource=("tenant", row.id),
                after={"slug": row.slug, "name": row.name},
                tenant_id=row.id,
            )
        return TenantOut(id=row.id, slug=row.slug, name=row.name, created_at=row.created_at)

    @router.get("/tenants/{tenant_id}", tags=["tenants"], summary="One tenant", responses=err)
    async def show_tenant(tenant_id: str, actor: User_) -> TenantOut:
        async with keel.db.session() as session:
            row = await find_tenant(session, actor, tenant_id)
        return TenantOut(id=row.id, slug=row.slug, name=row.name, created_at=row.created_at)

    # --- roles ---------------------------------------------------------------------------
    @router.get("/roles/permissions", tags=["roles"], summary="Every declared permission")
    async def permissions(_actor: User_) -> list[PermissionOut]:
        return [
            PermissionOut(
                name=spec.name, description=spec.description, roles=["owner", *spec.roles]
            )
            for spec in sorted(catalog.permissions.values(), key=lambda spec: spec.name)
        ]

    @router.get("/roles", tags=["roles"], summary="Built-in roles and my tenant's custom roles")
    async def roles(actor: User_) -> list[RoleOut]:
        builtin = [
            RoleOut(
                id=None,
                name=name,
                builtin=True,
                tenant_id=None,
                description=f"built-in role {name}",
                permissions=sorted(catalog.builtin[name]),
            )
            for name in BUILTIN_ROLES
        ]
        async with keel.db.session() as session:
            custom = [_role_out(row) for row in await list_roles(session, actor)]
        return builtin + custom

    @router.post(
        "/roles",
        tags=["roles"],
        status_code=status.HTTP_201_CREATED,
        summary="Create a custom role (only with permissions I hold)",
        responses=problem_responses(401, 403, 404, 409),
    )
    async def new_role(
        body: RoleCreate, actor: Annotated[Principal, Depends(require("roles:manage"))]
    ) -> RoleOut:
        async with keel.db.transaction() as session:
            tenant_id = await deployment_tenant(session, actor, body.tenant)
            row = await create_role(
                session,
                catalog,
                actor,
                name=body.name,
                permissions=body.permissions,
                description=body.description,
                tenant_id=tenant_id,
            )
            await record(
                session,
                "role.create",
                resource=("role", row.id),
                after={"name": row.name, "permissions": row.permissions},
                tenant_id=row.tenant_id,
            )
        return _role_out(row)

    @router.delete(
        "/roles/{role_id}",
        tags=["roles"],
        status_code=status.HTTP_204_NO_CONTENT,
        summary="Delete a custom role nobody holds",
        responses=problem_responses(401, 403, 404, 409),
    )
    async def remove_role(
        role_id: str, actor: Annotated[Principal, Depends(require("roles:manage"))]
    ) -> Response:
        async with keel.db.transaction() as session:
            await delete_role(session, actor, role_id)
            await record(session, "role.delete", resource=("role", role_id))
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    # --- API keys ------------------------------------------------------------------------
    @router.post(
        "/api-keys",
        tags=["api-keys"],
        status_code=status.HTTP_201_CREATED,
        summary="Create an API key (its secret is shown once)",
        responses=problem_responses(401, 403, 404),
    )
    async def new_key(body: ApiKeyCreate, actor: KeysActor, response: Response) -> ApiKeyCreated:
        async with keel.db.transaction() as session:
            service_tenant = (
                (await find_tenant(session, actor, body.service_tenant)).id
                if body.service_tenant is not None
                else None
            )
            row, secret = await create_api_key(
                session,
                catalog,
                actor,
                name=body.name,
                scopes=body.scopes,
                expires_at=body.expires_at,
                service_tenant_id=service_tenant,
            )
            await record(
                session,
                "api_key.create",
                resource=("api_key", row.id),
                after={"name": row.name, "scopes": row.scopes, "user_id": row.user_id},
                tenant_id=row.tenant_id,
            )
        response.headers["Cache-Control"] = "no-store"
        return ApiKeyCreated(key=_key_out(row), secret=secret)

    @router.get(
        "/api-keys",
        tags=["api-keys"],
        summary="My API keys (all of my tenant's with api-keys:manage)",
    )
    async def keys(actor: KeysActor, limit: Limit = 100, cursor: Cursor = None) -> Page[ApiKeyOut]:
        async with keel.db.session() as session:
            items = [
                _key_out(row)
                for row in await list_api_keys(session, actor, limit=limit, after=cursor)
            ]
        page, next_cursor = _page(items, limit, lambda item: item.id)
        return Page(items=page, next_cursor=next_cursor)

    @router.get("/api-keys/{key_id}", tags=["api-keys"], summary="One API key", responses=err)
    async def show_key(key_id: str, actor: KeysActor) -> ApiKeyOut:
        async with keel.db.session() as session:
            return _key_out(await get_api_key(session, actor, key_id))

    @router.delete(
        "/api-keys/{key_id}",
        tags=["api-keys"],
        status_code=status.HTTP_204_NO_CONTENT,
        summary="Revoke an API key (every process refuses it within a second)",
        responses=err,
    )
    async def revoke_key(key_id: str, actor: KeysActor) -> Response:
        async with keel.db.transaction() as session:
            revoked = await revoke_api_key(session, actor, key_id)
            await record(
                session, "api_key.revoke", resource=("api_key", key_id), tenant_id=revoked.tenant_id
            )
        await runtime.revocations.publish()
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    # --- share links ---------------------------------------------------------------------
    @router.post(
        "/shares",
        tags=["shares"],
        status_code=status.HTTP_201_CREATED,
        summary="Share one resource by link (its token is shown once)",
        responses=problem_responses(401, 403),
    )
    async def new_share(body: ShareCreate, actor: SharesActor, response: Response) -> ShareCreated:
        async with keel.db.transaction() as session:
            row, token = await create_share(
                session,
                catalog,
                actor,
                resource_type=body.resource_type,
                resource_id=body.resource_id,
                permissions=body.permissions,
                expires_in=timedelta(seconds=body.expires_in_seconds),
                max_uses=body.max_uses,
                note=body.note,
            )
            await record(
                session,
                "share.create",
                resource=(row.resource_type, row.resource_id),
                after={
                    "share_id": row.id,
                    "permissions": row.permissions,
                    "max_uses": row.max_uses,
                },
            )
        response.headers["Cache-Control"] = "no-store"
        return ShareCreated(share=_share_out(row), token=token)

    @router.get(
        "/shares", tags=["shares"], summary="My share links (all of my tenant's with shares:manage)"
    )
    async def shares(
        actor: SharesActor, limit: Limit = 100, cursor: Cursor = None
    ) -> Page[ShareOut]:
        async with keel.db.session() as session:
            items = [
                _share_out(row)
                for row in await list_shares(session, actor, limit=limit, after=cursor)
            ]
        page, next_cursor = _page(items, limit, lambda item: item.id)
        return Page(items=page, next_cursor=next_cursor)

    @router.get("/shares/{share_id}", tags=["shares"], summary="One share link", responses=err)
    async def show_share(share_id: str, actor: SharesActor) -> ShareOut:
        async with keel.db.session() as session:
            return _share_out(await get_share(session, actor, share_id))

    @router.delete(
        "/shares/{share_id}",
        tags=["shares"],
        status_code=status.HTTP_204_NO_CONTENT,
        summary="Revoke a share link",
        responses=err,
    )
    async def revoke_link(share_id: str, actor: SharesActor) -> Response:
        async with keel.db.transaction() as session:
            await revoke_share(session, actor, share_id)
            await record(session, "share.revoke", resource=("share", share_id))
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    return router
