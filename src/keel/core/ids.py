"""Public identifiers: UUIDv7 strings, time-ordered so keyset pagination follows creation."""

from __future__ import annotations

import hashlib
import secrets

import uuid_utils

__all__ = ["new_id", "new_secret", "secret_digest"]


def new_id() -> str:
    """A new UUIDv7 as its canonical lowercase string."""
    return str(uuid_utils.uuid7())


def new_secret() -> str:
    """A random, URL-safe secret of 256 bits (session cookies, one-time links)."""
    return secrets.token_urlsafe(32)


def secret_digest(secret: str) -> str:
    """What is stored for a high-entropy secret: its SHA-256, hex. A leaked table then holds
    nothing that can be presented back (no slow hash is needed: the secret is random)."""
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()
