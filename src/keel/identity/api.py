"""The identity HTTP API: sign in and out with a browser session, list and revoke sessions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, Depends, Request, Response, status
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from keel.core.errors import NotFound, problem_responses
from keel.identity.middleware import session_cookie_name, session_token
from keel.identity.models import User
from keel.identity.principal import Principal, require_user
from keel.identity.schemas import (
    LoginRequest,
    LoginResponse,
    SessionOut,
    SetupRequest,
    UserOut,
)
from keel.identity.service import prepare_password
from keel.identity.sessions import (
    BrowserSession,
    create_session,
    list_sessions,
    revoke_session,
)
from keel.identity.setup import complete_setup
from keel.identity.throttle import login

if TYPE_CHECKING:
    from keel.app import Keel

__all__ = ["auth_router", "setup_page_router"]

User_ = Annotated[Principal, Depends(require_user)]


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

    @router.get("/setup", include_in_schema=False, response_class=HTMLResponse)
    async def setup_page() -> HTMLResponse:
        return HTMLResponse(page.render(), headers={"Cache-Control": "no-store"})

    return router


def auth_router(keel: Keel) -> APIRouter:
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
    )
    async def sign_in(body: LoginRequest, request: Request, response: Response) -> LoginResponse:
        client_ip = request.client.host if request.client else None
        user = await login(keel.db, email=body.email, password=body.password, client_ip=client_ip)
        return await start_session(request, response, user)

    @router.get("/session", summary="The current session and its CSRF token")
    async def current(principal: User_, response: Response) -> dict[str, object]:
        response.headers["Cache-Control"] = "no-store"
        return {
            "user": {
                "id": principal.user_id,
                "email": principal.email,
                "display_name": principal.display_name,
            },
            "session_id": principal.session_id,
            "csrf_token": principal.csrf_token,
        }

    @router.delete(
        "/session", status_code=status.HTTP_204_NO_CONTENT, summary="Sign out this browser"
    )
    async def sign_out(principal: User_) -> Response:
        if principal.session_id is not None:
            async with keel.db.transaction() as session:
                await revoke_session(session, principal.session_id, user_id=principal.user_id)
        response = Response(status_code=status.HTTP_204_NO_CONTENT)
        response.delete_cookie(cookie, path="/", secure=https, httponly=True, samesite="lax")
        return response

    @router.get("/sessions", summary="My live sessions")
    async def my_sessions(principal: User_) -> list[SessionOut]:
        async with keel.db.session() as session:
            rows = await list_sessions(session, principal.user_id, now=datetime.now(UTC))
        return [_session_out(row, principal.session_id) for row in rows]

    @router.delete(
        "/sessions/{session_id}",
        status_code=status.HTTP_204_NO_CONTENT,
        summary="End one of my sessions (another browser)",
    )
    async def end_session(session_id: str, principal: User_) -> Response:
        async with keel.db.transaction() as session:
            if not await revoke_session(session, session_id, user_id=principal.user_id):
                raise NotFound("no such session")
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    return router
