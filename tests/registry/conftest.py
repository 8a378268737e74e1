"""Fixtures for the registry tests: a report kind that references sql_query assets."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from keel import registry
from tests.identity.support import org  # noqa: F401 - the `org` fixture


class Report(BaseModel):
    """A report built on a query (test kind)."""

    title: str = Field(min_length=1, max_length=200)
    query: Annotated[str, registry.Ref("sql_query")]
    extra: list[Annotated[str, registry.Ref("sql_query")]] = []


class Link(BaseModel):
    """An asset that may name another of its own kind (test kind)."""

    other: Annotated[str, registry.Ref("test_link")] | None = None


class Gated(BaseModel):
    """Content whose validity a test switches (test kind)."""

    text: str = ""


GATE = {"open": True}
"""Whether `test_gated` content passes validation (tests flip it)."""


def _gate(_: Gated) -> list[str]:
    return [] if GATE["open"] else ["the gate is closed"]


def _no_shouting(report: Report) -> list[str]:
    return ["the title must not be all capitals"] if report.title.isupper() else []


_known = {kind.name for kind in registry.registered_kinds()}
if "test_report" not in _known:
    registry.register_kind("test_report", Report, validators=[_no_shouting], text_fields=["title"])
if "test_link" not in _known:
    registry.register_kind("test_link", Link)
if "test_gated" not in _known:
    registry.register_kind("test_gated", Gated, validators=[_gate])
