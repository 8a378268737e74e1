"""Public identifiers: UUIDv7 strings, time-ordered so keyset pagination follows creation."""

from __future__ import annotations

import uuid_utils

__all__ = ["new_id"]


def new_id() -> str:
    """A new UUIDv7 as its canonical lowercase string."""
    return str(uuid_utils.uuid7())
