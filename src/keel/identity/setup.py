"""First-owner setup: a one-time link instead of a default password.

When Keel starts with no users, it creates a setup token (random, stored only as a hash, valid
one hour, usable once) and prints a link carrying it. Whoever opens the link chooses the first
account's email and password. The token travels in the URL *fragment*, which browsers never
send to servers, so it does not land in access logs, proxies or Referer headers.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import String, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from keel.core.database import Base, Database, UTCDateTime
from keel.core.errors import Conflict, Forbidden
from keel.core.ids import new_secret, secret_digest
from keel.identity.models import RoleAssignment, User
from keel.identity.service import create_user

__all__ = [
    "SETUP_LIFETIME",
    "SetupToken",
    "SetupTokenInvalid",
    "complete_setup",
    "issue_setup_token",
    "setup_link",
]

SETUP_LIFETIME = timedelta(hours=1)


class SetupTokenInvalid(Forbidden):
    """The setup link is wrong, expired or already used; restart Keel for a new one."""

    slug = "setup-token-invalid"
    title = "Setup Link Invalid"


class SetupToken(Base):
    """A one-time token that allows creating the first account."""

    __tablename__ = "keel_setup_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    used_by_user_id: Mapped[str | None] = mapped_column(String(36), default=None)


async def issue_setup_token(session: AsyncSession, *, now: datetime | None = None) -> str | None:
    """A new setup token if there are no users yet, else None. Earlier unused tokens die."""
    if await session.scalar(select(func.count()).select_from(User)):
        return None
    now = now or datetime.now(UTC)
    await session.execute(
        update(SetupToken).where(SetupToken.used_at.is_(None)).values(expires_at=now)
    )
    token = new_secret()
    session.add(
        SetupToken(token_hash=secret_digest(token), created_at=now, expires_at=now + SETUP_LIFETIME)
    )
    return token


async def setup_link(db: Database, base_url: str) -> str | None:
    """A fresh one-time link to create the first account, or None when users exist."""
    async with db.transaction() as session:
        token = await issue_setup_token(session)
    return f"{base_url.rstrip('/')}/setup#token={token}" if token else None


async def complete_setup(
    session: AsyncSession,
    *,
    token: str,
    email: str,
    password_hash: str,
    display_name: str | None = None,
    now: datetime | None = None,
) -> User:
    """Create the first account with a valid, unused token; the token is spent either way."""
    now = now or datetime.now(UTC)
    query = select(SetupToken).where(SetupToken.token_hash == secret_digest(token))
    bind = session.bind
    if bind is not None and bind.dialect.name == "postgresql":
        query = query.with_for_update()
    row = await session.scalar(query)
    if row is None or row.used_at is not None or row.expires_at <= now:
        raise SetupTokenInvalid()
    if await session.scalar(select(func.count()).select_from(User)):
        raise Conflict("Keel already has users; sign in instead.")
    user = await create_user(
        session, email=email, password_hash=password_hash, display_name=display_name
    )
    session.add(RoleAssignment(user_id=user.id, role="owner", created_at=now))
    row.used_at = now
    row.used_by_user_id = user.id
    return user
