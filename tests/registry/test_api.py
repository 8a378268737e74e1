"""The registry over HTTP: lifecycle, one published version, rollback, diff, references,
archive and impact analysis, bad input, tenant isolation and per-kind permissions."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from keel.audit.models import AuditEvent
from keel.registry import cache_of, canonical_sql
from keel.registry.models import Asset, Transition, Version
from tests.identity.support import Org, json_of
from tests.registry.support import BASE, create, draft, ok, query, release


async def _published_rows(org: Org, name: str) -> list[int]:
    async with org.keel.db.session() as session:
        # unscoped: the test reads every tenant's rows.
        rows = await session.scalars(
            select(Version.number)
            .join(Asset, Asset.id == Version.asset_id)
            .where(Asset.name == name, Version.state == "published")
        )
        return list(rows)


async def test_lifecycle_draft_validate_publish_and_history(org: Org) -> None:
    """A draft is validated then published; the history names who, when and why, and each
    transition is audited."""
    async with await org.as_user("owner@example.com") as http:
        created = await create(http, "sql_query", "revenue", {"sql": "SELECT 1 AS one"})
        assert created["version"]["state"] == "draft"
        assert created["published_version"] is None
        refused = await http.post(
            f"{BASE}/sql_query/revenue/versions/1/publish", json={"expected_head": None}
        )
        assert refused.status_code == 409 and "validate" in refused.json()["hint"]
        published = await release(http, "sql_query", "revenue", 1, reason="first cut")
        assert published["state"] == "published" and published["published_by"].startswith("user:")
        shown = ok(await http.get(f"{BASE}/sql_query/revenue"))
        assert shown["published_version"] == 1
        assert shown["published"]["data"]["sql"] == canonical_sql("SELECT 1 AS one")
        history = ok(await http.get(f"{BASE}/sql_query/revenue/history"))
    assert [h["action"] for h in history] == ["create", "validate", "publish"]
    assert history[-1]["reason"] == "first cut"
    assert all(h["actor"] == f"user:{org.users['owner@example.com']}" for h in history)
    async with org.keel.db.session() as session:
        actions = list(
            await session.scalars(
                select(AuditEvent.action).where(AuditEvent.action.like("registry.%"))
            )
        )
    assert sorted(actions) == ["registry.create", "registry.publish", "registry.validate"]


async def test_exactly_one_published_version_and_rollback_is_a_new_head(org: Org) -> None:
    """Publishing v2 retires v1; rolling back to v1 publishes v3 with v1's content, and the
    older versions stay as they were."""
    async with await org.as_user("owner@example.com") as http:
        await create(http, "sql_query", "q", {"sql": "SELECT 1"})
        await release(http, "sql_query", "q", 1)
        number = await draft(http, "sql_query", "q", {"sql": "SELECT 2"})
        await release(http, "sql_query", "q", number)
        assert await _published_rows(org, "q") == [2]
        rolled = ok(
            await http.post(f"{BASE}/sql_query/q/rollback", json={"to": 1, "reason": "v2 broke"})
        )
        assert rolled["number"] == 3 and rolled["rollback_of"] == 1
        assert rolled["data"] == {"sql": canonical_sql("SELECT 1"), "description": ""}
        versions = ok(await http.get(f"{BASE}/sql_query/q/versions"))
        assert [(v["number"], v["state"]) for v in versions] == [
            (3, "published"),
            (2, "retired"),
            (1, "retired"),
        ]
        version_1 = ok(await http.get(f"{BASE}/sql_query/q/versions/1"))
        assert version_1["data"]["sql"] == canonical_sql("SELECT 1")
        # A version that was never published cannot be rolled back to.
        await draft(http, "sql_query", "q", {"sql": "SELECT 4"})
        refused = await http.post(f"{BASE}/sql_query/q/rollback", json={"to": 4})
        assert refused.status_code == 409
    assert await _published_rows(org, "q") == [3]


async def _forge_published(org: Org, number: int) -> None:
    """Mark version `number` published with a bare write, bypassing the service."""
    async with org.keel.db.transaction() as session:
        # unscoped: the test forges a row directly.
        version = await session.scalar(select(Version).where(Version.number == number))
        assert version is not None  # an AssertionError is not the IntegrityError expected
        version.state = "published"


async def test_the_database_refuses_a_second_published_version(org: Org) -> None:
    """Even a write that bypasses the service cannot leave two published versions."""
    async with await org.as_user("owner@example.com") as http:
        await create(http, "sql_query", "q", {"sql": "SELECT 1"})
        await release(http, "sql_query", "q", 1)
        await draft(http, "sql_query", "q", {"sql": "SELECT 2"})
    with pytest.raises(IntegrityError):
        await _forge_published(org, 2)
    assert await _published_rows(org, "q") == [1]


async def test_diff_between_two_versions(org: Org) -> None:
    """The diff lists changed JSON paths and a unified text diff of the SQL."""
    async with await org.as_user("owner@example.com") as http:
        await create(http, "sql_query", "q", {"sql": "SELECT a\nFROM t", "description": "x"})
        await draft(http, "sql_query", "q", {"sql": "SELECT a, b\nFROM t"})
        diff = ok(await http.get(f"{BASE}/sql_query/q/diff", params={"from": 1, "to": 2}))
        missing = await http.get(f"{BASE}/sql_query/q/diff", params={"from": 1, "to": 9})
    paths = {
        (kind, entry["path"]) for kind, entries in diff["changes"].items() for entry in entries
    }
    assert paths == {("changed", "/sql"), ("changed", "/description")}
    assert "-  a\n+  a,\n+  b\n" in diff["text"]["sql"]
    assert "--- sql@v1" in diff["text"]["sql"]
    assert missing.status_code == 404


async def test_publishing_needs_published_references(org: Org) -> None:
    """A report whose query is not published is refused with the missing names; once the
    query is published, the report publishes."""
    async with await org.as_user("owner@example.com") as http:
        await create(http, "sql_query", "base", {"sql": "SELECT 1"})
        await create(http, "test_report", "r", {"title": "Daily", "query": "base"})
        ok(await http.post(f"{BASE}/test_report/r/versions/1/validate"))
        refused = await http.post(
            f"{BASE}/test_report/r/versions/1/publish", json={"expected_head": None}
        )
        assert refused.status_code == 409
        assert "sql_query/base" in refused.json()["detail"]
        await release(http, "sql_query", "base", 1)
        ok(
            await http.post(
                f"{BASE}/test_report/r/versions/1/publish", json={"expected_head": None}
            )
        )
        assert ok(await http.get(f"{BASE}/sql_query/base/dependents")) == [
            {"kind": "test_report", "name": "r", "version": 1}
        ]


async def test_archiving_a_referenced_asset_is_refused_unless_forced(org: Org) -> None:
    """Archive lists the dependents and changes nothing; forced with a reason it archives and
    audits the dangling dependents; forced without a reason is a 422."""
    async with await org.as_user("owner@example.com") as http:
        await query(http, "base")
        await create(http, "test_report", "r", {"title": "Daily", "query": "base"})
        await release(http, "test_report", "r", 1)
        refused = await http.post(f"{BASE}/sql_query/base/archive", json={"reason": "old"})
        assert refused.status_code == 409, refused.text
        assert "test_report/r" in refused.json()["detail"]
        assert refused.json()["errors"][0]["code"] == "has_dependents"
        assert ok(await http.get(f"{BASE}/sql_query/base"))["state"] == "active"
        no_reason = await http.post(f"{BASE}/sql_query/base/archive", json={"force": True})
        assert no_reason.status_code == 422
        forced = ok(
            await http.post(
                f"{BASE}/sql_query/base/archive", json={"force": True, "reason": "retiring it"}
            )
        )
        assert forced["state"] == "archived" and forced["published_version"] is None
        assert forced["dangling_dependents"] == [{"kind": "test_report", "name": "r", "version": 1}]
        # An archived asset takes no new drafts nor publishes.
        assert (
            await http.post(f"{BASE}/sql_query/base/versions", json={"data": {"sql": "SELECT 2"}})
        ).status_code == 409
    assert await _published_rows(org, "base") == []
    async with org.keel.db.session() as session:
        event = await session.scalar(
            select(AuditEvent).where(AuditEvent.action == "registry.archive")
        )
    assert event is not None and event.reason == "retiring it"


async def test_bad_input_is_4xx_and_changes_nothing(org: Org) -> None:
    """Unknown kinds, bad names, content that does not fit the model, duplicates and bad
    versions are refused with problem+json, and no row or history is written."""
    async with await org.as_user("owner@example.com") as http:
        await create(http, "sql_query", "q", {"sql": "SELECT 1"})
        async with org.keel.db.session() as session:
            before = await session.scalar(select(func.count()).select_from(Transition))
        cases: list[tuple[str, str, Any, int]] = [
            ("POST", f"{BASE}/nope", {"name": "x", "data": {}}, 404),
            ("POST", f"{BASE}/sql_query", {"name": "bad name!", "data": {"sql": "SELECT 1"}}, 422),
            ("POST", f"{BASE}/sql_query", {"name": "x", "data": {"sql": 3}}, 422),
            ("POST", f"{BASE}/sql_query", {"name": "x", "data": {}}, 422),
            ("POST", f"{BASE}/sql_query", {"name": "q", "data": {"sql": "SELECT 2"}}, 409),
            ("POST", f"{BASE}/sql_query/q/versions", {"data": {"sql": ""}}, 422),
            # A referenced name longer than the column (a 500 on PostgreSQL before).
            (
                "POST",
                f"{BASE}/test_report",
                {"name": "r", "data": {"title": "T", "query": "x" * 201}},
                422,
            ),
            (
                "POST",
                f"{BASE}/test_report",
                {"name": "r", "data": {"title": "T", "query": "a b"}},
                422,
            ),
            ("POST", f"{BASE}/sql_query/q/versions/7/publish", {"expected_head": 1}, 404),
            ("POST", f"{BASE}/sql_query/q/versions/1/publish", {}, 428),
            ("POST", f"{BASE}/sql_query/q/versions/1/publish", None, 428),
            ("POST", f"{BASE}/sql_query/q/rollback", {"to": 0}, 422),
            ("POST", f"{BASE}/sql_query/q/rollback", {"to": 1}, 409),
            ("GET", f"{BASE}/sql_query/q/diff?from=1", None, 422),
            ("GET", f"{BASE}/sql_query/missing", None, 404),
            (
                "POST",
                f"{BASE}/sql_query?tenant=no-such-tenant",
                {"name": "y", "data": {"sql": "SELECT 1"}},
                404,
            ),
        ]
        for method, url, body, status in cases:
            response = await http.request(method, url, json=body)
            assert response.status_code == status, (url, body, response.text)
            assert response.headers["content-type"] == "application/problem+json"
        async with org.keel.db.session() as session:
            after = await session.scalar(select(func.count()).select_from(Transition))
            names = list(await session.scalars(select(Asset.name)))  # unscoped: test
    assert after == before
    assert names == ["q"]


async def test_invalid_content_stays_a_draft_with_its_problems(org: Org) -> None:
    """A hostile query validates to a draft carrying the problems, and cannot be published;
    a test kind's own validator runs too."""
    async with await org.as_user("owner@example.com") as http:
        await create(http, "sql_query", "evil", {"sql": "SELECT 1; DROP TABLE keel_users"})
        checked = ok(await http.post(f"{BASE}/sql_query/evil/versions/1/validate"))
        assert checked["state"] == "draft"
        assert checked["problems"] == ["exactly one statement is allowed, found 2"]
        refused = await http.post(
            f"{BASE}/sql_query/evil/versions/1/publish", json={"expected_head": None}
        )
        assert refused.status_code == 409
        await create(http, "test_report", "loud", {"title": "LOUD", "query": "x"})
        checked = ok(await http.post(f"{BASE}/test_report/loud/versions/1/validate"))
        assert checked["problems"] == ["the title must not be all capitals"]


async def test_tenants_see_only_their_own_assets(org: Org) -> None:
    """An acme asset is invisible to bolt (404 on every route, absent from lists); both
    tenants may use the same name; a deployment user reaches acme's with ?tenant=."""
    async with await org.as_user("admin-a@example.com") as acme:
        await query(acme, "shared-name", "SELECT 'acme'")
    async with await org.as_user("admin-b@example.com") as bolt:
        assert (await bolt.get(f"{BASE}/sql_query/shared-name")).status_code == 404
        refused = await bolt.post(
            f"{BASE}/sql_query/shared-name/archive", json={"force": True, "reason": "x"}
        )
        assert refused.status_code == 404
        assert ok(await bolt.get(f"{BASE}/sql_query"))["items"] == []
        sneaky = await bolt.get(
            f"{BASE}/sql_query/shared-name", params={"tenant": org.tenants["acme"]}
        )
        assert sneaky.status_code == 404
        await query(bolt, "shared-name", "SELECT 'bolt'")
    async with await org.as_user("owner@example.com") as owner:
        assert (await owner.get(f"{BASE}/sql_query/shared-name")).status_code == 404
        acme_asset = ok(
            await owner.get(f"{BASE}/sql_query/shared-name", params={"tenant": org.tenants["acme"]})
        )
    assert acme_asset["published"]["data"]["sql"] == canonical_sql("SELECT 'acme'")
    cache = cache_of(org.keel)
    await _settle(org)
    acme_q = cache.get("sql_query", "shared-name", org.tenants["acme"])
    bolt_q = cache.get("sql_query", "shared-name", org.tenants["bolt"])
    assert acme_q is not None and bolt_q is not None
    assert (acme_q.data.sql, bolt_q.data.sql) == (  # type: ignore[attr-defined]
        canonical_sql("SELECT 'acme'"),
        canonical_sql("SELECT 'bolt'"),
    )
    assert cache.get("sql_query", "shared-name") is None


async def _settle(org: Org) -> None:
    import asyncio

    cache = cache_of(org.keel)
    for _ in range(100):
        if len(cache) >= 2:
            return
        await asyncio.sleep(0.05)


async def test_permissions_are_per_kind_and_per_verb(org: Org) -> None:
    """A viewer reads but cannot write; an operator drafts but cannot publish or archive; a
    custom role holding only sql_query permissions cannot touch test_report."""
    async with await org.as_user("admin-a@example.com") as admin:
        await create(admin, "sql_query", "q", {"sql": "SELECT 1"})
    async with await org.as_user("viewer-a@example.com") as plain_viewer:
        assert (await plain_viewer.get(f"{BASE}/sql_query/q")).status_code == 200
        for url, body in [
            (f"{BASE}/sql_query", {"name": "v", "data": {"sql": "SELECT 1"}}),
            (f"{BASE}/sql_query/q/versions", {"data": {"sql": "SELECT 3"}}),
            (f"{BASE}/sql_query/q/versions/1/validate", None),
            (f"{BASE}/sql_query/q/versions/1/publish", {"expected_head": None}),
            (f"{BASE}/sql_query/q/archive", {}),
        ]:
            refused = await plain_viewer.post(url, json=body)
            assert refused.status_code == 403, (url, refused.text)
    async with await org.as_user("admin-a@example.com") as admin:
        json_of(
            await admin.post(
                "/api/v1/roles",
                json={
                    "name": "sql-only",
                    "permissions": ["registry:sql_query:read", "registry:sql_query:write"],
                },
            )
        )
        viewer = org.users["viewer-a@example.com"]
        json_of(await admin.patch(f"/api/v1/users/{viewer}", json={"roles": ["sql-only"]}))
    async with await org.as_user("operator-a@example.com") as operator:
        assert (await operator.get(f"{BASE}/sql_query/q")).status_code == 200
        await draft(operator, "sql_query", "q", {"sql": "SELECT 2"})
        ok(await operator.post(f"{BASE}/sql_query/q/versions/2/validate"))
        denied = await operator.post(
            f"{BASE}/sql_query/q/versions/2/publish", json={"expected_head": 1}
        )
        assert denied.status_code == 403 and "registry:sql_query:publish" in denied.text
        assert (await operator.post(f"{BASE}/sql_query/q/archive", json={})).status_code == 403
    async with await org.as_user("viewer-a@example.com") as custom:
        assert (await custom.get(f"{BASE}/sql_query/q")).status_code == 200
        assert (await custom.get(f"{BASE}/test_report")).status_code == 403
        assert (
            await custom.post(f"{BASE}/test_report", json={"name": "r", "data": {}})
        ).status_code == 403
    async with org.client() as anonymous:
        assert (await anonymous.get(f"{BASE}/sql_query")).status_code == 401
    assert {"registry:sql_query:publish", "registry:test_report:archive"} <= set(
        org.catalog.permissions
    )


async def test_sql_hidden_in_nested_comments_never_validates(org: Org) -> None:
    """A query that hides a DELETE from the parser in PostgreSQL's nested comments stays a
    draft with its problem; an accepted query is stored and served as the checked text."""
    hidden = "/*/* */ -- */ WITH d AS (DELETE FROM victim RETURNING 1)\nSELECT 1"
    async with await org.as_user("owner@example.com") as http:
        await create(http, "sql_query", "sneaky", {"sql": hidden})
        checked = ok(await http.post(f"{BASE}/sql_query/sneaky/versions/1/validate"))
        assert checked["state"] == "draft"
        assert any("comments" in problem for problem in checked["problems"])
        assert checked["data"]["sql"] == hidden  # kept as written: it never validates
        await create(http, "sql_query", "plain", {"sql": "select a from t where b = :b"})
        await release(http, "sql_query", "plain", 1)
        shown = ok(await http.get(f"{BASE}/sql_query/plain"))
    assert shown["published"]["data"]["sql"] == "SELECT\n  a\nFROM t\nWHERE\n  b = :b"


async def test_publish_runs_the_validators_again(org: Org) -> None:
    """A version validated under rules that changed before it is published is refused with
    422 and its problems; nothing is published until the rules pass again."""
    from tests.registry.conftest import GATE

    async with await org.as_user("owner@example.com") as http:
        await create(http, "test_gated", "g", {"text": "x"})
        checked = ok(await http.post(f"{BASE}/test_gated/g/versions/1/validate"))
        assert checked["state"] == "validated"
        GATE["open"] = False
        try:
            refused = await http.post(
                f"{BASE}/test_gated/g/versions/1/publish", json={"expected_head": None}
            )
        finally:
            GATE["open"] = True
        assert refused.status_code == 422, refused.text
        assert refused.json()["errors"][0]["detail"] == "the gate is closed"
        assert ok(await http.get(f"{BASE}/test_gated/g"))["published_version"] is None
        ok(await http.post(f"{BASE}/test_gated/g/versions/1/publish", json={"expected_head": None}))
