"""The `keel` command: readable output, `--json`, and one-line errors with a hint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keel import __version__
from keel.cli import app
from keel.core.migrate import head_revisions

runner = CliRunner()


def test_version() -> None:
    """`keel version` prints the version, `--json` as data."""
    assert runner.invoke(app, ["version"]).output.strip() == f"keel {__version__}"
    result = runner.invoke(app, ["version", "--json"])
    assert json.loads(result.output)["version"] == __version__


def test_every_command_has_help() -> None:
    """Every command documents itself."""
    for command in (
        [],
        ["serve"],
        ["db"],
        ["db", "upgrade"],
        ["db", "current"],
        ["config", "show"],
        ["doctor"],
        ["version"],
    ):
        result = runner.invoke(app, [*command, "--help"])
        assert result.exit_code == 0, command
        assert "Usage" in result.output


def test_config_show_redacts_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """`keel config show` never prints passwords or keys."""
    monkeypatch.setenv("KEEL_DATABASE_URL", "postgresql+psycopg://keel:s3cret@db:5432/keel")
    monkeypatch.setenv("KEEL_MASTER_KEY", "m4ster")
    for args in (["config", "show"], ["config", "show", "--json"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0
        assert "s3cret" not in result.output and "m4ster" not in result.output
    data = json.loads(runner.invoke(app, ["config", "show", "--json"]).output)
    assert data["database_url"] == "postgresql+psycopg://keel:***@db:5432/keel"
    assert data["master_key"] == "***"


def test_invalid_configuration_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad setting exits 2 with `keel: error:` naming the variable, and a hint."""
    monkeypatch.setenv("KEEL_PORT", "not-a-port")
    result = runner.invoke(app, ["config", "show"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert lines[0].startswith("keel: error: invalid configuration: port:")
    assert "KEEL_PORT" in lines[1]
    assert "Traceback" not in result.output


def test_db_upgrade_and_current(monkeypatch: pytest.MonkeyPatch, database_url: str) -> None:
    """`keel db upgrade` migrates once; `keel db current` reports head, on both dialects."""
    monkeypatch.setenv("KEEL_DATABASE_URL", database_url)
    before = json.loads(runner.invoke(app, ["db", "current", "--json"]).output)
    assert before == {"current": [], "heads": list(head_revisions()), "at_head": False}
    result = runner.invoke(app, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert "Migrated empty" in result.output
    again = runner.invoke(app, ["db", "upgrade"])
    assert "nothing to do" in again.output
    after = json.loads(runner.invoke(app, ["db", "current", "--json"]).output)
    assert after["at_head"] is True
    assert "(head)" in runner.invoke(app, ["db", "current"]).output


def test_unreachable_database_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """A database that cannot be reached fails in one line with a hint, password hidden."""
    monkeypatch.setenv("KEEL_DATABASE_URL", "postgresql+psycopg://u:pw@127.0.0.1:1/none")
    monkeypatch.setenv("KEEL_DATABASE_TIMEOUT", "1")
    result = runner.invoke(app, ["db", "current"])
    assert result.exit_code == 1
    assert result.output.startswith("keel: error: cannot read the database")
    assert ":pw@" not in result.output
    assert "hint:" in result.output
    assert "Traceback" not in result.output


def test_doctor(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`keel doctor` passes on a fresh data directory and fails naming an exposed bind."""
    monkeypatch.setenv("KEEL_DATA_DIR", str(tmp_path / "data"))
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 0, result.output
    assert "ok   database" in result.output
    monkeypatch.setenv("KEEL_HOST", "0.0.0.0")
    result = runner.invoke(app, ["doctor", "--json"])
    assert result.exit_code == 1
    checks = {item["name"]: item for item in json.loads(result.output)}
    assert checks["exposure"]["ok"] is False
    assert "KEEL_PUBLIC_URL" in checks["exposure"]["hint"]
