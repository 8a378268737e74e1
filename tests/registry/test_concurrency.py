"""Concurrent writers: of racing publishes one wins and the others get 409; a publish and an
archive of the asset it references cannot both succeed."""

from __future__ import annotations

import asyncio

from sqlalchemy import select

from keel.audit import bind_actor, reset_actor, system_actor
from keel.core.errors import Conflict
from keel.registry import service
from keel.registry.models import Asset, Version
from tests.identity.support import Org
from tests.registry.support import BASE, create, draft, ok, query, release


async def _published(org: Org, name: str) -> list[int]:
    async with org.keel.db.session() as session:
        # unscoped: the test reads every tenant's rows.
        return list(
            await session.scalars(
                select(Version.number)
                .join(Asset, Asset.id == Version.asset_id)
                .where(Asset.name == name, Version.state == "published")
            )
        )


async def test_racing_publishes_of_one_asset_one_wins_the_rest_409(org: Org) -> None:
    """Five versions published at once, each expecting version 1 as the head: exactly one
    succeeds, the others get 409 problem+json, and one version is published."""
    async with await org.as_user("owner@example.com") as http:
        await create(http, "sql_query", "q", {"sql": "SELECT 1"})
        await release(http, "sql_query", "q", 1)
        numbers = [await draft(http, "sql_query", "q", {"sql": f"SELECT {n}"}) for n in range(5)]
        for number in numbers:
            ok(await http.post(f"{BASE}/sql_query/q/versions/{number}/validate"))
        responses = await asyncio.gather(
            *(
                http.post(
                    f"{BASE}/sql_query/q/versions/{number}/publish", json={"expected_head": 1}
                )
                for number in numbers
            )
        )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 409, 409, 409, 409], [r.text for r in responses]
    for response in responses:
        if response.status_code == 409:
            assert response.headers["content-type"] == "application/problem+json"
    winner = next(r.json()["number"] for r in responses if r.status_code == 200)
    assert await _published(org, "q") == [winner]


async def test_racing_publishes_of_the_same_version_one_wins(org: Org) -> None:
    """The same validated version published by three callers at once: one 200, two 409."""
    async with await org.as_user("owner@example.com") as http:
        await create(http, "sql_query", "q", {"sql": "SELECT 1"})
        ok(await http.post(f"{BASE}/sql_query/q/versions/1/validate"))
        responses = await asyncio.gather(
            *(http.post(f"{BASE}/sql_query/q/versions/1/publish", json={}) for _ in range(3))
        )
    assert sorted(r.status_code for r in responses) == [200, 409, 409]
    assert await _published(org, "q") == [1]


async def test_an_archive_cannot_slip_between_a_publish_and_its_commit(org: Org) -> None:
    """A publish that checked its reference holds it (FOR SHARE on PostgreSQL, the writer
    lock on SQLite); an archive started meanwhile waits, then sees the new dependent and
    is refused."""
    async with await org.as_user("owner@example.com") as http:
        await query(http, "base")
        await create(http, "test_report", "r", {"title": "Daily", "query": "base"})
        ok(await http.post(f"{BASE}/test_report/r/versions/1/validate"))
    checked = asyncio.Event()
    release_publish = asyncio.Event()

    async def publish() -> None:
        token = bind_actor(system_actor("test"))
        try:
            async with org.keel.db.transaction() as session:
                asset = await service.find_asset(
                    session, "test_report", "r", tenant_id=None, lock=True
                )
                await service.publish(session, asset, 1)
                checked.set()
                await release_publish.wait()
        finally:
            reset_actor(token)

    async def archive() -> str:
        await checked.wait()
        token = bind_actor(system_actor("test"))
        try:
            async with org.keel.db.transaction() as session:
                asset = await service.find_asset(
                    session, "sql_query", "base", tenant_id=None, lock=True
                )
                await service.archive(session, asset, reason="cleanup")
            return "archived"
        except Conflict as exc:
            return exc.detail
        finally:
            reset_actor(token)

    publisher = asyncio.create_task(publish())
    archiver = asyncio.create_task(archive())
    await checked.wait()
    await asyncio.sleep(0.5)
    assert not archiver.done()  # it waits for the publish's transaction
    release_publish.set()
    await publisher
    outcome = await archiver
    assert "test_report/r" in outcome
    assert await _published(org, "base") == [1]
    assert await _published(org, "r") == [1]
