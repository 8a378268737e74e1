"""`keel deps …` on both dialects: list and probe, the incident and maintenance commands with
their audit trail, one-line errors with hints that change nothing, and --help everywhere."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from sqlalchemy import func, select
from typer.testing import CliRunner

from keel import deps
from keel.audit.models import AuditEvent
from keel.cli import add_module_commands, app
from keel.core.config import Config
from keel.core.database import Database
from keel.deps.cli import deps_cli
from keel.deps.models import Incident, Maintenance, ProbeResult
from tests.deps.upstream import Behaviour, Upstream

runner = CliRunner()


@pytest.fixture(autouse=True)
def _deps_commands(
    monkeypatch: pytest.MonkeyPatch, database_url: str, tmp_path: Path
) -> Iterator[None]:
    """The `deps` group attached as `keel main()` does, on the test's database."""
    monkeypatch.setenv("KEEL_DATABASE_URL", database_url)
    monkeypatch.setenv("KEEL_AUTO_MIGRATE", "true")
    monkeypatch.setenv("KEEL_DATA_DIR", str(tmp_path / "data"))
    if database_url.startswith("postgresql"):
        from tests.conftest import TEST_MASTER_KEY

        monkeypatch.setenv("KEEL_MASTER_KEY", TEST_MASTER_KEY)
    before = list(app.registered_groups)
    add_module_commands([("deps", deps_cli)])
    yield
    app.registered_groups[:] = before


async def keel(*args: str) -> Result:
    """Run `keel deps …` in a thread (it runs its own event loop) while ours serves the
    upstream."""
    return await asyncio.to_thread(runner.invoke, app, ["deps", *args])


async def _count(model: Any) -> int:
    db = Database(Config())
    try:
        async with db.session() as session:
            # unscoped: the test counts everything.
            return int(await session.scalar(select(func.count()).select_from(model)) or 0)
    finally:
        await db.dispose()


async def _audit_actions() -> list[tuple[str, str]]:
    db = Database(Config())
    try:
        async with db.session() as session:
            # unscoped: the test reads the whole trail.
            rows = await session.execute(
                select(AuditEvent.action, AuditEvent.actor_label).order_by(AuditEvent.seq)
            )
            return [(action, label) for action, label in rows]
    finally:
        await db.dispose()


def _one_line_error(result: Result, text: str, hint: str | None = None, code: int = 1) -> None:
    lines = result.output.strip().splitlines()
    assert result.exit_code == code, (code, result.output)
    assert lines[0].startswith("keel: error: ") and text in lines[0], lines
    if hint is not None:
        assert len(lines) == 2 and lines[1].strip().startswith("hint:") and hint in lines[1]
    assert "Traceback" not in result.output


async def test_probe_records_and_list_shows_the_state(upstream: Upstream) -> None:
    """`probe NAME` checks the upstream now and records it; failures exit 1 and, after the
    threshold, open the automatic incident that `list` then shows."""
    deps.declare("up", base_url=upstream.url, probe=deps.Probe("/health", failures=2))
    good = await keel("probe", "up")
    assert good.exit_code == 0 and good.output.startswith("up: ok in "), good.output
    upstream.default = Behaviour(status=503)
    first = await keel("probe", "up", "--json")
    assert first.exit_code == 1 and json.loads(first.output)["ok"] is False
    second = await keel("probe", "up")
    assert second.exit_code == 1 and "FAILED" in second.output
    assert "status 503, expected 200" in second.output and "Opened incident" in second.output
    rows = json.loads((await keel("list", "--json")).output)
    by_name = {row["name"]: row for row in rows}
    assert set(by_name) == {"keel.api", "keel.database", "keel.workers", "up"}
    up = by_name["up"]
    assert up["failing_streak"] == 2 and up["incident_id"] is not None
    assert up["last_probe"]["ok"] is False and up["policy"]["base_url"] == upstream.url
    assert up["policy"]["probe"]["failures"] == 2
    table = await keel("list")
    assert table.exit_code == 0 and "failing:" in table.output and "503" in table.output
    assert await _count(ProbeResult) == 3
    database = await keel("probe", "keel.database")
    assert database.exit_code == 0 and database.output.startswith("keel.database: ok")


async def test_the_configuration_reaches_the_commands(
    upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dependency only the configuration declares can be listed and probed; a bad setting
    stops the command with one line naming it."""
    monkeypatch.setenv("KEEL_DEPS__EXTRA__BASE_URL", upstream.url)
    monkeypatch.setenv("KEEL_DEPS__EXTRA__PROBE__PATH", "/ping")
    probed = await keel("probe", "extra")
    assert probed.exit_code == 0, probed.output
    assert upstream.hits[-1][1] == "/ping"
    monkeypatch.setenv("KEEL_DEPS__EXTRA__RETRY__ATTEMPTS", "0")
    bad = await keel("list")
    assert bad.exit_code == 2
    _one_line_error(bad, "deps.extra.retry.attempts", "KEEL_DEPS__EXTRA__RETRY__ATTEMPTS", 2)


async def test_list_masks_credentials_in_dependency_urls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`list` (table and --json) shows a base URL and an absolute probe URL with their
    password and token masked."""
    monkeypatch.setenv("KEEL_DEPS__PAID__BASE_URL", "https://bot:s3cret@api.example/v1")
    monkeypatch.setenv("KEEL_DEPS__PAID__PROBE__PATH", "https://status.example/h?token=tok123")
    listed = await keel("list", "--json")
    assert listed.exit_code == 0, listed.output
    (paid,) = [row for row in json.loads(listed.output) if row["name"] == "paid"]
    assert paid["policy"]["base_url"] == "https://bot:***@api.example/v1"
    assert paid["policy"]["probe"]["path"] == "https://status.example/h?token=***"
    table = await keel("list")
    assert table.exit_code == 0 and "bot:***@" in table.output  # the column may wrap
    for result in (listed, table):
        assert "s3cret" not in result.output and "tok123" not in result.output


async def test_incidents_from_open_to_postmortem_are_audited() -> None:
    """Open, update (with a new impact), post-mortem and close an incident from the shell;
    the timeline keeps each step and the audit trail names the CLI."""
    opened = json.loads(
        (await keel("incidents", "open", "Slow uploads", "--impact", "minor", "--json")).output
    )
    incident_id = opened["id"]
    assert opened["state"] == "open" and opened["impact"] == "minor"
    updated = await keel("incidents", "update", incident_id, "Found it", "--impact", "major")
    assert updated.exit_code == 0 and "impact major" in updated.output
    assert (await keel("incidents", "postmortem", incident_id, "A full disk.")).exit_code == 0
    closed = await keel("incidents", "close", incident_id, "Fixed.")
    assert closed.exit_code == 0 and "resolved" in closed.output
    shown = json.loads((await keel("incidents", "show", incident_id, "--json")).output)
    assert [u["kind"] for u in shown["updates"]] == [
        "opened",
        "impact",
        "update",
        "postmortem",
        "resolved",
    ]
    assert shown["postmortem"] == "A full disk."
    listed = json.loads((await keel("incidents", "list", "--state", "resolved", "--json")).output)
    assert [i["id"] for i in listed] == [incident_id]
    assert json.loads((await keel("incidents", "list", "--state", "open", "--json")).output) == []
    actions = await _audit_actions()
    ours = [a for a in actions if a[0].startswith("incident.")]
    assert [a for a, _ in ours] == [
        "incident.open",
        "incident.update",
        "incident.postmortem",
        "incident.resolve",
    ]
    assert all("cli" in label for _, label in ours), ours


async def test_maintenance_add_list_remove() -> None:
    """One-off and recurring windows are added, listed and removed."""
    one_off = await keel(
        "maintenance",
        "add",
        "Database upgrade",
        "--starts-at",
        "2026-12-24T02:00+09:00",
        "--ends-at",
        "2026-12-24T04:00+09:00",
        "--json",
    )
    assert one_off.exit_code == 0, one_off.output
    starts = datetime.fromisoformat(json.loads(one_off.output)["starts_at"])
    assert starts == datetime(2026, 12, 23, 17, 0, tzinfo=UTC)
    weekly = await keel(
        "maintenance", "add", "Weekly", "--cron", "0 3 * * 0", "--minutes", "30",
        "--tz", "Asia/Seoul", "--component", "up",
    )  # fmt: skip
    assert weekly.exit_code == 0 and weekly.output.startswith("Added maintenance window")
    rows = json.loads((await keel("maintenance", "list", "--json")).output)
    assert {r["title"] for r in rows} == {"Database upgrade", "Weekly"}
    table = (await keel("maintenance", "list")).output
    assert "0 3 * * 0 (Asia/Seoul)" in table and "for 30 min" in table
    removed = await keel("maintenance", "remove", rows[0]["id"])
    assert removed.exit_code == 0 and rows[0]["id"] in removed.output
    assert await _count(Maintenance) == 1
    as_json = await keel("maintenance", "remove", rows[1]["id"], "--json")
    assert json.loads(as_json.output) == {"id": rows[1]["id"], "removed": True}
    assert await _count(Maintenance) == 0
    actions = [a for a, _ in await _audit_actions() if a.startswith("maintenance.")]
    assert actions == ["maintenance.create", "maintenance.create", *["maintenance.delete"] * 2]


async def test_bad_input_fails_in_one_line_and_changes_nothing() -> None:
    """Unknown ids and names, bad impacts, cron expressions, time zones and times each fail
    with one line and a hint, exit 2 for a malformed argument and 1 for what the service
    refuses; nothing is written."""
    opened = json.loads((await keel("incidents", "open", "Outage", "--json")).output)
    assert (await keel("incidents", "close", opened["id"])).exit_code == 0
    incidents_before, audit_before = await _count(Incident), len(await _audit_actions())
    cases = [
        (("incidents", "show", "nope"), "no incident 'nope'", "keel deps incidents list"),
        (("incidents", "update", "nope", "x"), "no incident 'nope'", "incidents list"),
        (("incidents", "close", opened["id"]), "already resolved", "incidents list"),
        (("incidents", "open", "X", "--impact", "huge"), "impact must be one of", "critical", 2),
        (("incidents", "open", "  "), "needs a title", None),
        (("incidents", "postmortem", "nope", "x"), "no incident 'nope'", "incidents list"),
        (("incidents", "list", "--state", "closed"), "--state must be open or resolved", None, 2),
        (("maintenance", "remove", "nope"), "no maintenance window", "maintenance list"),
        (("maintenance", "add", "W", "--cron", "bad", "--minutes", "5"), "not a cron", "--cron"),
        (
            ("maintenance", "add", "W", "--cron", "0 3 * * *", "--minutes", "5", "--tz", "Mars/X"),
            "unknown time zone",
            None,
        ),
        (("maintenance", "add", "W", "--cron", "0 3 * * *"), "length in minutes", None),
        (
            ("maintenance", "add", "W", "--starts-at", "2026-01-01T00:00", "--ends-at", "x"),
            "no time zone offset",
            "+09:00",
            2,
        ),
        (("maintenance", "add", "W", "--starts-at", "yesterday"), "not a date", "2026-12-24", 2),
        (
            (
                "maintenance",
                "add",
                "W",
                "--starts-at",
                "2026-01-02T00:00Z",
                "--ends-at",
                "2026-01-01T00:00Z",
            ),
            "ends_at must be after starts_at",
            None,
        ),
        (
            ("maintenance", "add", "W", "--cron", "0 3 * * *", "--starts-at", "x"),
            "not both",
            None,
            2,
        ),
        (("probe", "nope"), "no dependency 'nope'", "known: keel.database"),
        (("probe", "keel.api"), "cannot be probed from a shell", "keel deps list"),
        (("probe", "keel.workers"), "cannot be probed from a shell", None),
    ]
    cases.append(
        (("incidents", "update", opened["id"], "x", "--impact", "huge"), "impact", None, 2)
    )
    for args, text, hint, *code in cases:
        _one_line_error(await keel(*args), text, hint, *code)
    assert await _count(Incident) == incidents_before
    assert await _count(Maintenance) == 0 and await _count(ProbeResult) == 0
    assert len(await _audit_actions()) == audit_before


@pytest.mark.parametrize(
    "command",
    [
        (),
        ("list",),
        ("probe",),
        ("incidents",),
        ("incidents", "list"),
        ("incidents", "show"),
        ("incidents", "open"),
        ("incidents", "update"),
        ("incidents", "close"),
        ("incidents", "postmortem"),
        ("maintenance",),
        ("maintenance", "list"),
        ("maintenance", "add"),
        ("maintenance", "remove"),
    ],
)
def test_every_command_has_help(command: tuple[str, ...]) -> None:
    """`--help` describes each command and group."""
    result = runner.invoke(app, ["deps", *command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output and len(result.output.splitlines()) > 4
