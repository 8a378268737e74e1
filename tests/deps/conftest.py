"""Fixtures: the flaky upstream, and a clean deps runtime and declarations per test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from keel.deps import client as deps_client
from keel.deps import spec
from tests.deps.upstream import Upstream


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    server = Upstream()
    await server.start()
    try:
        yield server
    finally:
        await deps_client.runtime().close()  # the clients' connections first
        await server.stop()


@pytest.fixture(autouse=True)
async def _fresh_deps() -> AsyncIterator[None]:
    spec.use_settings(None)  # nor does an earlier test's (a command applies its configuration)
    before = spec.declared()
    await deps_client.configure()
    yield
    await deps_client.runtime().close()
    spec.use_settings(None)  # a test's deployment settings do not outlive it
    for name in set(spec.declared()) - set(before):
        spec.forget(name)
