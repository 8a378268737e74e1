"""`keel audit …`: verify (exit codes, pinpointing), export, checkpoint, prune."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from keel import Config
from keel.audit.cli import audit_cli
from keel.cli import add_module_commands, app
from keel.core.database import Database
from keel.identity.cli import tenant_cli, user_cli
from tests.conftest import TEST_MASTER_KEY

runner = CliRunner()
PASSWORD = "correct horse battery staple"


@pytest.fixture(autouse=True)
def _commands(monkeypatch: pytest.MonkeyPatch, database_url: str, tmp_path: Path) -> Iterator[None]:
    monkeypatch.setenv("KEEL_DATABASE_URL", database_url)
    monkeypatch.setenv("KEEL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("KEEL_AUTO_MIGRATE", "true")
    monkeypatch.setenv("KEEL_MASTER_KEY", TEST_MASTER_KEY)
    before = list(app.registered_groups)
    add_module_commands([("audit", audit_cli), ("user", user_cli), ("tenant", tenant_cli)])
    yield
    app.registered_groups[:] = before


def _activity() -> None:
    """CLI changes, each recorded as `system:cli` and sealed by the command itself."""
    assert runner.invoke(app, ["tenant", "create", "acme"]).exit_code == 0
    for name in ("ada", "bob", "cy"):
        created = runner.invoke(
            app,
            ["user", "create", "--email", f"{name}@example.com", "--password-stdin"],
            input=PASSWORD + "\n",
        )
        assert created.exit_code == 0, created.output
    assert runner.invoke(app, ["user", "disable", "bob@example.com"]).exit_code == 0


def _tamper(database_url: str, statement: str) -> None:
    async def go() -> None:
        db = Database(Config(database_url=database_url))
        try:
            async with db.engine.begin() as connection:
                if db.dialect == "postgresql":
                    await connection.execute(text("SET LOCAL session_replication_role = replica"))
                else:
                    await connection.execute(text("DROP TRIGGER keel_audit_seal_only"))
                    await connection.execute(text("DROP TRIGGER keel_audit_no_delete"))
                await connection.execute(text(statement))
        finally:
            await db.dispose()

    asyncio.run(go())


def test_verify_intact_then_pinpoints_a_change(database_url: str) -> None:
    """Exit 0 on the intact chain; exit 1 naming seq 3 once event 3 is edited."""
    _activity()
    intact = runner.invoke(app, ["audit", "verify", "--json"])
    assert intact.exit_code == 0, intact.output
    data = json.loads(intact.output)
    assert data["ok"] is True and data["checked"] == 5 and data["unsealed"] == 0
    actors = json.loads(
        runner.invoke(app, ["audit", "export", "--format", "jsonl"]).output.splitlines()[0]
    )
    assert actors["actor_id"] == "system:cli" and actors["action"] == "tenant.create"
    _tamper(database_url, "UPDATE keel_audit_events SET reason = 'hm' WHERE seq = 3")
    broken = runner.invoke(app, ["audit", "verify"])
    assert broken.exit_code == 1
    assert "Broken at seq 3" in broken.output


def test_verify_from_and_a_deleted_event(database_url: str) -> None:
    """A deleted event is named; `--from` past it verifies the rest."""
    _activity()
    _tamper(database_url, "DELETE FROM keel_audit_events WHERE seq = 2")
    broken = runner.invoke(app, ["audit", "verify", "--json"])
    assert broken.exit_code == 1
    assert json.loads(broken.output)["broken_seq"] == 2
    assert runner.invoke(app, ["audit", "verify", "--from", "3"]).exit_code == 0


def test_export_formats_and_bad_input(tmp_path: Path) -> None:
    """JSON lines and CSV, in seq order; an unknown format is a one-line error."""
    _activity()
    rows = [
        json.loads(line)
        for line in runner.invoke(app, ["audit", "export", "--format", "jsonl"]).output.splitlines()
    ]
    assert [r["seq"] for r in rows] == [1, 2, 3, 4, 5]
    target = tmp_path / "out.csv"
    written = runner.invoke(app, ["audit", "export", "--format", "csv", "--output", str(target)])
    assert written.exit_code == 0
    lines = target.read_text().splitlines()
    assert lines[0].startswith("seq,id,recorded_at") and len(lines) == 6
    bad = runner.invoke(app, ["audit", "export", "--format", "xml"])
    assert bad.exit_code == 1 and "--format must be jsonl or csv" in bad.output


def test_checkpoint_and_prune_with_archive(tmp_path: Path) -> None:
    """A printed checkpoint; pruning archives first, and the rest still verifies."""
    _activity()
    point = runner.invoke(app, ["audit", "checkpoint", "--json", "--output", str(tmp_path / "cp")])
    assert point.exit_code == 0, point.output
    assert json.loads(point.output)["seq"] == 5
    assert (tmp_path / "cp").read_text().count("\n") == 1
    archive = tmp_path / "archive.jsonl"
    pruned = runner.invoke(
        app, ["audit", "prune", "--before", "2999-01-01", "--archive", str(archive), "--json"]
    )
    assert pruned.exit_code == 0, pruned.output
    assert json.loads(pruned.output) == {"archived": 5, "deleted": 5, "through_seq": 5}
    assert len(archive.read_text().splitlines()) == 5
    after = runner.invoke(app, ["audit", "verify", "--json"])
    assert after.exit_code == 0, after.output
    assert json.loads(after.output)["first_seq"] == 6  # the audit.prune event itself
    again = runner.invoke(
        app, ["audit", "prune", "--before", "2999-01-01", "--archive", str(archive)]
    )
    assert again.exit_code == 1 and "exists" in again.output


def test_prune_without_a_date_needs_a_retention(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No --before and no KEEL_AUDIT_RETENTION_DAYS: a one-line error, nothing pruned; with a
    retention of 1 day, today's events are kept."""
    _activity()
    refused = runner.invoke(app, ["audit", "prune", "--archive", str(tmp_path / "a.jsonl")])
    assert refused.exit_code == 1 and "KEEL_AUDIT_RETENTION_DAYS" in refused.output
    monkeypatch.setenv("KEEL_AUDIT_RETENTION_DAYS", "1")
    kept = runner.invoke(app, ["audit", "prune", "--archive", str(tmp_path / "b.jsonl"), "--json"])
    assert kept.exit_code == 0, kept.output
    assert json.loads(kept.output)["deleted"] == 0
