"""Encryption at rest: a master key wraps data keys; every ciphertext names its key.

The master key comes from `KEEL_MASTER_KEY` or `<data_dir>/master.key` (created 0600 on first
use with SQLite; a shared PostgreSQL deployment must set it explicitly, so every host has the
same one). Data keys live in the database wrapped by the master key; `rotate()` makes a new
one current while older ciphertexts keep decrypting. AES-256-GCM throughout: a flipped byte,
a wrong key or a ciphertext moved to another context (associated data) fails to decrypt.
This module must never log or return a key.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import LargeBinary, String, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from keel.core.config import Config
from keel.core.database import Base, Database, UTCDateTime
from keel.core.errors import KeelError, StartupError

__all__ = ["DataKey", "DecryptionFailed", "Keyring", "lazy_keyring", "load_master_key"]

_FORMAT = b"\x01"  # ciphertext layout version
_NONCE = 12
_MASTER_AAD = b"keel:data-key"
_KEY_ID = re.compile(r"k\d{8}[0-9a-f]{8}")
_KEYS_LOCK = 0x6B65656C_6B6579
RELOAD_INTERVAL = 5.0
"""Seconds between key reloads triggered by unknown key ids."""


class DecryptionFailed(KeelError):
    """The data could not be decrypted: it was altered, or its key is unknown."""

    slug = "decryption-failed"
    title = "Decryption Failed"


class DataKey(Base):
    """A data-encryption key, stored wrapped by the master key."""

    __tablename__ = "keel_data_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    wrapped: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)


def _decode_master(text: str, source: str) -> bytes:
    try:
        key = base64.urlsafe_b64decode(text.strip() + "=" * (-len(text.strip()) % 4))
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:
        raise StartupError(
            f"the master key in {source} is not 32 bytes of base64",
            hint="generate one with: python -c 'import secrets,base64;"
            "print(base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())'",
        )
    return key


def load_master_key(config: Config) -> bytes:
    """The master key: from the configuration, else the data directory's key file.

    On SQLite a missing file is created (0600). On PostgreSQL it is not: hosts sharing the
    database must share the key, so it has to be provided.
    """
    if config.master_key is not None:
        return _decode_master(config.master_key.get_secret_value(), "KEEL_MASTER_KEY")
    path = Path(config.data_dir) / "master.key"
    if path.exists():
        if path.stat().st_mode & 0o077:
            structlog.get_logger("keel.keys").warning(
                "master key file is readable by others", path=str(path), hint="chmod 600 it"
            )
        return _decode_master(path.read_text(encoding="ascii"), str(path))
    if config.dialect != "sqlite":
        raise StartupError(
            "no master key: KEEL_MASTER_KEY is not set",
            hint="set KEEL_MASTER_KEY to the same value on every host (keep a copy offline)",
        )
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = secrets.token_bytes(32)
    temporary = path.with_name(f".master.key.{os.getpid()}.{secrets.token_hex(4)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="ascii") as handle:
            handle.write(base64.urlsafe_b64encode(key).decode() + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            # link() never replaces: of two processes starting at once, one key wins and the
            # other process reads it, whole, because it was complete before it was linked.
            os.link(temporary, path)
        except FileExistsError:
            return _decode_master(path.read_text(encoding="ascii"), str(path))
    finally:
        temporary.unlink(missing_ok=True)
    return key


class Keyring:
    """Encrypts with the current data key; decrypts with whichever key a ciphertext names."""

    def __init__(self, master_key: bytes) -> None:
        self._master = AESGCM(master_key)
        self._keys: dict[str, AESGCM] = {}
        self._current: str | None = None
        self._loaded_at = float("-inf")

    # --- key management --------------------------------------------------------------------
    async def load(self, db: Database) -> None:
        """Read (and unwrap) every data key; create the first one if there is none.

        Call it again to pick up a key another process rotated in (`key_ids` tells which
        keys this process knows).
        """
        async with db.session() as session:
            rows = (await session.scalars(select(DataKey).order_by(DataKey.created_at))).all()
        if not rows:
            rows = await self._create_first_key(db)
        self._keys = {row.id: self._unwrap(row) for row in rows}
        active = [row.id for row in rows if row.retired_at is None]
        self._current = active[-1] if active else None
        if self._current is None:
            await self.rotate(db)
        self._loaded_at = time.monotonic()

    async def _create_first_key(self, db: Database) -> list[DataKey]:
        # Processes starting together on an empty table must agree on one first key.
        async with db.transaction() as session:
            await _lock_keys(session)
            rows = list(await session.scalars(select(DataKey).order_by(DataKey.created_at)))
            if not rows:
                rows = [self._new_key(session)]
        return rows

    def _new_key(self, session: AsyncSession) -> DataKey:
        key_id = f"k{datetime.now(UTC):%Y%m%d}{secrets.token_hex(4)}"
        raw = AESGCM.generate_key(bit_length=256)
        nonce = os.urandom(_NONCE)
        wrapped = nonce + self._master.encrypt(nonce, raw, _MASTER_AAD + key_id.encode())
        row = DataKey(id=key_id, wrapped=wrapped, created_at=datetime.now(UTC))
        session.add(row)
        return row

    async def rotate(self, db: Database) -> str:
        """Make a new data key current; older ones stay for decryption. Returns its id."""
        async with db.transaction() as session:
            await _lock_keys(session)
            await _retire_all(session)
            row = self._new_key(session)
        self._keys[row.id] = self._unwrap(row)
        self._current = row.id
        return row.id

    def _unwrap(self, row: DataKey) -> AESGCM:
        nonce, sealed = row.wrapped[:_NONCE], row.wrapped[_NONCE:]
        try:
            raw = self._master.decrypt(nonce, sealed, _MASTER_AAD + row.id.encode())
        except InvalidTag:
            raise StartupError(
                f"data key {row.id} cannot be unwrapped: the master key is not the one it was "
                "made with",
                hint="restore the original KEEL_MASTER_KEY (or <data_dir>/master.key)",
            ) from None
        return AESGCM(raw)

    @property
    def key_ids(self) -> frozenset[str]:
        """Every data key this keyring can decrypt with."""
        return frozenset(self._keys)

    @property
    def current_key_id(self) -> str:
        """The id new ciphertexts are made with."""
        if self._current is None:
            raise RuntimeError("Keyring.load() has not run")
        return self._current

    # --- data --------------------------------------------------------------------------------
    def encrypt(self, plaintext: bytes, *, context: bytes) -> bytes:
        """Seal `plaintext` with the current key, bound to `context` (e.g. table and row id)."""
        key_id = self.current_key_id.encode()
        nonce = os.urandom(_NONCE)
        sealed = self._keys[self.current_key_id].encrypt(nonce, plaintext, key_id + context)
        return _FORMAT + bytes([len(key_id)]) + key_id + nonce + sealed

    def decrypt(self, ciphertext: bytes, *, context: bytes) -> bytes:
        """Open a ciphertext made by `encrypt` with the same `context`."""
        try:
            if ciphertext[:1] != _FORMAT:
                raise DecryptionFailed("Unknown ciphertext format.")
            length = ciphertext[1]
            key_id = ciphertext[2 : 2 + length]
            nonce = ciphertext[2 + length : 2 + length + _NONCE]
            sealed = ciphertext[2 + length + _NONCE :]
            key = self._keys.get(key_id.decode("ascii"))
            if key is None:
                raise DecryptionFailed(f"Unknown key {key_id.decode('ascii', 'replace')!r}.")
            return key.decrypt(nonce, sealed, key_id + context)
        except DecryptionFailed:
            raise
        except (InvalidTag, IndexError, UnicodeDecodeError, ValueError):
            raise DecryptionFailed() from None

    async def open(self, db: Database, ciphertext: bytes, *, context: bytes) -> bytes:
        """`decrypt`, reloading the keys if the ciphertext names a well-formed key id this
        process has not seen (another process rotated since it loaded). Reloads happen at most
        every `RELOAD_INTERVAL` seconds, so forged key ids cannot make every request scan."""
        try:
            return self.decrypt(ciphertext, context=context)
        except DecryptionFailed as exc:
            if not str(exc.detail).startswith("Unknown key"):
                raise
        key_id = ciphertext[2 : 2 + ciphertext[1]].decode("ascii", "replace")
        if (
            _KEY_ID.fullmatch(key_id) is None
            or time.monotonic() - self._loaded_at < RELOAD_INTERVAL
        ):
            raise DecryptionFailed()
        await self.load(db)
        return self.decrypt(ciphertext, context=context)


def lazy_keyring(config: Config, db: Database) -> Callable[[], Awaitable[Keyring]]:
    """A function returning the keyring, loaded on its first call only (a process that never
    touches a secret never needs the master key)."""
    loaded: list[Keyring] = []

    async def get() -> Keyring:
        if not loaded:
            ring = Keyring(load_master_key(config))
            await ring.load(db)
            loaded.append(ring)
        return loaded[0]

    return get


async def _lock_keys(session: AsyncSession) -> None:
    """Serialise key creation across processes (SQLite's write lock already does)."""
    bind = session.bind
    if bind is not None and bind.dialect.name == "postgresql":
        await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _KEYS_LOCK})


async def _retire_all(session: AsyncSession) -> None:
    await session.execute(
        update(DataKey).where(DataKey.retired_at.is_(None)).values(retired_at=datetime.now(UTC))
    )
