"""`keel user …`: manage users from the command line.

A password is read from a hidden prompt (asked twice) or, with `--password-stdin`, from the
first line of standard input; never from an argument, which shell history and `ps` would keep.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import typer
from rich.markup import escape
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncSession

from keel.core.clitools import (
    DataDirOption,
    JsonOption,
    fail,
    load_config,
    out,
    print_json,
    run,
)
from keel.core.config import Config
from keel.core.database import Database
from keel.core.migrate import prepare
from keel.identity.models import User
from keel.identity.passwords import PasswordRejected, check_policy
from keel.identity.service import (
    create_user,
    disable_user,
    list_users,
    normalize_email,
    prepare_password,
    sign_out_everywhere,
)
from keel.identity.setup import setup_link
from keel.identity.throttle import account_locks, unlock

__all__ = ["user_cli"]

T = TypeVar("T")


async def _in_transaction(config: Config, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    db = Database(config)
    try:
        await prepare(db, auto_migrate=config.should_auto_migrate)
        async with db.transaction() as session:
            return await work(session)
    finally:
        await db.dispose()


def _user_data(user: User) -> dict[str, object]:
    return {
        "id": user.id,
        "email": user.email,
        "display_name": user.display_name,
        "status": user.status,
        "created_at": user.created_at.isoformat(),
        "last_login_at": user.last_login_at.isoformat() if user.last_login_at else None,
    }


def _read_password(from_stdin: bool, email: str) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        if not line:
            fail("no password on standard input", hint="pipe it in: printf '%s\\n' \"$PW\" | …")
        return line.rstrip("\r\n")
    while True:
        password: str = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
        try:
            check_policy(password, email=email)
        except PasswordRejected as exc:
            for error in exc.errors or []:
                typer.echo(f"  {error['detail']}", err=True)
            continue
        return password


group = typer.Typer(help="Manage users.", no_args_is_help=True)


@group.command("create")
def create(
    email: Annotated[str, typer.Option(help="The user's email (their sign-in name).")],
    display_name: Annotated[
        str | None, typer.Option(help="Name shown in the console (default: from email).")
    ] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from stdin.")
    ] = False,
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create an active user with a password (asked for, never an argument)."""
    config = load_config(data_dir=data_dir)
    password = _read_password(password_stdin, email)
    password_hash = run(prepare_password(password, email=email))

    async def work(session: AsyncSession) -> dict[str, object]:
        user = await create_user(
            session, email=email, password_hash=password_hash, display_name=display_name
        )
        return _user_data(user)

    data = run(_in_transaction(config, work))
    if as_json:
        print_json(data)
    else:
        out.print(f"Created user {data['email']} ({data['id']}).", highlight=False, markup=False)


@group.command("list")
def list_(
    status: Annotated[
        str | None, typer.Option(help="Only users with this status: active or disabled.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="At most this many.")] = 100,
    after: Annotated[
        str | None, typer.Option(help="Continue after this user id (next page).")
    ] = None,
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """List users in creation order, with any login lockout in force."""
    config = load_config(data_dir=data_dir)

    async def work(session: AsyncSession) -> list[dict[str, object]]:
        users = await list_users(session, status=status, limit=limit, after=after)
        locks = await account_locks(session, [user.email for user in users])
        return [
            {
                **_user_data(user),
                "locked_until": locks[user.email].isoformat() if user.email in locks else None,
            }
            for user in users
        ]

    rows = run(_in_transaction(config, work))
    if as_json:
        print_json(rows)
        return
    if not rows:
        out.print("No users.")
        return
    table = Table(box=None, header_style="bold")
    for column in ("email", "display name", "status", "created", "last login", "locked", "id"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            escape(str(row["email"])),
            escape(str(row["display_name"])),
            str(row["status"]),
            str(row["created_at"])[:19],
            str(row["last_login_at"] or "never")[:19],
            f"until {str(row['locked_until'])[11:19]}" if row["locked_until"] else "",
            str(row["id"]),
        )
    out.print(table)
    if len(rows) == limit:
        out.print(f"More may follow: --after {rows[-1]['id']}", highlight=False, markup=False)


@group.command("disable")
def disable(
    email: Annotated[str, typer.Argument(help="Email of the user to disable.")],
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Disable a user: they can no longer sign in. Their data stays."""
    config = load_config(data_dir=data_dir)

    async def work(session: AsyncSession) -> dict[str, object]:
        return _user_data(await disable_user(session, email))

    data = run(_in_transaction(config, work))
    if as_json:
        print_json(data)
    else:
        out.print(f"Disabled {data['email']}.", highlight=False, markup=False)


@group.command("setup-link")
def setup_link_(
    base_url: Annotated[
        str | None,
        typer.Option(help="Where Keel is reached [default: KEEL_PUBLIC_URL or host:port]."),
    ] = None,
    data_dir: DataDirOption = None,
) -> None:
    """Print a new one-time link to create the first account (only while there is none)."""
    config = load_config(data_dir=data_dir)
    url = base_url or config.public_url or f"http://{config.host}:{config.port}"

    async def work() -> str | None:
        db = Database(config)
        try:
            await prepare(db, auto_migrate=config.should_auto_migrate)
            return await setup_link(db, url)
        finally:
            await db.dispose()

    link = run(work())
    if link is None:
        fail("accounts already exist", hint="sign in, or `keel user create` another one")
    out.print(link, markup=False, highlight=False)


@group.command("sign-out")
def sign_out(
    email: Annotated[str, typer.Argument(help="Email of the user to sign out everywhere.")],
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """End every browser session of a user (lost laptop, leaked cookie)."""
    config = load_config(data_dir=data_dir)

    async def work(session: AsyncSession) -> int:
        return await sign_out_everywhere(session, email)

    ended = run(_in_transaction(config, work))
    address = normalize_email(email)
    if as_json:
        print_json({"email": address, "sessions_ended": ended})
    else:
        out.print(f"Ended {ended} session(s) of {address}.", markup=False)


@group.command("unlock")
def unlock_(
    email: Annotated[str, typer.Argument(help="Email of the locked-out user.")],
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Lift a login lockout now instead of waiting for it to expire."""
    config = load_config(data_dir=data_dir)

    async def work(session: AsyncSession) -> bool:
        return await unlock(session, email)

    was_locked = run(_in_transaction(config, work))
    address = normalize_email(email)
    if as_json:
        print_json({"email": address, "was_locked": was_locked})
    else:
        out.print(
            f"Unlocked {address}." if was_locked else f"{address} was not locked.",
            highlight=False,
            markup=False,
        )


def user_cli() -> typer.Typer:
    """The `keel user` command group."""
    return group
