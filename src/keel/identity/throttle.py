"""Login throttling and lockout, per account and per client address.

An attempt is counted *before* its password is checked, so a burst of parallel guesses cannot
get more tries than the limit allows; a success clears the account's count. Unknown emails are
counted and locked exactly like real ones, so the answers never reveal which accounts exist.
Every attempt is recorded (the audit trail will chain these records once it exists).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Boolean, Integer, String, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from keel.audit import Actor, current_actor, record
from keel.core.database import Base, Database, UTCDateTime
from keel.core.errors import KeelError, Unauthenticated, ValidationFailed
from keel.core.ids import new_id
from keel.identity.models import User, UserStatus
from keel.identity.passwords import verify_password
from keel.identity.service import normalize_email

__all__ = [
    "LoginAttempt",
    "LoginFailed",
    "LoginPolicy",
    "LoginThrottle",
    "LoginThrottled",
    "account_locks",
    "address_key",
    "lock_state",
    "login",
    "unlock",
]


class LoginFailed(Unauthenticated):
    """The email or password is wrong."""

    slug = "login-failed"
    title = "Login Failed"


class LoginThrottled(KeelError):
    """Too many failed logins; try again later."""

    status = 429
    slug = "login-throttled"
    title = "Too Many Login Attempts"


class LoginThrottle(Base):
    """Consecutive failures and lock state of one account email or one client address."""

    __tablename__ = "keel_login_throttle"

    key: Mapped[str] = mapped_column(String(400), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    window_started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class LoginAttempt(Base):
    """One login attempt, successful or not."""

    __tablename__ = "keel_login_attempts"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    email: Mapped[str] = mapped_column(String(320), index=True)
    user_id: Mapped[str | None] = mapped_column(String(36), default=None)
    client_ip: Mapped[str | None] = mapped_column(String(64), default=None)
    outcome: Mapped[str] = mapped_column(String(16))
    succeeded: Mapped[bool] = mapped_column(Boolean, default=False)


@dataclass(frozen=True, slots=True)
class LoginPolicy:
    """How many failures lock what, and for how long."""

    account_failures: int = 5
    """Failures in a row after which an account is locked."""
    base_lock: timedelta = timedelta(minutes=1)
    """First lock; each further failure doubles it..."""
    max_lock: timedelta = timedelta(hours=1)
    """...up to this."""
    address_failures: int = 30
    """Failures from one client address (any accounts) within `address_window` that lock it."""
    address_window: timedelta = timedelta(minutes=10)

    def lock_for(self, failures: int) -> timedelta:
        """The lock after `failures` failures in a row."""
        over = max(0, failures - self.account_failures)
        return min(self.base_lock * (1 << min(over, 20)), self.max_lock)


async def _row(session: AsyncSession, key: str, now: datetime) -> LoginThrottle:
    """The throttle row for `key`, created if absent, locked for this transaction."""
    dialect = session.bind.dialect.name if session.bind is not None else "sqlite"
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    await session.execute(
        insert(LoginThrottle)
        .values(key=key, failures=0, locked_until=None, window_started_at=now, updated_at=now)
        .on_conflict_do_nothing(index_elements=["key"])
    )
    query = select(LoginThrottle).where(LoginThrottle.key == key)
    if dialect == "postgresql":
        query = query.with_for_update()
    row = await session.scalar(query.execution_options(populate_existing=True))
    assert row is not None
    return row


def _retry_after(until: datetime, now: datetime) -> str:
    return str(max(1, int((until - now).total_seconds() + 0.999)))


def address_key(client_ip: str | None) -> str | None:
    """The throttle key of a client address: IPv4 as is (IPv4-mapped IPv6 too), IPv6 by its
    /64, since one client usually holds a whole /64 and could rotate through it."""
    if not client_ip:
        return None
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return f"ip:{client_ip[:64]}"
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if isinstance(address, ipaddress.IPv6Address):
        return f"ip:{ipaddress.IPv6Network((address, 64), strict=False)}"
    return f"ip:{address}"


@dataclass(slots=True)
class _Claim:
    """What the first transaction learnt about the account it counted an attempt for."""

    user_id: str | None = None
    stored_hash: str | None = None
    refused_until: datetime | None = None


async def _claim_attempt(
    session: AsyncSession,
    *,
    account_key: str,
    ip_key: str | None,
    address: str,
    client_ip: str | None,
    policy: LoginPolicy,
    now: datetime,
) -> _Claim:
    account = await _row(session, account_key, now)
    network = await _row(session, ip_key, now) if ip_key else None
    if network is not None and now - network.window_started_at > policy.address_window:
        network.failures, network.window_started_at = 0, now
    locks = [
        row.locked_until
        for row in (account, network)
        if row is not None and row.locked_until is not None and row.locked_until > now
    ]
    if locks:
        session.add(
            _attempt(now=now, email=address, user_id=None, client_ip=client_ip, outcome="throttled")
        )
        await record(
            session,
            "auth.login",
            outcome="denied",
            after={"email": address},
            reason="locked out",
            actor=_anonymous(client_ip),
        )
        return _Claim(refused_until=max(locks))
    # Counted before the password is checked: parallel guesses each take a count.
    account.failures += 1
    account.updated_at = now
    if account.failures >= policy.account_failures:
        account.locked_until = now + policy.lock_for(account.failures)
        if account.failures == policy.account_failures:
            await record(
                session,
                "auth.lockout",
                resource=("account", address),
                outcome="denied",
                after={"failures": account.failures, "locked_until": account.locked_until},
                actor=_anonymous(client_ip),
            )
    if network is not None:
        network.failures += 1
        network.updated_at = now
        if network.failures >= policy.address_failures:
            over = network.failures - policy.address_failures
            network.locked_until = now + min(
                policy.address_window * (1 << min(over, 10)), policy.max_lock
            )
    # unscoped: signing in finds the account by its (globally unique) email.
    user = await session.scalar(select(User).where(User.email == address))
    if user is None or user.status != UserStatus.ACTIVE:
        return _Claim()
    return _Claim(user_id=user.id, stored_hash=user.password_hash)


async def login(
    db: Database,
    *,
    email: str,
    password: str,
    client_ip: str | None,
    policy: LoginPolicy | None = None,
    now: datetime | None = None,
) -> User:
    """The active user for these credentials; `LoginFailed` (401) or `LoginThrottled` (429).

    Three short transactions: count the attempt (refusing it when locked), check the password
    with no transaction open (hashing is slow), then record the outcome, re-checking that the
    account is still active and its password unchanged since it was read.
    """
    policy = policy or LoginPolicy()
    now = now or datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError("login(now=...) must be timezone-aware")
    try:
        address = normalize_email(email)
    except ValidationFailed:
        address = email.strip().lower()[:320]
    account_key, ip_key = _key_for(address), address_key(client_ip)

    async with db.transaction() as session:
        claim = await _claim_attempt(
            session,
            account_key=account_key,
            ip_key=ip_key,
            address=address,
            client_ip=client_ip,
            policy=policy,
            now=now,
        )
    if claim.refused_until is not None:
        raise LoginThrottled(headers={"Retry-After": _retry_after(claim.refused_until, now)})

    verification = await verify_password(password, claim.stored_hash)

    async with db.transaction() as session:
        user = None
        if verification.ok and claim.user_id is not None:
            # unscoped: the account this sign-in attempt claimed.
            query = select(User).where(User.id == claim.user_id)
            if db.dialect == "postgresql":
                query = query.with_for_update()
            user = await session.scalar(query)
            # Disabled, or given a new password, while this attempt was being checked.
            if (
                user is None
                or user.status != UserStatus.ACTIVE
                or user.password_hash != claim.stored_hash
            ):
                user = None
        succeeded = user is not None
        session.add(
            _attempt(
                now=now,
                email=address,
                user_id=claim.user_id,
                client_ip=client_ip,
                outcome="success" if succeeded else "failed",
                succeeded=succeeded,
            )
        )
        await record(
            session,
            "auth.login",
            resource=("user", claim.user_id) if claim.user_id else None,
            outcome="success" if succeeded else "failed",
            after={"email": address},
            actor=(
                Actor("user", user.id, user.email, user.tenant_id, client_ip=client_ip)
                if user is not None
                else _anonymous(client_ip)
            ),
            tenant_id=user.tenant_id if user is not None else None,
        )
        if user is not None:
            await session.execute(
                update(LoginThrottle)
                .where(LoginThrottle.key == account_key)
                .values(failures=0, locked_until=None, updated_at=now)
            )
            if ip_key is not None:  # a success takes back the count it provisionally added
                await session.execute(
                    update(LoginThrottle)
                    .where(LoginThrottle.key == ip_key)
                    .where(LoginThrottle.failures > 0)
                    .values(failures=LoginThrottle.failures - 1)
                )
            if verification.new_hash is not None:
                user.password_hash = verification.new_hash
            user.last_login_at = now
            user.updated_at = now
    if user is None:
        raise LoginFailed("The email or password is wrong.")
    return user


def _anonymous(client_ip: str | None) -> Actor:
    bound = current_actor()
    if bound is not None and bound.type == "anonymous":
        return bound
    return Actor("anonymous", None, "", client_ip=client_ip)


def _attempt(
    *,
    now: datetime,
    email: str,
    user_id: str | None,
    client_ip: str | None,
    outcome: str,
    succeeded: bool = False,
) -> LoginAttempt:
    return LoginAttempt(
        id=new_id(),
        at=now,
        email=email,
        user_id=user_id,
        client_ip=client_ip,
        outcome=outcome,
        succeeded=succeeded,
    )


def _key_for(address: str) -> str:
    return f"email:{address}"


def _account_key(email: str) -> str:
    return _key_for(normalize_email(email))


async def unlock(session: AsyncSession, email: str) -> bool:
    """Clear an account's failures and lock (an admin action). True if it was locked."""
    row = await session.get(LoginThrottle, _account_key(email))
    if row is None:
        return False
    was_locked = row.locked_until is not None and row.locked_until > datetime.now(UTC)
    row.failures, row.locked_until = 0, None
    return was_locked


async def lock_state(
    session: AsyncSession, email: str, *, now: datetime | None = None
) -> datetime | None:
    """Until when the account is locked, or None."""
    now = now or datetime.now(UTC)
    row = await session.get(LoginThrottle, _account_key(email))
    if row is None or row.locked_until is None or row.locked_until <= now:
        return None
    return row.locked_until


async def account_locks(
    session: AsyncSession, emails: Sequence[str], *, now: datetime | None = None
) -> dict[str, datetime]:
    """Until when each of these (normalised) emails is locked; unlocked ones are absent."""
    now = now or datetime.now(UTC)
    keys = {_key_for(email): email for email in emails}
    if not keys:
        return {}
    rows = await session.scalars(
        select(LoginThrottle)
        .where(LoginThrottle.key.in_(list(keys)))
        .where(LoginThrottle.locked_until > now)
    )
    return {keys[row.key]: row.locked_until for row in rows if row.locked_until is not None}


async def locks_in_force(
    session: AsyncSession, *, now: datetime | None = None
) -> list[tuple[str, str, datetime]]:
    """Every lock in force: (`account` or `address`, email or address, until when)."""
    now = now or datetime.now(UTC)
    rows = await session.scalars(
        select(LoginThrottle)
        .where(LoginThrottle.locked_until > now)
        .order_by(LoginThrottle.locked_until.desc())
    )
    found: list[tuple[str, str, datetime]] = []
    for row in rows:
        if row.locked_until is None:
            continue
        kind, _, value = row.key.partition(":")
        found.append(("account" if kind == "email" else "address", value, row.locked_until))
    return found


async def unlock_address(session: AsyncSession, client_ip: str) -> bool:
    """Clear a client address's failures and lock (its /64 for IPv6). True if it was locked."""
    key = address_key(client_ip.strip())
    row = await session.get(LoginThrottle, key) if key else None
    if row is None:
        return False
    was_locked = row.locked_until is not None and row.locked_until > datetime.now(UTC)
    row.failures, row.locked_until = 0, None
    return was_locked
