"""`keel settings list|get|set|unset|history|rollback`: operate runtime settings.

Secret values are never printed; `set KEY -` reads the value from stdin so it stays out of
the shell's history.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.markup import escape
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncSession

from keel.audit.system import as_cli
from keel.core.clitools import DataDirOption, JsonOption, fail, load_config, out, print_json, run
from keel.core.config import Config
from keel.core.database import Database
from keel.core.keyring import Keyring, lazy_keyring
from keel.settings import service
from keel.settings.api import setting_data
from keel.settings.models import GLOBAL
from keel.settings.spec import Setting, declared

__all__ = ["settings_cli"]

T = TypeVar("T")
group = typer.Typer(
    help="Runtime settings: list, get, set, unset, history, rollback.", no_args_is_help=True
)
KeyArgument = Annotated[str, typer.Argument(help="The setting's key, e.g. jobs.prune_interval.")]
TenantOption = Annotated[
    str | None, typer.Option("--tenant", help="A tenant's override (per-tenant settings only).")
]
ReasonOption = Annotated[
    str | None, typer.Option("--reason", help="Why (kept in the history and audit trail).")
]


async def _with(
    config: Config,
    work: Callable[[Database, Callable[[], Awaitable[Keyring]]], Awaitable[T]],
) -> T:
    """`as_cli`, with the keyring loaded only if `work` asks for it (a secret)."""

    async def with_keyring(db: Database) -> T:
        return await work(db, lazy_keyring(config, db))

    return await as_cli(config, with_keyring)


async def _store(db: Database, keyring: Callable[[], Awaitable[Keyring]]) -> service.SettingsStore:
    store = service.SettingsStore(db, keyring)
    await store.reload()
    return store


async def _data(
    db: Database, keyring: Callable[[], Awaitable[Keyring]], setting: Setting[Any], tenant: Any
) -> dict[str, Any]:
    store = await _store(db, keyring)
    async with db.session() as session:
        last = (await service.last_changes(session, tenant or GLOBAL)).get(setting.key)
    return setting_data(store, setting, tenant=tenant, last=last)


def _show(data: dict[str, Any]) -> None:
    out.print(
        f"{data['key']} = {escape(repr_value(data['value']))}  [{data['source']}]",
        highlight=False,
    )


def repr_value(value: Any) -> str:
    """A value as the CLI prints it."""
    import json

    return value if isinstance(value, str) else json.dumps(value)


def _tenant(tenant: str | None) -> str | None:
    if tenant is not None and not 1 <= len(tenant) <= 36:
        fail(
            "--tenant must be a tenant id of 1 to 36 characters",
            hint="omit it for the deployment-wide value",
            code=2,
        )
    return tenant


def _reason(reason: str | None) -> str:
    if reason is None or not reason.strip():
        fail("a reason is required", hint='add --reason "why this change"', code=2)
    return reason


@group.command("list")
def list_(data_dir: DataDirOption = None, as_json: JsonOption = False) -> None:
    """Every setting with its value (secrets masked) and where it comes from.

    A restart_required setting waits for a restart per process: the API's list and each
    process's /readyz say whether that process has one pending; this command cannot."""
    config = load_config(data_dir=data_dir)

    async def work(db: Database, keyring: Callable[[], Awaitable[Keyring]]) -> list[Any]:
        store = await _store(db, keyring)
        async with db.session() as session:
            last = await service.last_changes(session, GLOBAL)
        return [
            setting_data(store, setting, last=last.get(key))
            for key, setting in sorted(declared().items())
        ]

    rows = run(_with(config, work))
    if as_json:
        print_json(rows)
        return
    table = Table(box=None, header_style="bold")
    for column in ("key", "value", "source", "type", "restart", "description"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            row["key"],
            escape(repr_value(row["value"])),
            row["source"],
            row["type"],
            "required" if row["restart_required"] else "",
            escape(row["description"][:60]),
        )
    out.print(table if rows else "No settings are declared.")


@group.command("get")
def get(
    key: KeyArgument,
    tenant: TenantOption = None,
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """One setting: its value (secret masked), source, default and last change."""
    tenant = _tenant(tenant)
    config = load_config(data_dir=data_dir)

    async def work(db: Database, keyring: Callable[[], Awaitable[Keyring]]) -> dict[str, Any]:
        return await _data(db, keyring, service.lookup(key), tenant)

    data = run(_with(config, work))
    if as_json:
        print_json(data)
    else:
        _show(data)


def _change(
    key: str,
    tenant: str | None,
    data_dir: Any,
    as_json: bool,
    write: Callable[[AsyncSession, Setting[Any], Keyring | None], Awaitable[Any]],
) -> None:
    _tenant(tenant)
    config = load_config(data_dir=data_dir)

    async def work(db: Database, keyring: Callable[[], Awaitable[Keyring]]) -> dict[str, Any]:
        setting = service.lookup(key)
        ring = await keyring() if setting.secret else None
        await service.write(db, lambda session: write(session, setting, ring))
        return await _data(db, keyring, setting, tenant)

    data = run(_with(config, work))
    if as_json:
        print_json(data)
    else:
        _show(data)


@group.command("set")
def set_(  # noqa: PLR0917 - one parameter per argument and option
    key: KeyArgument,
    value: Annotated[str, typer.Argument(help="The new value; `-` reads it from stdin.")],
    reason: ReasonOption = None,
    tenant: TenantOption = None,
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Override a setting (validated, audited, kept in its history)."""
    why = _reason(reason)
    if value == "-":
        value = sys.stdin.read().rstrip("\r\n")
    _change(
        key,
        tenant,
        data_dir,
        as_json,
        lambda session, setting, ring: service.set_value(
            session, setting, value, reason=why, tenant_id=tenant, keyring=ring
        ),
    )


@group.command("unset")
def unset(
    key: KeyArgument,
    reason: ReasonOption = None,
    tenant: TenantOption = None,
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Remove a setting's override: back to the environment or the default."""
    why = _reason(reason)
    _change(
        key,
        tenant,
        data_dir,
        as_json,
        lambda session, setting, ring: service.unset_value(
            session, setting, reason=why, tenant_id=tenant, keyring=ring
        ),
    )


@group.command("rollback")
def rollback_(  # noqa: PLR0917 - one parameter per argument and option
    key: KeyArgument,
    change_id: Annotated[str, typer.Argument(help="The history entry whose value to restore.")],
    reason: ReasonOption = None,
    tenant: TenantOption = None,
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Set the value an earlier change left (recorded as a new change)."""
    why = _reason(reason)
    _change(
        key,
        tenant,
        data_dir,
        as_json,
        lambda session, setting, ring: service.rollback(
            session, setting, change_id, reason=why, tenant_id=tenant, keyring=ring
        ),
    )


@group.command("history")
def history(
    key: KeyArgument,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Most entries shown.")] = 50,
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """A setting's changes, newest first (secret values masked)."""
    config = load_config(data_dir=data_dir)

    async def work(db: Database, _keyring: Callable[[], Awaitable[Keyring]]) -> list[Any]:
        setting = service.lookup(key)
        async with db.session() as session:
            rows = await service.history(session, key, limit=limit)
        return [service.change_data(setting, row) for row in rows]

    rows = run(_with(config, work))
    if as_json:
        print_json(rows)
        return
    table = Table(box=None, header_style="bold")
    for column in ("id", "at", "action", "tenant", "before", "after", "by", "reason"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            row["id"],
            row["at"][:19],
            row["action"],
            row["tenant"] or "",
            escape(repr_value(row["before"])) if row["had_override_before"] else "-",
            escape(repr_value(row["after"])) if row["has_override_after"] else "-",
            escape(row["actor"] or ""),
            escape(row["reason"][:60]),
        )
    out.print(table if rows else "No changes.")


def settings_cli() -> typer.Typer:
    """The `keel settings` command group."""
    return group
