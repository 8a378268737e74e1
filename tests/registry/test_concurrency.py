"""Concurrent writers: of racing publishes one wins and the others get 409; a publish and an
archive of the asset it references cannot both succeed."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
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
            *(
                http.post(f"{BASE}/sql_query/q/versions/1/publish", json={"expected_head": None})
                for _ in range(3)
            )
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


async def _system(work: Any) -> Any:
    token = bind_actor(system_actor("test"))
    try:
        return await work
    finally:
        reset_actor(token)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_mutual_references_published_at_once_one_gets_409(org: Org) -> None:
    """A and B reference each other and are published at the same moment: each holds its
    own row and waits for the other's; PostgreSQL aborts one, which answers 409 (not a
    500), and the other is published."""
    async with await org.as_user("owner@example.com") as http:
        for name in ("a", "b"):
            await create(http, "test_link", name, {})
            await release(http, "test_link", name, 1)
        await draft(http, "test_link", "a", {"other": "b"})
        await draft(http, "test_link", "b", {"other": "a"})
        for name in ("a", "b"):
            ok(await http.post(f"{BASE}/test_link/{name}/versions/2/validate"))
    locked = {"a": asyncio.Event(), "b": asyncio.Event()}

    async def publish(name: str, other: str) -> str:
        async def work() -> str:
            try:
                async with org.keel.db.transaction() as session:
                    asset = await service.find_asset(
                        session, "test_link", name, tenant_id=None, lock=True
                    )
                    locked[name].set()
                    await locked[other].wait()
                    await service.publish(session, asset, 2)
                return "published"
            except Conflict as exc:
                return f"409 {exc.detail}"

        return str(await _system(work()))

    outcomes = sorted(await asyncio.gather(publish("a", "b"), publish("b", "a")))
    assert outcomes[1] == "published"
    assert outcomes[0].startswith("409 ") and "concurrently" in outcomes[0]


async def test_an_asset_naming_itself_does_not_block_its_archive(org: Org) -> None:
    """A self-reference is not a dependent: the archive goes through without force."""
    async with await org.as_user("owner@example.com") as http:
        await create(http, "test_link", "loop", {})
        await release(http, "test_link", "loop", 1)
        await draft(http, "test_link", "loop", {"other": "loop"})
        await release(http, "test_link", "loop", 2)
        assert ok(await http.get(f"{BASE}/test_link/loop/dependents")) == []
        archived = ok(await http.post(f"{BASE}/test_link/loop/archive", json={}))
    assert archived["state"] == "archived"


async def test_a_publish_without_the_expected_head_is_refused_with_428(org: Org) -> None:
    """Callers that do not say which head they replace get 428 problem+json and change
    nothing, so two of them cannot both win silently."""
    async with await org.as_user("owner@example.com") as http:
        await create(http, "sql_query", "q", {"sql": "SELECT 1"})
        await release(http, "sql_query", "q", 1)
        numbers = [await draft(http, "sql_query", "q", {"sql": f"SELECT {n}"}) for n in (2, 3)]
        for number in numbers:
            ok(await http.post(f"{BASE}/sql_query/q/versions/{number}/validate"))
        responses = await asyncio.gather(
            *(
                http.post(f"{BASE}/sql_query/q/versions/{number}/publish", json={"reason": "x"})
                for number in numbers
            )
        )
        stale = await http.post(
            f"{BASE}/sql_query/q/versions/2/publish", json={"expected_head": None}
        )
    assert [r.status_code for r in responses] == [428, 428]
    assert responses[0].headers["content-type"] == "application/problem+json"
    assert responses[0].json()["errors"][0]["pointer"] == "/expected_head"
    assert stale.status_code == 409  # version 1 is the head, not "none"
    assert await _published(org, "q") == [1]
