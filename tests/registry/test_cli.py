"""`keel registry …`: list, show, versions, history, diff, publish, rollback and archive from
the command line, with one-line errors that change nothing, and --help on every command."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from keel import Config
from keel.audit import bind_actor, reset_actor, system_actor
from keel.cli import add_module_commands, app
from keel.core.database import Database
from keel.core.migrate import upgrade
from keel.registry import canonical_sql, service
from keel.registry.cli import registry_cli
from keel.registry.models import Transition

runner = CliRunner()
T = TypeVar("T")
COMMANDS = ["list", "show", "versions", "history", "diff", "publish", "rollback", "archive"]


@pytest.fixture(autouse=True)
def _registry_commands(
    monkeypatch: pytest.MonkeyPatch, database_url: str, tmp_path: Path
) -> Iterator[None]:
    """The `registry` group attached as `keel main()` does, on the test's database."""
    monkeypatch.setenv("KEEL_DATABASE_URL", database_url)
    monkeypatch.setenv("KEEL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("KEEL_AUTO_MIGRATE", "true")
    before = list(app.registered_groups)
    add_module_commands([("registry", registry_cli)])
    yield
    app.registered_groups[:] = before


def _run(config: Config, work: Callable[[Database], Awaitable[T]]) -> T:
    """Run `work` on a migrated database of `config`, outside any event loop."""

    async def main() -> T:
        db = Database(config)
        try:
            await upgrade(db)
            return await work(db)
        finally:
            await db.dispose()

    return asyncio.run(main())


async def _seed(db: Database) -> None:
    """sql_query `q` with v1 published and v2 a draft; a report on it, published."""
    token = bind_actor(system_actor("test"))
    try:
        async with db.transaction() as session:
            asset, _ = await service.create_asset(
                session, "sql_query", "q", {"sql": "SELECT a\nFROM t"}, tenant_id=None
            )
            await service.validate(session, asset, 1)
            await service.publish(session, asset, 1, reason="first")
            await service.add_draft(session, asset, {"sql": "SELECT a, b\nFROM t"})
            report, _ = await service.create_asset(
                session, "test_report", "r", {"title": "Daily", "query": "q"}, tenant_id=None
            )
            await service.validate(session, report, 1)
            await service.publish(session, report, 1)
    finally:
        reset_actor(token)


async def _bad_draft(db: Database) -> None:
    token = bind_actor(system_actor("test"))
    try:
        async with db.transaction() as session:
            asset = await service.find_asset(session, "sql_query", "q", tenant_id=None)
            await service.add_draft(session, asset, {"sql": "SELECT 1; DROP TABLE t"})
    finally:
        reset_actor(token)


async def _transitions(db: Database) -> int:
    async with db.session() as session:
        return int(await session.scalar(select(func.count()).select_from(Transition)) or 0)


def _invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["registry", *args])
    return result.exit_code, result.output


def test_list_show_versions_diff_publish_rollback(config: Config) -> None:
    """The operator's round: list, show, diff v1..v2, publish v2 (validated on the way),
    roll back to v1 (a new v3), and read the history."""
    _run(config, _seed)
    code, output = _invoke("list", "sql_query", "--json")
    assert code == 0, output
    assert [(r["name"], r["published_version"]) for r in json.loads(output)] == [("q", 1)]
    code, output = _invoke("show", "sql_query", "q")
    assert code == 0 and json.loads(output)["version"]["data"]["sql"] == canonical_sql(
        "SELECT a FROM t"
    )
    code, output = _invoke("diff", "sql_query", "q", "1", "2")
    assert code == 0 and "~ /sql" in output and "+  b" in output
    code, output = _invoke("publish", "sql_query", "q", "2", "--reason", "add b")
    assert code == 0 and "version 2 is published" in output, output
    code, output = _invoke("rollback", "sql_query", "q", "1", "--reason", "b was wrong")
    assert code == 0 and "version 3 (a copy of 1) is published" in output, output
    code, output = _invoke("versions", "sql_query", "q", "--json")
    assert [(v["number"], v["state"]) for v in json.loads(output)] == [
        (3, "published"),
        (2, "retired"),
        (1, "retired"),
    ]
    code, output = _invoke("history", "sql_query", "q")
    history = json.loads(output)
    assert [h["action"] for h in history][-2:] == ["publish", "rollback"]
    assert history[-1]["reason"] == "b was wrong" and history[-1]["actor"] == "system:cli"


def test_archive_refusal_and_force(config: Config) -> None:
    """Archiving a referenced query fails in one line naming the dependent and changes
    nothing; --force --reason archives it and lists what is left dangling."""
    _run(config, _seed)
    before = _run(config, _transitions)
    code, output = _invoke("archive", "sql_query", "q")
    assert code == 1
    assert output.startswith("keel: error: sql_query 'q' is referenced by test_report/r")
    assert "hint:" in output
    assert _run(config, _transitions) == before
    code, output = _invoke("archive", "sql_query", "q", "--force", "--reason", "replaced")
    assert code == 0, output
    assert "still referenced by test_report/r" in output


def test_errors_are_one_line_and_change_nothing(config: Config) -> None:
    """Unknown kind, asset, version or tenant, a stale expected head and an invalid draft
    fail in one line with a non-zero exit and leave the history as it was."""
    _run(config, _seed)
    _run(config, _bad_draft)
    before = _run(config, _transitions)
    for args, message in [
        (["list", "nope"], "no asset kind 'nope'"),
        (["show", "sql_query", "ghost"], "no sql_query asset named 'ghost'"),
        (["publish", "sql_query", "q", "9"], "has no version 9"),
        (["publish", "sql_query", "q", "2", "--expected-head", "0"], "published version is 1"),
        (["rollback", "sql_query", "q", "2"], "only a formerly published version"),
        (["list", "sql_query", "--tenant", "nowhere"], "no tenant 'nowhere'"),
    ]:
        code, output = _invoke(*args)
        assert code == 1, (args, output)
        assert output.startswith("keel: error:") and message in output, (args, output)
    assert _run(config, _transitions) == before
    code, output = _invoke("publish", "sql_query", "q", "3")
    assert code == 1 and "version 3 is invalid: exactly one statement" in output
    code, output = _invoke("show", "sql_query", "q", "--version", "3")
    assert json.loads(output)["published_version"] == 1


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str) -> None:
    """`keel registry <command> --help` describes the command and exits 0."""
    code, output = _invoke(command, "--help")
    assert code == 0 and "Usage:" in output and "--help" in output
