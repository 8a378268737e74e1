"""`keel user …` and `keel tenant …`: manage users and tenants from the command line.

A password is read from a hidden prompt (asked twice) or, with `--password-stdin`, from the
first line of standard input; never from an argument, which shell history and `ps` would keep.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from typing import Annotated, TypeVar

import typer
from rich.markup import escape
from rich.table import Table
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from keel.audit import record
from keel.audit.system import in_cli_transaction
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
from keel.identity.access import IDENTITY_PERMISSIONS, Catalog, user_roles
from keel.identity.models import User
from keel.identity.passwords import PasswordRejected, check_policy
from keel.identity.service import (
    create_tenant,
    create_user,
    disable_user,
    find_tenant,
    list_tenants,
    list_users,
    normalize_email,
    prepare_password,
    set_roles,
    sign_out_everywhere,
)
from keel.identity.setup import setup_link
from keel.identity.throttle import (
    LoginAttempt,
    account_locks,
    locks_in_force,
    unlock,
    unlock_address,
)

__all__ = ["tenant_cli", "user_cli"]

T = TypeVar("T")
# The CLI acts as the system: it checks role names, not the caller's rights, so the built-in
# role names (which every catalog shares) are all it needs.
_CATALOG = Catalog(IDENTITY_PERMISSIONS)


def _user_data(user: User) -> dict[str, object]:
    return {
        "id": user.id,
        "email": user.email,
        "display_name": user.display_name,
        "status": user.status,
        "tenant_id": user.tenant_id,
        "created_at": user.created_at.isoformat(),
        "last_login_at": user.last_login_at.isoformat() if user.last_login_at else None,
    }


async def _disable_recorded(session: AsyncSession, email: str, config: Config) -> User:
    user = await disable_user(session, email, config=config)
    await record(
        session,
        "user.disable",
        resource=("user", user.id),
        after={"status": user.status},
        tenant_id=user.tenant_id,
    )
    return user


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
def create(  # noqa: PLR0917 - one parameter per option
    email: Annotated[str, typer.Option(help="The user's email (their sign-in name).")],
    display_name: Annotated[
        str | None, typer.Option(help="Name shown in the console (default: from email).")
    ] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from stdin.")
    ] = False,
    role: Annotated[
        list[str] | None,
        typer.Option(
            "--role",
            help="A role to give (repeatable): owner, admin, operator, viewer or a custom "
            "role. Default: owner for the first user, viewer after.",
        ),
    ] = None,
    tenant: Annotated[
        str | None,
        typer.Option(
            help="Tenant (slug or id) the user belongs to. Default: none "
            "(a deployment-level account)."
        ),
    ] = None,
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create an active user with a password (asked for, never an argument)."""
    config = load_config(data_dir=data_dir)
    password = _read_password(password_stdin, email)
    password_hash = run(prepare_password(password, email=email))

    async def work(session: AsyncSession) -> dict[str, object]:
        tenant_id = (await find_tenant(session, None, tenant)).id if tenant else None
        first = not await session.scalar(select(func.count()).select_from(User))
        user = await create_user(
            session,
            email=email,
            password_hash=password_hash,
            display_name=display_name,
            tenant_id=tenant_id,
        )
        roles = role or (["owner"] if first else ["viewer"])
        held = await set_roles(session, _CATALOG, None, user, roles, config=config)
        await record(
            session,
            "user.create",
            resource=("user", user.id),
            after={"email": user.email, "roles": held, "tenant_id": tenant_id},
            tenant_id=tenant_id,
        )
        return {**_user_data(user), "roles": held}

    data = run(in_cli_transaction(config, work))
    if as_json:
        print_json(data)
    else:
        out.print(
            f"Created user {data['email']} ({data['id']}) with role(s) "
            f"{', '.join(str(r) for r in data['roles'])}"  # type: ignore[attr-defined]
            + (f" in tenant {tenant}." if tenant else "."),
            highlight=False,
            markup=False,
        )


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
                "roles": await user_roles(session, user.id),
                "locked_until": locks[user.email].isoformat() if user.email in locks else None,
            }
            for user in users
        ]

    rows = run(in_cli_transaction(config, work))
    if as_json:
        print_json(rows)
        return
    if not rows:
        out.print("No users.")
        return
    table = Table(box=None, header_style="bold")
    for column in (
        "email",
        "display name",
        "roles",
        "status",
        "created",
        "last login",
        "locked",
        "id",
    ):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            escape(str(row["email"])),
            escape(str(row["display_name"])),
            escape(", ".join(row["roles"])),  # type: ignore[arg-type]
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
        return _user_data(await _disable_recorded(session, email, config))

    data = run(in_cli_transaction(config, work))
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
        return await sign_out_everywhere(session, email, config=config)

    ended = run(in_cli_transaction(config, work))
    address = normalize_email(email)
    if as_json:
        print_json({"email": address, "sessions_ended": ended})
    else:
        out.print(f"Ended {ended} session(s) of {address}.", markup=False)


@group.command("unlock")
def unlock_(
    email: Annotated[
        str | None, typer.Argument(help="Email of the locked-out user.", show_default=False)
    ] = None,
    client: Annotated[
        str | None,
        typer.Option("--address", help="Lift a client address's lock instead (IPv6: its /64)."),
    ] = None,
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Lift a login lockout now instead of waiting for it to expire."""
    if (email is None) == (client is None):
        fail("name an email or --address, not both", hint="keel user locks lists them")
    config = load_config(data_dir=data_dir)

    async def work(session: AsyncSession) -> bool:
        if client is not None:
            return await unlock_address(session, client)
        return await unlock(session, str(email))

    was_locked = run(in_cli_transaction(config, work))
    address = normalize_email(email) if email is not None else str(client)
    if as_json:
        print_json({"email": address, "was_locked": was_locked})
    else:
        out.print(
            f"Unlocked {address}." if was_locked else f"{address} was not locked.",
            highlight=False,
            markup=False,
        )


@group.command("locks")
def locks(data_dir: DataDirOption = None, as_json: JsonOption = False) -> None:
    """List login lockouts in force, of accounts and of client addresses."""
    config = load_config(data_dir=data_dir)

    async def work(session: AsyncSession) -> list[tuple[str, str, datetime]]:
        return await locks_in_force(session)

    found = run(in_cli_transaction(config, work))
    rows = [{"kind": k, "who": w, "locked_until": u.isoformat()} for k, w, u in found]
    if as_json:
        print_json(rows)
        return
    if not rows:
        out.print("No lockouts in force.")
        return
    table = Table(box=None, header_style="bold")
    for column in ("kind", "account or address", "locked until"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(row["kind"], escape(row["who"]), row["locked_until"][:19])
    out.print(table)


@group.command("prune-attempts")
def prune_attempts_(
    days: Annotated[int, typer.Option(min=1, max=3650, help="Keep this many days.")] = 90,
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Delete recorded login attempts older than --days (done daily by the server too)."""
    config = load_config(data_dir=data_dir)

    async def work(session: AsyncSession) -> int:
        result = await session.execute(
            delete(LoginAttempt).where(LoginAttempt.at < datetime.now(UTC) - timedelta(days=days))
        )
        return int(getattr(result, "rowcount", 0) or 0)

    pruned = run(in_cli_transaction(config, work))
    if as_json:
        print_json({"pruned": pruned, "kept_days": days})
    else:
        out.print(f"Pruned {pruned} login attempt(s) older than {days} days.")


tenants = typer.Typer(help="Manage tenants.", no_args_is_help=True)


@tenants.command("create")
def tenant_create(
    slug: Annotated[str, typer.Argument(help="Short unique name (a-z, 0-9, '-').")],
    name: Annotated[str | None, typer.Option(help="Display name (default: the slug).")] = None,
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create a tenant."""
    config = load_config(data_dir=data_dir)

    async def work(session: AsyncSession) -> dict[str, str]:
        row = await create_tenant(session, slug=slug, name=name)
        await record(
            session,
            "tenant.create",
            resource=("tenant", row.id),
            after={"slug": row.slug, "name": row.name},
            tenant_id=row.id,
        )
        return {"id": row.id, "slug": row.slug, "name": row.name}

    data = run(in_cli_transaction(config, work))
    if as_json:
        print_json(data)
    else:
        out.print(f"Created tenant {data['slug']} ({data['id']}).", highlight=False, markup=False)


@tenants.command("list")
def tenant_list(data_dir: DataDirOption = None, as_json: JsonOption = False) -> None:
    """List tenants."""
    config = load_config(data_dir=data_dir)

    async def work(session: AsyncSession) -> list[dict[str, str]]:
        rows = await list_tenants(session, None, limit=1000)
        return [{"id": r.id, "slug": r.slug, "name": r.name} for r in rows]

    rows = run(in_cli_transaction(config, work))
    if as_json:
        print_json(rows)
        return
    if not rows:
        out.print("No tenants.")
        return
    table = Table(box=None, header_style="bold")
    for column in ("slug", "name", "id"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(escape(row["slug"]), escape(row["name"]), row["id"])
    out.print(table)


def tenant_cli() -> typer.Typer:
    """The `keel tenant` command group."""
    return tenants


def user_cli() -> typer.Typer:
    """The `keel user` command group."""
    return group
