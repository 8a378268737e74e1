"""`keel settings …`: values validated, secrets read from stdin and never printed, one-line
errors with a hint, JSON output."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from keel.cli import add_module_commands, app
from keel.settings.cli import settings_cli

runner = CliRunner()
SECRET = "cli-secret-value-42"


@pytest.fixture(autouse=True)
def _settings_commands(
    monkeypatch: pytest.MonkeyPatch, database_url: str, tmp_path: Path
) -> Iterator[None]:
    """The `settings` group attached as `keel main()` does, on the test's database (and data
    directory, where the SQLite master key is made)."""
    monkeypatch.setenv("KEEL_DATABASE_URL", database_url)
    monkeypatch.setenv("KEEL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("KEEL_AUTO_MIGRATE", "true")
    if database_url.startswith("postgresql"):
        from tests.conftest import TEST_MASTER_KEY

        monkeypatch.setenv("KEEL_MASTER_KEY", TEST_MASTER_KEY)
    before = list(app.registered_groups)
    add_module_commands([("settings", settings_cli)])
    yield
    app.registered_groups[:] = before


def _json(*args: str, stdin: str | None = None) -> Any:
    result = runner.invoke(app, ["settings", *args, "--json"], input=stdin)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_set_get_history_rollback_unset() -> None:
    """A value set from the command line is read back with its source, kept in the history,
    rolled back and unset."""
    first = _json("set", "test.every", "5m", "--reason", "first")
    assert (first["value"], first["source"]) == ("300s", "override")
    _json("set", "test.every", "PT1M", "--reason", "second")
    assert _json("get", "test.every")["value"] == "60s"
    history = _json("history", "test.every")
    assert [h["reason"] for h in history] == ["second", "first"]
    rolled = _json("rollback", "test.every", history[1]["id"], "--reason", "undo")
    assert rolled["value"] == "300s"
    unset = _json("unset", "test.every", "--reason", "done")
    assert (unset["value"], unset["source"]) == ("30s", "default")
    listed = {row["key"]: row for row in _json("list")}
    assert listed["test.every"]["last_change"]["action"] == "unset"
    plain = runner.invoke(app, ["settings", "history", "test.every"])
    assert plain.exit_code == 0 and "undo" in plain.output


@pytest.mark.parametrize(
    ("args", "message", "hint"),
    [
        (["set", "test.count", "lots", "--reason", "x"], "must be an integer", None),
        (["set", "test.count", "0", "--reason", "x"], "at least 1", None),
        (["set", "test.nothing", "1", "--reason", "x"], "no setting 'test.nothing'", "list"),
        (["set", "test.count", "3"], "a reason is required", "--reason"),
        (["rollback", "test.count", "nope", "--reason", "x"], "No change 'nope'", None),
        (["set", "test.count", "3", "--tenant", "t1", "--reason", "x"], "no tenant", None),
        (["set", "test.quota", "3", "--tenant", "", "--reason", "x"], "1 to 36", "omit"),
        (["set", "test.quota", "3", "--tenant", "t" * 37, "--reason", "x"], "1 to 36", "omit"),
        (["unset", "test.quota", "--tenant", "", "--reason", "x"], "1 to 36", "omit"),
        (["get", "test.quota", "--tenant", ""], "1 to 36", "omit"),
    ],
)
def test_errors_are_one_line_with_a_hint(args: list[str], message: str, hint: str | None) -> None:
    """Bad values, unknown keys and missing reasons fail with one line (and a hint) and
    change nothing."""
    result = runner.invoke(app, ["settings", *args])
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[0].startswith("keel: error:") and message in lines[0], result.output
    if hint is not None:
        assert lines[1].strip().startswith("hint:") and hint in lines[1]
    assert "Traceback" not in result.output
    assert _json("history", "test.count") == []
    assert _json("history", "test.quota") == []


def test_secrets_come_from_stdin_and_are_never_printed() -> None:
    """`set KEY -` reads a secret from stdin; no command prints it afterwards."""
    result = runner.invoke(
        app, ["settings", "set", "test.token", "-", "--reason", "rotate"], input=SECRET + "\n"
    )
    assert result.exit_code == 0, result.output
    outputs = [result.output]
    for args in (["list"], ["get", "test.token"], ["history", "test.token"]):
        for extra in ([], ["--json"]):
            shown = runner.invoke(app, ["settings", *args, *extra])
            assert shown.exit_code == 0, shown.output
            outputs.append(shown.output)
    assert all(SECRET not in output for output in outputs)
    assert _json("get", "test.token")["value"] == "***"
