"""Fixtures: settings the tests declare (forgotten afterwards) and a started kernel."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel, Field

from keel import Config, Keel
from keel.settings import declare, declared
from keel.settings.spec import forget


class Limits(BaseModel):
    """A JSON setting's model."""

    burst: int = Field(ge=1)
    names: list[str] = []


TEST_SETTINGS: dict[str, dict[str, Any]] = {
    "test.flag": {"type": bool, "default": False, "env": "TEST_FLAG"},
    "test.count": {"type": int, "default": 5, "ge": 1, "le": 100, "env": "TEST_COUNT"},
    "test.ratio": {"type": float, "default": 0.5, "ge": 0.0, "le": 1.0},
    "test.mode": {"type": str, "default": "sim", "choices": ("sim", "live")},
    "test.every": {
        "type": timedelta,
        "default": timedelta(seconds=30),
        "ge": timedelta(seconds=1),
    },
    "test.limits": {"type": Limits, "default": {"burst": 2}},
    "test.token": {"type": str, "default": "", "secret": True, "env": "TEST_TOKEN"},
    "test.workers": {"type": int, "default": 4, "restart_required": True, "ge": 1},
    "test.quota": {"type": int, "default": 10, "per_tenant": True, "env": "TEST_QUOTA", "ge": 0},
}


@pytest.fixture(autouse=True)
def test_settings() -> Iterator[dict[str, Any]]:
    """The test settings, declared for the test and forgotten after it."""
    handles = {}
    for key, declared_as in TEST_SETTINGS.items():
        options = dict(declared_as)
        handles[key] = declare(key, options.pop("type"), **options)
    yield handles
    for key in TEST_SETTINGS:
        forget(key)
    assert not set(TEST_SETTINGS) & set(declared())


@pytest.fixture
async def keel(config: Config) -> AsyncIterator[Keel]:
    """A started kernel on the test's database."""
    kernel = Keel(config, modules=[])
    await kernel.startup()
    try:
        yield kernel
    finally:
        await kernel.shutdown()


from tests.identity.support import org  # noqa: E402, F401 - the `org` fixture
