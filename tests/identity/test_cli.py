"""`keel user …`: passwords never as arguments, one-line errors, JSON output."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keel.cli import add_module_commands, app
from keel.identity.cli import user_cli

runner = CliRunner()
PASSWORD = "correct horse battery staple"


@pytest.fixture(autouse=True)
def _user_commands(monkeypatch: pytest.MonkeyPatch, database_url: str) -> None:
    """The `user` group attached as `keel main()` does, on the test's database."""
    monkeypatch.setenv("KEEL_DATABASE_URL", database_url)
    monkeypatch.setenv("KEEL_AUTO_MIGRATE", "true")
    before = list(app.registered_groups)
    add_module_commands([("user", user_cli)])
    yield
    app.registered_groups[:] = before


def test_create_list_disable() -> None:
    """A user created from stdin is listed, then disabled."""
    created = runner.invoke(
        app,
        ["user", "create", "--email", "Ada@Example.com", "--password-stdin", "--json"],
        input=PASSWORD + "\n",
    )
    assert created.exit_code == 0, created.output
    assert json.loads(created.output)["email"] == "ada@example.com"
    listed = json.loads(runner.invoke(app, ["user", "list", "--json"]).output)
    assert [row["email"] for row in listed] == ["ada@example.com"]
    assert PASSWORD not in json.dumps(listed)
    disabled = runner.invoke(app, ["user", "disable", "ada@example.com"])
    assert disabled.exit_code == 0
    assert "Disabled ada@example.com" in disabled.output
    listed = json.loads(runner.invoke(app, ["user", "list", "--json", "--status", "active"]).output)
    assert listed == []


def test_prompted_password_is_asked_twice_and_weak_ones_explained() -> None:
    """Without --password-stdin the password is prompted (hidden, confirmed); a weak one is
    explained and asked again."""
    result = runner.invoke(
        app,
        ["user", "create", "--email", "bob@example.com"],
        input=f"password\npassword\n{PASSWORD}\n{PASSWORD}\n",
    )
    assert result.exit_code == 0, result.output
    assert "most common" in result.output
    assert PASSWORD not in result.output


def test_errors_are_one_line_with_nothing_written() -> None:
    """Duplicate email, weak stdin password and unknown user fail in one line each."""
    runner.invoke(
        app, ["user", "create", "--email", "ada@example.com", "--password-stdin"], input=PASSWORD
    )
    duplicate = runner.invoke(
        app, ["user", "create", "--email", "ADA@example.com", "--password-stdin"], input=PASSWORD
    )
    assert duplicate.exit_code == 1
    assert duplicate.output.startswith("keel: error: a user with email ada@example.com")
    weak = runner.invoke(
        app, ["user", "create", "--email", "eve@example.com", "--password-stdin"], input="123456"
    )
    assert weak.exit_code == 1
    assert weak.output.startswith("keel: error: The password does not meet the policy.")
    missing = runner.invoke(app, ["user", "disable", "ghost@example.com"])
    assert missing.exit_code == 1
    assert "no user with email ghost@example.com" in missing.output
    listed = json.loads(runner.invoke(app, ["user", "list", "--json"]).output)
    assert [row["email"] for row in listed] == ["ada@example.com"]


def test_password_is_never_an_argument() -> None:
    """There is no --password option to leak into shell history."""
    result = runner.invoke(app, ["user", "create", "--help"])
    assert "--password-stdin" in result.output
    assert "--password " not in result.output.replace("--password-stdin", "")


def test_unlock_command(database_url: str, tmp_path: Path) -> None:
    """`keel user unlock` lifts a real lockout, and says when there was none."""
    import asyncio

    from keel import Config
    from keel.core.database import Database
    from keel.identity.throttle import LoginFailed, LoginThrottled, login

    runner.invoke(
        app, ["user", "create", "--email", "ada@example.com", "--password-stdin"], input=PASSWORD
    )

    async def fail_five_times() -> None:
        db = Database(Config(database_url=database_url, data_dir=tmp_path))
        try:
            for _ in range(6):
                with contextlib.suppress(LoginFailed, LoginThrottled):
                    await login(db, email="ada@example.com", password="wrong" * 4, client_ip=None)
        finally:
            await db.dispose()

    asyncio.run(fail_five_times())
    listed = json.loads(runner.invoke(app, ["user", "list", "--json"]).output)
    assert listed[0]["locked_until"] is not None, "admins see the lockout"
    assert "until" in runner.invoke(app, ["user", "list"]).output
    result = runner.invoke(app, ["user", "unlock", "ada@example.com", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"email": "ada@example.com", "was_locked": True}
    again = runner.invoke(app, ["user", "unlock", "ada@example.com", "--json"])
    assert json.loads(again.output)["was_locked"] is False
    listed = json.loads(runner.invoke(app, ["user", "list", "--json"]).output)
    assert listed[0]["locked_until"] is None


def test_brackets_in_input_are_text_not_markup() -> None:
    """An email full of Rich markup is echoed as text in the one-line error, not a crash."""
    result = runner.invoke(app, ["user", "disable", "[/]x[bold]@example.com"])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert "[/]x[bold]@example.com" in result.output


def test_sign_out_command_for_unknown_and_known_users() -> None:
    """`keel user sign-out` ends a user's sessions (none yet here) and refuses unknown users."""
    runner.invoke(
        app, ["user", "create", "--email", "ada@example.com", "--password-stdin"], input=PASSWORD
    )
    result = runner.invoke(app, ["user", "sign-out", "ada@example.com", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"email": "ada@example.com", "sessions_ended": 0}
    missing = runner.invoke(app, ["user", "sign-out", "ghost@example.com"])
    assert missing.exit_code == 1
    assert "no user with email ghost@example.com" in missing.output
