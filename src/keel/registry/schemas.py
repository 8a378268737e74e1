"""Request and response bodies of `/api/v1/registry`."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

__all__ = [
    "MAX_VERSION",
    "NAME_PATTERN",
    "ArchiveIn",
    "AssetIn",
    "AssetPage",
    "DraftIn",
    "PublishIn",
    "RollbackIn",
]

MAX_VERSION = 2**31 - 1
"""Version numbers are 32-bit integers in the database."""
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$"

Reason = Field(default=None, max_length=2000, description="Why (kept in the history)")


class AssetIn(BaseModel):
    """A new asset and the content of its first draft."""

    name: str = Field(pattern=NAME_PATTERN, description="Unique per kind within the tenant")
    data: dict[str, Any] = Field(description="The content, as the kind's model describes it")
    note: str | None = Reason


class DraftIn(BaseModel):
    """The content of a new draft version."""

    data: dict[str, Any]
    note: str | None = Reason


class PublishIn(BaseModel):
    """Publish a validated version."""

    reason: str | None = Reason
    expected_head: int | None = Field(
        default=None,
        ge=1,
        le=MAX_VERSION,
        description="Required: the published version number the client saw (null: none); "
        "when no longer true, the publish is refused with 409 (missing: 428)",
    )


class RollbackIn(BaseModel):
    """Publish an earlier version's content as a new version."""

    to: int = Field(ge=1, le=MAX_VERSION, description="The formerly published version to restore")
    reason: str | None = Reason


class ArchiveIn(BaseModel):
    """Archive an asset."""

    reason: str | None = Reason
    force: bool = Field(default=False, description="Archive although others reference it")


class AssetPage(BaseModel):
    """One page of assets, by name."""

    items: list[dict[str, Any]]
    next_cursor: str | None
