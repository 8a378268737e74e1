"""`keel user …`: passwords never as arguments, one-line errors, JSON output."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keel.cli import add_module_commands, app
from keel.identity.cli import tenant_cli, user_cli

runner = CliRunner()
PASSWORD = "correct horse battery staple"


@pytest.fixture(autouse=True)
def _user_commands(monkeypatch: pytest.MonkeyPatch, database_url: str) -> None:
    """The `user` group attached as `keel main()` does, on the test's database."""
    monkeypatch.setenv("KEEL_DATABASE_URL", database_url)
    monkeypatch.setenv("KEEL_AUTO_MIGRATE", "true")
    before = list(app.registered_groups)
    add_module_commands([("user", user_cli), ("tenant", tenant_cli)])
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


def _create(email: str, *options: str) -> object:
    result = runner.invoke(
        app,
        ["user", "create", "--email", email, "--password-stdin", "--json", *options],
        input=PASSWORD + "\n",
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_roles_and_tenants_from_the_cli() -> None:
    """The first CLI user is an owner, later ones viewers unless --role says otherwise;
    --tenant places a user in a tenant created by `keel tenant create`."""
    assert runner.invoke(app, ["tenant", "create", "acme", "--name", "Acme Corp"]).exit_code == 0
    tenants = json.loads(runner.invoke(app, ["tenant", "list", "--json"]).output)
    assert [(t["slug"], t["name"]) for t in tenants] == [("acme", "Acme Corp")]
    owner = _create("root@example.com")
    assert owner["roles"] == ["owner"] and owner["tenant_id"] is None  # type: ignore[index]
    plain = _create("plain@example.com")
    assert plain["roles"] == ["viewer"]  # type: ignore[index]
    ops = _create("ops@example.com", "--role", "operator", "--role", "viewer", "--tenant", "acme")
    assert ops["roles"] == ["operator", "viewer"]  # type: ignore[index]
    assert ops["tenant_id"] == tenants[0]["id"]  # type: ignore[index]
    listed = json.loads(runner.invoke(app, ["user", "list", "--json"]).output)
    assert {row["email"]: row["roles"] for row in listed}["ops@example.com"] == [
        "operator",
        "viewer",
    ]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--role", "emperor"], "no role named 'emperor'"),
        (["--tenant", "nowhere"], "no tenant 'nowhere'"),
    ],
)
def test_unknown_role_or_tenant_fails_in_one_line(options: list[str], message: str) -> None:
    """A bad --role or --tenant is a one-line error and creates nobody."""
    result = runner.invoke(
        app,
        ["user", "create", "--email", "x@example.com", "--password-stdin", *options],
        input=PASSWORD + "\n",
    )
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output
    assert json.loads(runner.invoke(app, ["user", "list", "--json"]).output) == []


def test_duplicate_or_bad_tenant_slug_fails_in_one_line() -> None:
    """`keel tenant create` refuses a taken or malformed slug with one line."""
    assert runner.invoke(app, ["tenant", "create", "acme"]).exit_code == 0
    again = runner.invoke(app, ["tenant", "create", "ACME"])
    assert again.exit_code == 1 and "already exists" in again.output
    bad = runner.invoke(app, ["tenant", "create", "no spaces!"])
    assert bad.exit_code == 1 and "not a tenant slug" in bad.output


def test_address_locks_are_listed_and_lifted(database_url: str) -> None:
    """`keel user locks` shows a locked address and `unlock --address` lifts it."""
    from keel import Config
    from keel.core.database import Database
    from keel.identity.throttle import LoginPolicy, LoginThrottled, login

    _create("ada@example.com")

    async def spray() -> None:
        db = Database(Config(database_url=database_url))
        policy = LoginPolicy(address_failures=3, account_failures=100)
        try:
            for _ in range(4):
                with contextlib.suppress(Exception):
                    await login(
                        db,
                        email="nobody@example.com",
                        password="wrong password 123",
                        client_ip="2001:db8::7",
                        policy=policy,
                    )
            with pytest.raises(LoginThrottled):
                await login(
                    db,
                    email="ada@example.com",
                    password=PASSWORD,
                    client_ip="2001:db8::9",  # same /64
                    policy=policy,
                )
        finally:
            await db.dispose()

    import asyncio

    asyncio.run(spray())
    locks = json.loads(runner.invoke(app, ["user", "locks", "--json"]).output)
    assert any(lock["kind"] == "address" and "2001:db8::/64" in lock["who"] for lock in locks)
    lifted = runner.invoke(app, ["user", "unlock", "--address", "2001:db8::1", "--json"])
    assert json.loads(lifted.output) == {"email": "2001:db8::1", "was_locked": True}
    locks = json.loads(runner.invoke(app, ["user", "locks", "--json"]).output)
    assert not any(lock["kind"] == "address" for lock in locks)
    both = runner.invoke(app, ["user", "unlock", "ada@example.com", "--address", "10.0.0.1"])
    assert both.exit_code == 1 and "not both" in both.output


def test_prune_attempts(database_url: str) -> None:
    """`keel user prune-attempts` deletes attempts older than --days and keeps the rest."""
    import asyncio
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import func, select

    from keel import Config
    from keel.core.database import Database
    from keel.identity.throttle import LoginAttempt

    _create("ada@example.com")

    async def seed_and_count(seed: bool) -> int:
        db = Database(Config(database_url=database_url))
        try:
            if seed:
                async with db.transaction() as session:
                    now = datetime.now(UTC)
                    for days in (1, 40, 100):
                        session.add(
                            LoginAttempt(
                                id=f"00000000-0000-7000-8000-{days:012d}",
                                at=now - timedelta(days=days),
                                email="ada@example.com",
                                outcome="failed",
                                succeeded=False,
                            )
                        )
            async with db.session() as session:
                return int(
                    await session.scalar(select(func.count()).select_from(LoginAttempt)) or 0
                )
        finally:
            await db.dispose()

    assert asyncio.run(seed_and_count(True)) == 3
    pruned = json.loads(
        runner.invoke(app, ["user", "prune-attempts", "--days", "30", "--json"]).output
    )
    assert pruned == {"pruned": 2, "kept_days": 30}
    assert asyncio.run(seed_and_count(False)) == 1
