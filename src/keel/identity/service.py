"""User accounts: create, find, list, disable. Signing in goes through `throttle.login`.

Every function takes the session first and changes nothing outside it: the caller's
transaction decides whether the change happens (and, once the audit module exists, its event
is written in that same transaction).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from keel.core.errors import Conflict, NotFound, ValidationFailed
from keel.core.ids import new_id
from keel.identity.models import User, UserStatus
from keel.identity.passwords import check_policy, hash_password
from keel.identity.sessions import revoke_all_sessions

__all__ = [
    "create_user",
    "disable_user",
    "get_user_by_email",
    "list_users",
    "normalize_email",
    "prepare_password",
    "sign_out_everywhere",
]

_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


def normalize_email(email: str) -> str:
    """The stored form of an email (trimmed, lower-case); `ValidationFailed` if malformed."""
    value = email.strip().lower()
    if len(value) > 320 or _EMAIL.fullmatch(value) is None:
        raise ValidationFailed(
            f"{email.strip()!r} is not an email address.",
            errors=[
                {
                    "location": "body",
                    "pointer": "/email",
                    "detail": "not an email address",
                    "code": "email",
                }
            ],
        )
    return value


async def get_user_by_email(session: AsyncSession, email: str) -> User | None:
    """The user with this email (any case), or None."""
    return await session.scalar(select(User).where(User.email == normalize_email(email)))


async def prepare_password(password: str, *, email: str) -> str:
    """Check `password` against the policy and hash it: call this *before* opening the
    transaction that creates or updates the user, so the slow hash holds no lock."""
    check_policy(password, email=normalize_email(email))
    return await hash_password(password)


async def create_user(
    session: AsyncSession,
    *,
    email: str,
    password_hash: str | None,
    display_name: str | None = None,
) -> User:
    """A new active user with a hash from `prepare_password` (None: no password yet)."""
    address = normalize_email(email)
    if await session.scalar(select(User.id).where(User.email == address)) is not None:
        raise Conflict(f"a user with email {address} already exists")
    now = datetime.now(UTC)
    user = User(
        id=new_id(),
        email=address,
        display_name=(display_name or address.split("@", 1)[0]).strip()[:200],
        status=UserStatus.ACTIVE,
        password_hash=password_hash,
        created_at=now,
        updated_at=now,
        password_changed_at=now if password_hash is not None else None,
    )
    try:
        # A savepoint, so a lost race leaves the caller's transaction usable (PostgreSQL
        # aborts the whole transaction on an error otherwise).
        async with session.begin_nested():
            session.add(user)
    except IntegrityError:
        raise Conflict(f"a user with email {address} already exists") from None
    return user


async def list_users(
    session: AsyncSession,
    *,
    status: str | None = None,
    limit: int = 100,
    after: str | None = None,
) -> Sequence[User]:
    """Users in creation order (ids are time-ordered), `limit` at a time after id `after`."""
    query = select(User).order_by(User.id).limit(max(1, min(limit, 1000)))
    if status is not None:
        if status not in UserStatus.ALL:
            raise ValidationFailed(f"status must be one of {', '.join(UserStatus.ALL)}")
        query = query.where(User.status == status)
    if after is not None:
        query = query.where(User.id > after)
    return (await session.scalars(query)).all()


async def disable_user(session: AsyncSession, email: str) -> User:
    """Disable the user: it can no longer sign in, and its sessions end. Disabling twice is
    not an error."""
    user = await get_user_by_email(session, email)
    if user is None:
        raise NotFound(f"no user with email {normalize_email(email)}")
    if user.status != UserStatus.DISABLED:
        user.status = UserStatus.DISABLED
        user.updated_at = datetime.now(UTC)
    await revoke_all_sessions(session, user.id)
    return user


async def sign_out_everywhere(session: AsyncSession, email: str) -> int:
    """End every session of the user (a lost laptop, a leaked cookie). Returns how many."""
    user = await get_user_by_email(session, email)
    if user is None:
        raise NotFound(f"no user with email {normalize_email(email)}")
    return await revoke_all_sessions(session, user.id)
