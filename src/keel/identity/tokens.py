"""Access tokens (Ed25519 JWTs), their signing keys, and rotating refresh tokens.

Signing keys are generated on first use, stored with the private half encrypted by the
keyring, cached in memory, and rotated by `keel keys rotate`; a retired key stays published
and accepted until every token it signed has expired. Verification never reads the database:
keys and revocations are in memory, and verified claims are cached by token.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from keel.audit import record
from keel.core.config import Config
from keel.core.database import Database
from keel.core.errors import Unauthenticated
from keel.core.ids import new_id, new_secret, secret_digest
from keel.core.keyring import Keyring
from keel.identity.models import RefreshToken, SigningKey, User, UserStatus
from keel.identity.revocation import RevocationSet
from keel.observability.logging import get_logger

__all__ = [
    "FAMILY_MAX_AGE",
    "InvalidToken",
    "IssuedTokens",
    "SigningKeys",
    "TokenVerifier",
    "issue_tokens",
    "redeem_refresh_token",
    "revoke_family",
]

_logger = get_logger("keel.identity")
ALGORITHM = "EdDSA"
FAMILY_MAX_AGE = timedelta(days=90)
"""No refresh token outlives the sign-in that started its family by more than this."""
RELOAD_INTERVAL = 1.0
"""An unknown `kid` reloads the signing keys at most this often (seconds)."""
_SIGNING_LOCK = 0x6B65656C_6A777473  # "keeljwts": serialises key creation on PostgreSQL
_REQUIRED = ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]


class InvalidToken(Unauthenticated):
    """The access token is not valid."""

    slug = "invalid-token"
    title = "Invalid Token"

    def __init__(self, detail: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("headers", {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        super().__init__(detail, **kwargs)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class SigningKeys:
    """The signing keys this process knows: the current private key and the accepted public
    keys (current + retired within the acceptance window)."""

    def __init__(self, db: Database, *, keyring: Any, window: timedelta) -> None:
        # `keyring`: an async callable returning the kernel's Keyring (loaded lazily).
        self.db = db
        self._keyring = keyring
        self.window = window
        self.current_kid: str | None = None
        self._private: Ed25519PrivateKey | None = None
        self.public: dict[str, Ed25519PublicKey] = {}
        self._jwks: dict[str, Any] = {"keys": []}
        self._loaded_at = float("-inf")
        self._reload_lock = asyncio.Lock()

    async def load(self) -> None:
        """Read the keys (creating the first one if there is none)."""
        ring: Keyring = await self._keyring()
        async with self.db.session() as session:
            rows = list(await session.scalars(select(SigningKey).order_by(SigningKey.created_at)))
        if not any(row.retired_at is None for row in rows):
            await self._create(ring, retire=False)
            async with self.db.session() as session:
                rows = list(
                    await session.scalars(select(SigningKey).order_by(SigningKey.created_at))
                )
        self._adopt(ring, rows)

    def _adopt(self, ring: Keyring, rows: list[SigningKey]) -> None:
        now = datetime.now(UTC)
        accepted = [
            row for row in rows if row.retired_at is None or row.retired_at + self.window > now
        ]
        current = [row for row in rows if row.retired_at is None][-1]
        if current.kid != self.current_kid:
            raw = ring.decrypt(current.private_key, context=b"signing-key:" + current.kid.encode())
            self._private = Ed25519PrivateKey.from_private_bytes(raw)
            self.current_kid = current.kid
        self.public = {
            row.kid: Ed25519PublicKey.from_public_bytes(row.public_key) for row in accepted
        }
        self._jwks = {
            "keys": [
                {
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "x": _b64(row.public_key),
                    "kid": row.kid,
                    "alg": ALGORITHM,
                    "use": "sig",
                }
                for row in reversed(accepted)
            ]
        }
        self._loaded_at = time.monotonic()

    async def _create(self, ring: Keyring, *, retire: bool) -> str:
        async with self.db.transaction() as session:
            if session.bind is not None and session.bind.dialect.name == "postgresql":
                await session.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SIGNING_LOCK}
                )
            if not retire:
                existing = await session.scalar(
                    select(SigningKey.kid).where(SigningKey.retired_at.is_(None)).limit(1)
                )
                if existing is not None:
                    return existing
            now = datetime.now(UTC)
            if retire:
                await session.execute(
                    update(SigningKey).where(SigningKey.retired_at.is_(None)).values(retired_at=now)
                )
            key = Ed25519PrivateKey.generate()
            kid = f"s{now:%Y%m%d}{secrets.token_hex(4)}"
            raw = key.private_bytes(
                serialization.Encoding.Raw,
                serialization.PrivateFormat.Raw,
                serialization.NoEncryption(),
            )
            session.add(
                SigningKey(
                    kid=kid,
                    private_key=ring.encrypt(raw, context=b"signing-key:" + kid.encode()),
                    public_key=key.public_key().public_bytes(
                        serialization.Encoding.Raw, serialization.PublicFormat.Raw
                    ),
                    created_at=now,
                )
            )
        return kid

    async def rotate(self) -> str:
        """Sign with a new key from now on; returns its `kid`."""
        ring: Keyring = await self._keyring()
        kid = await self._create(ring, retire=True)
        await self.load()
        return kid

    async def reload_for(self, kid: str) -> Ed25519PublicKey | None:
        """The key `kid` after reloading (at most every `RELOAD_INTERVAL`, one reload at a
        time however many requests name unknown keys), or None."""
        async with self._reload_lock:
            if time.monotonic() - self._loaded_at >= RELOAD_INTERVAL:
                self._loaded_at = time.monotonic()  # stamped first: a failed load waits too
                try:
                    await self.load()
                except Exception:  # noqa: BLE001 - keep the keys we have; the token is refused
                    _logger.warning("signing keys could not be reloaded")
        return self.public.get(kid)

    def jwks(self) -> dict[str, Any]:
        """The JSON Web Key Set of the accepted public keys (current first)."""
        return self._jwks

    def sign(self, claims: dict[str, Any]) -> str:
        """A compact JWS of `claims` with the current key."""
        if self._private is None or self.current_kid is None:
            raise RuntimeError("SigningKeys.load() has not run")
        return jwt.encode(
            claims,
            self._private,
            algorithm=ALGORITHM,
            headers={"kid": self.current_kid, "typ": "at+jwt"},
        )


@dataclass(frozen=True, slots=True)
class Claims:
    """What a verified access token says."""

    sub: str
    tid: str | None
    jti: str
    sid: str | None
    exp: float
    scope: frozenset[str]
    kid: str


class TokenVerifier:
    """Verifies access tokens against the cached keys and the revocation set."""

    def __init__(
        self,
        keys: SigningKeys,
        revocations: RevocationSet,
        *,
        issuer: str,
        audience: str,
        leeway: int,
        cache_size: int = 10_000,
    ) -> None:
        self.keys = keys
        self.revocations = revocations
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway
        self.cache_size = cache_size
        self._cache: OrderedDict[str, Claims] = OrderedDict()
        self._options = {"require": _REQUIRED}

    async def verify(self, token: str) -> Claims:
        """The token's claims, or `InvalidToken`."""
        claims = self._cache.get(token)
        if claims is None:
            claims = await self._verify_signature(token)
            if len(self._cache) >= self.cache_size:
                self._cache.popitem(last=False)  # the oldest
            self._cache[token] = claims
        elif claims.exp + self.leeway <= time.time():
            del self._cache[token]
            raise InvalidToken("The access token has expired.")
        elif claims.kid not in self.keys.public:
            # Its key is no longer accepted (retired past its window, or withdrawn).
            del self._cache[token]
            raise InvalidToken("The token's key is no longer accepted.")
        if claims.jti in self.revocations.jti or (
            claims.sid is not None and claims.sid in self.revocations.family
        ):
            raise InvalidToken("The access token has been revoked.")
        return claims

    async def _verify_signature(self, token: str) -> Claims:
        header = _header(token)
        if header.get("alg") != ALGORITHM:
            raise InvalidToken("The token's algorithm is not accepted.")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise InvalidToken("The token names no key.")
        key = self.keys.public.get(kid) or await self.keys.reload_for(kid)
        if key is None:
            raise InvalidToken("The token's key is unknown.")
        try:
            payload = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options=self._options,  # type: ignore[arg-type]
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("The access token has expired.") from None
        except jwt.ImmatureSignatureError:
            raise InvalidToken("The access token is not valid yet.") from None
        except jwt.InvalidAudienceError:
            raise InvalidToken("The token is meant for another audience.") from None
        except jwt.InvalidIssuerError:
            raise InvalidToken("The token comes from another issuer.") from None
        except jwt.PyJWTError:
            raise InvalidToken() from None
        sub, jti, tid, sid = payload["sub"], payload["jti"], payload.get("tid"), payload.get("sid")
        scope = payload.get("scope", "")
        if not (
            isinstance(sub, str)
            and isinstance(jti, str)
            and isinstance(scope, str)
            and (tid is None or isinstance(tid, str))
            and (sid is None or isinstance(sid, str))
        ):
            raise InvalidToken("The token's claims are malformed.")
        return Claims(
            sub=sub,
            tid=tid,
            jti=jti,
            sid=sid,
            exp=float(payload["exp"]),
            scope=frozenset(scope.split()),
            kid=kid,
        )


def _header(token: str) -> dict[str, Any]:
    segment = token.split(".", 1)[0]
    try:
        header = orjson.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (binascii.Error, ValueError):
        raise InvalidToken("The token is malformed.") from None
    if not isinstance(header, dict):
        raise InvalidToken("The token is malformed.")
    return header


# --- issuing and refreshing ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IssuedTokens:
    """An access token and the refresh token that renews it."""

    access_token: str
    expires_in: int
    refresh_token: str
    family_id: str


def _access_claims(
    config: Config, user: User, permissions: frozenset[str], family_id: str, now: datetime
) -> dict[str, Any]:
    issued = int(now.timestamp())
    return {
        "iss": config.token_issuer,
        "aud": config.jwt_audience,
        "sub": user.id,
        "tid": user.tenant_id,
        "iat": issued,
        "nbf": issued,
        "exp": issued + config.access_token_minutes * 60,
        "jti": new_id(),
        "sid": family_id,
        "scope": " ".join(sorted(permissions)),
    }


async def issue_tokens(
    session: AsyncSession,
    keys: SigningKeys,
    config: Config,
    user: User,
    permissions: frozenset[str],
    *,
    family_id: str | None = None,
    family_started_at: datetime | None = None,
) -> IssuedTokens:
    """A new access token and refresh token for `user` (a new family unless given one)."""
    now = datetime.now(UTC)
    family_id = family_id or new_id()
    started = family_started_at or now
    refresh = "keel_rt_" + new_secret()
    session.add(
        RefreshToken(
            id=new_id(),
            family_id=family_id,
            token_hash=secret_digest(refresh),
            user_id=user.id,
            created_at=now,
            family_started_at=started,
            expires_at=min(
                now + timedelta(days=config.refresh_token_days), started + FAMILY_MAX_AGE
            ),
        )
    )
    await session.flush()
    return IssuedTokens(
        access_token=keys.sign(_access_claims(config, user, permissions, family_id, now)),
        expires_in=config.access_token_minutes * 60,
        refresh_token=refresh,
        family_id=family_id,
    )


async def revoke_family(
    session: AsyncSession, config: Config, family_id: str, *, reason: str
) -> bool:
    """Revoke every refresh token of a family and every access token issued from it.
    False (and nothing written) when the family was already revoked."""
    now = datetime.now(UTC)
    result = await session.execute(
        update(RefreshToken)
        .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=now, revoked_reason=reason)
    )
    if not getattr(result, "rowcount", 1):
        # Already revoked: its revocation row exists (or its tokens have expired); a repeated
        # logout must not add rows every process reads.
        return False
    RevocationSet.add(
        session,
        "family",
        family_id,
        expires_at=now
        + timedelta(minutes=config.access_token_minutes, seconds=config.jwt_leeway_seconds),
    )
    return True


async def revoke_user_tokens(
    session: AsyncSession, config: Config, user_id: str, *, reason: str
) -> int:
    """Revoke every live refresh family of a user (and their access tokens). Returns how many."""
    families = list(
        await session.scalars(
            select(RefreshToken.family_id)
            .where(
                RefreshToken.user_id == user_id,
                RefreshToken.revoked_at.is_(None),
                RefreshToken.expires_at > datetime.now(UTC),
            )
            .distinct()
        )
    )
    for family_id in families:
        await revoke_family(session, config, family_id, reason=reason)
    RevocationSet.add(session, "user", user_id, expires_at=datetime.now(UTC) + timedelta(hours=1))
    return len(families)


async def _family_revoked(session: AsyncSession, family_id: str) -> bool:
    query = select(RefreshToken.id).where(
        RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_not(None)
    )
    return await session.scalar(query.limit(1)) is not None


@dataclass(frozen=True, slots=True)
class Redemption:
    """The outcome of presenting a refresh token."""

    row: RefreshToken | None
    user: User | None
    reused: bool = False


async def redeem_refresh_token(session: AsyncSession, config: Config, token: str) -> Redemption:
    """Spend a refresh token. A spent one revokes its whole family (`reused`); one revoked
    unspent (logout, privilege change: its family is already revoked) is simply invalid.

    The caller commits either way (the family's revocation must stick) and then issues a new
    pair from `row`'s family when `user` is set.
    """
    query = select(RefreshToken).where(RefreshToken.token_hash == secret_digest(token))
    if session.bind is not None and session.bind.dialect.name == "postgresql":
        query = query.with_for_update()
    row = await session.scalar(query)
    now = datetime.now(UTC)
    if row is None:
        return Redemption(None, None)
    if row.used_at is not None:
        # Always revoke (a no-op when the family already is); report only what it revoked.
        if await revoke_family(session, config, row.family_id, reason="reuse"):
            await record(
                session,
                "auth.refresh_reuse",
                resource=("user", row.user_id),
                outcome="denied",
                after={"family_id": row.family_id},
                reason="a spent refresh token was presented again; its family is revoked",
            )
            _logger.warning(
                "auth.refresh_reuse",
                user_id=row.user_id,
                family_id=row.family_id,
                security_event=True,
            )
        return Redemption(row, None, reused=True)
    if row.revoked_at is not None or row.expires_at <= now:
        # Revoked unspent (logout, privilege change): not a reuse, nothing was stolen.
        return Redemption(None, None)
    if await _family_revoked(session, row.family_id):
        # Stored by a refresh that raced the family's revocation (logout, reuse, privilege
        # change): the revocation did not see this row, but the family is over.
        row.revoked_at, row.revoked_reason = now, "family-revoked"
        return Redemption(None, None)
    user = await session.get(User, row.user_id)
    row.used_at = now
    if user is None or user.status != UserStatus.ACTIVE:
        await revoke_family(session, config, row.family_id, reason="user-disabled")
        return Redemption(row, None)
    return Redemption(row, user)
