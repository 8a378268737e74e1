"""Request and response bodies of the identity API."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

__all__ = ["LoginRequest", "LoginResponse", "SessionOut", "SetupRequest", "UserOut"]


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
