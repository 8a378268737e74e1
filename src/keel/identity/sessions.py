"""Browser sessions: server-side rows behind an opaque cookie, with idle and absolute expiry.

The cookie holds a random token; the database holds only its SHA-256, so a leaked table does
not yield usable cookies. Each session has its own CSRF token. Logging in always creates a
new session (and revokes the one the browser brought), so a planted session id is worthless.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import ForeignKey, String, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from keel.core.database import Base, UTCDateTime
from keel.core.ids import new_id, new_secret, secret_digest
from keel.identity.models import User, UserStatus

__all__ = [
    "LAST_SEEN_RESOLUTION",
    "BrowserSession",
    "IssuedSession",
    "create_session",
    "list_sessions",
    "needs_touch",
    "resolve_session",
    "revoke_all_sessions",
    "revoke_session",
    "touch_session",
]

LAST_SEEN_RESOLUTION = timedelta(minutes=1)
"""`last_seen_at` is written at most this often per session (not on every request)."""


class BrowserSession(Base):
    """One signed-in browser."""

    __tablename__ = "keel_sessions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[str] = mapped_column(
        ForeignKey("keel_users.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    client_ip: Mapped[str | None] = mapped_column(String(64), default=None)
    user_agent: Mapped[str | None] = mapped_column(String(300), default=None)


@dataclass(frozen=True, slots=True)
class IssuedSession:
    """A new session and the secrets only its browser gets to see."""

    row: BrowserSession
    token: str
    csrf_token: str


async def create_session(
    session: AsyncSession,
    user: User,
    *,
    lifetime: timedelta,
    client_ip: str | None = None,
    user_agent: str | None = None,
    replaces: str | None = None,
    now: datetime | None = None,
) -> IssuedSession:
    """Start a session for `user`; `replaces` (the token the browser brought) is revoked."""
    now = now or datetime.now(UTC)
    if replaces:
        await session.execute(
            update(BrowserSession)
            .where(BrowserSession.token_hash == secret_digest(replaces))
            .where(BrowserSession.revoked_at.is_(None))
            .values(revoked_at=now)
        )
    token = new_secret()
    csrf = new_secret()
    row = BrowserSession(
        id=new_id(),
        token_hash=secret_digest(token),
        csrf_token=csrf,
        user_id=user.id,
        created_at=now,
        last_seen_at=now,
        expires_at=now + lifetime,
        client_ip=client_ip,
        user_agent=(user_agent or "")[:300] or None,
    )
    session.add(row)
    await session.flush()
    return IssuedSession(row=row, token=token, csrf_token=csrf)


async def resolve_session(
    session: AsyncSession,
    token: str,
    *,
    idle: timedelta,
    now: datetime | None = None,
) -> tuple[BrowserSession, User] | None:
    """The live session and active user behind a cookie token, or None. Reads only;
    `needs_touch` says when `touch_session` should record activity."""
    now = now or datetime.now(UTC)
    found = (
        await session.execute(
            # unscoped: authentication: the cookie is resolved before any tenant is known.
            select(BrowserSession, User)
            .join(User, User.id == BrowserSession.user_id)
            .where(BrowserSession.token_hash == secret_digest(token))
        )
    ).first()
    if found is None:
        return None
    row, user = found
    if (
        row.revoked_at is not None
        or row.expires_at <= now
        or row.last_seen_at + idle <= now
        or user.status != UserStatus.ACTIVE
    ):
        return None
    return row, user


def needs_touch(row: BrowserSession, *, now: datetime | None = None) -> bool:
    """Whether the session's `last_seen_at` is older than `LAST_SEEN_RESOLUTION`."""
    return (now or datetime.now(UTC)) - row.last_seen_at >= LAST_SEEN_RESOLUTION


async def touch_session(
    session: AsyncSession, session_id: str, *, now: datetime | None = None
) -> None:
    """Record activity on a session (keeps it from idling out)."""
    await session.execute(
        update(BrowserSession)
        .where(BrowserSession.id == session_id)
        .values(last_seen_at=now or datetime.now(UTC))
    )


async def revoke_session(
    session: AsyncSession, session_id: str, *, user_id: str, now: datetime | None = None
) -> bool:
    """End one of `user_id`'s sessions. False if no such live session of theirs exists."""
    result = await session.execute(
        update(BrowserSession)
        .where(BrowserSession.id == session_id)
        .where(BrowserSession.user_id == user_id)
        .where(BrowserSession.revoked_at.is_(None))
        .values(revoked_at=now or datetime.now(UTC))
    )
    return bool(getattr(result, "rowcount", 0))


async def revoke_all_sessions(
    session: AsyncSession, user_id: str, *, now: datetime | None = None
) -> int:
    """End every live session of a user (password change, disable, "sign out everywhere")."""
    result = await session.execute(
        update(BrowserSession)
        .where(BrowserSession.user_id == user_id)
        .where(BrowserSession.revoked_at.is_(None))
        .values(revoked_at=now or datetime.now(UTC))
    )
    return int(getattr(result, "rowcount", 0))


async def list_sessions(
    session: AsyncSession, user_id: str, *, now: datetime | None = None
) -> Sequence[BrowserSession]:
    """A user's sessions that have not been revoked or reached their absolute expiry."""
    now = now or datetime.now(UTC)
    rows = await session.scalars(
        select(BrowserSession)
        .where(BrowserSession.user_id == user_id)
        .where(BrowserSession.revoked_at.is_(None))
        .order_by(BrowserSession.id)
    )
    return [row for row in rows if row.expires_at > now]
