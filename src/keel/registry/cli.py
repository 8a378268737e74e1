"""`keel registry list|show|versions|diff|publish|rollback|archive`: the registry from the
command line, acting as the system (deployment-wide assets, or `--tenant`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.markup import escape
from rich.table import Table
from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from keel.audit.system import in_cli_transaction
from keel.core.clitools import DataDirOption, JsonOption, load_config, out, print_json, run
from keel.core.errors import NotFound
from keel.identity.models import Tenant
from keel.registry import service
from keel.registry.api import asset_data, transition_data, version_data
from keel.registry.diff import structural_diff, text_diffs
from keel.registry.kinds import get_kind
from keel.registry.models import Asset, Version, VersionState

__all__ = ["registry_cli"]

T = TypeVar("T")
group = typer.Typer(
    help="Versioned assets: list, show, versions, history, diff, publish, rollback, archive.",
    no_args_is_help=True,
)

KindArg = Annotated[str, typer.Argument(help="The asset kind (e.g. sql_query).")]
NameArg = Annotated[str, typer.Argument(help="The asset's name.")]
TenantOption = Annotated[
    str | None, typer.Option("--tenant", help="Act in this tenant (id or slug).")
]
ReasonOption = Annotated[str | None, typer.Option("--reason", help="Why (kept in the history).")]


async def _tenant_id(session: AsyncSession, tenant: str | None) -> str | None:
    if tenant is None:
        return None
    found = await session.scalar(
        select(Tenant).where(or_(Tenant.id == tenant, Tenant.slug == tenant))
    )
    if found is None:
        raise NotFound(f"no tenant {tenant!r}", hint="`keel tenants list` shows them")
    return found.id


async def _asset(
    session: AsyncSession, kind: str, name: str, tenant: str | None, *, lock: bool = False
) -> Asset:
    get_kind(kind)
    return await service.find_asset(
        session, kind, name, tenant_id=await _tenant_id(session, tenant), lock=lock
    )


def _plain(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _plain(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_plain(v) for v in data]
    return data.isoformat() if hasattr(data, "isoformat") else data


def _record(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _plain(v) for k, v in data.items()}


def _go(data_dir: Any, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    return run(in_cli_transaction(load_config(data_dir=data_dir), work))


@group.command("list")
def list_(
    kind: KindArg,
    tenant: TenantOption = None,
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """The assets of a kind, by name."""

    async def work(session: AsyncSession) -> list[dict[str, Any]]:
        get_kind(kind)
        scope = await _tenant_id(session, tenant)
        # unscoped: the CLI acts as the system; the tenant is chosen by --tenant.
        rows = await session.execute(
            select(Asset, Version.number)
            .outerjoin(Version, Version.id == Asset.head_id)
            .where(
                Asset.kind == kind,
                Asset.tenant_id.is_(None) if scope is None else Asset.tenant_id == scope,
            )
            .order_by(Asset.name)
        )
        return [_record(asset_data(asset, number)) for asset, number in rows]

    rows = _go(data_dir, work)
    if as_json:
        print_json(rows)
        return
    table = Table(box=None, header_style="bold")
    for column in ("name", "state", "published", "latest", "updated"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            escape(row["name"]),
            row["state"],
            str(row["published_version"] or "-"),
            str(row["latest_version"]),
            str(row["updated_at"])[:19],
        )
    out.print(table if rows else f"No {kind} assets.")


@group.command("show")
def show(
    kind: KindArg,
    name: NameArg,
    version: Annotated[int | None, typer.Option(help="This version (default: published).")] = None,
    tenant: TenantOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """An asset with its published version (or `--version N`), as JSON."""

    async def work(session: AsyncSession) -> dict[str, Any]:
        asset = await _asset(session, kind, name, tenant)
        # unscoped: the head of an asset found in the chosen tenant.
        head = await session.get(Version, asset.head_id) if asset.head_id else None
        shown = await service.get_version(session, asset, version) if version else head
        return _record(
            {
                **asset_data(asset, head.number if head else None),
                "version": version_data(shown) if shown else None,
            }
        )

    print_json(_go(data_dir, work))


@group.command("versions")
def versions(
    kind: KindArg,
    name: NameArg,
    tenant: TenantOption = None,
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """An asset's versions, newest first."""

    async def work(session: AsyncSession) -> list[dict[str, Any]]:
        asset = await _asset(session, kind, name, tenant)
        return [
            _plain(version_data(v, content=False)) for v in await service.versions(session, asset)
        ]

    rows = _go(data_dir, work)
    if as_json:
        print_json(rows)
        return
    table = Table(box=None, header_style="bold")
    for column in ("version", "state", "created", "by", "note"):
        table.add_column(column, overflow="fold")
    for row in rows:
        note = row["note"] or (f"rollback of {row['rollback_of']}" if row["rollback_of"] else "")
        table.add_row(
            str(row["number"]),
            row["state"],
            str(row["created_at"])[:19],
            escape(row["created_by"]),
            escape(note[:60]),
        )
    out.print(table)


@group.command("history")
def history_(
    kind: KindArg, name: NameArg, tenant: TenantOption = None, data_dir: DataDirOption = None
) -> None:
    """Who did what to an asset, when and why, as JSON."""

    async def work(session: AsyncSession) -> list[dict[str, Any]]:
        asset = await _asset(session, kind, name, tenant)
        return [_record(transition_data(row)) for row in await service.history(session, asset)]

    print_json(_go(data_dir, work))


@group.command("diff")
def diff(  # noqa: PLR0917 - typer takes options as parameters
    kind: KindArg,
    name: NameArg,
    from_: Annotated[int, typer.Argument(metavar="FROM", help="The older version.")],
    to: Annotated[int, typer.Argument(help="The newer version.")],
    tenant: TenantOption = None,
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """The differences between two versions: changed paths, then text diffs."""

    async def work(session: AsyncSession) -> dict[str, Any]:
        asset = await _asset(session, kind, name, tenant)
        old = await service.get_version(session, asset, from_)
        new = await service.get_version(session, asset, to)
        return {
            "from": from_,
            "to": to,
            "changes": structural_diff(old.data, new.data),
            "text": text_diffs(
                old.data, new.data, get_kind(kind).text_fields, (f"v{from_}", f"v{to}")
            ),
        }

    result = _go(data_dir, work)
    if as_json:
        print_json(result)
        return
    changes = result["changes"]
    for entry in changes["added"]:
        out.print(f"+ {escape(entry['path'])}", highlight=False)
    for entry in changes["removed"]:
        out.print(f"- {escape(entry['path'])}", highlight=False)
    for entry in changes["changed"]:
        out.print(f"~ {escape(entry['path'])}", highlight=False)
    for text in result["text"].values():
        out.print(escape(text), highlight=False, end="")
    if not any(changes.values()):
        out.print("No differences.")


@group.command("publish")
def publish(  # noqa: PLR0917 - typer takes options as parameters
    kind: KindArg,
    name: NameArg,
    version: Annotated[int, typer.Argument(help="The version to publish.")],
    reason: ReasonOption = None,
    validate: Annotated[bool, typer.Option(help="Validate a draft first.")] = True,
    expected_head: Annotated[
        int | None,
        typer.Option(
            help="The published version you expect to replace (0: none); default: the one "
            "published when the command starts. Another publish in between is refused."
        ),
    ] = None,
    tenant: TenantOption = None,
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Publish a version (validating a draft first, unless --no-validate), refused if
    another version was published since the command read the head."""

    async def read_head(session: AsyncSession) -> int | None:
        asset = await _asset(session, kind, name, tenant)
        # unscoped: the head of an asset found in the chosen tenant.
        head = await session.get(Version, asset.head_id) if asset.head_id else None
        return head.number if head is not None else None

    seen = _go(data_dir, read_head) if expected_head is None else (expected_head or None)

    async def work(session: AsyncSession) -> dict[str, Any]:
        asset = await _asset(session, kind, name, tenant, lock=True)
        current = await service.get_version(session, asset, version)
        if validate and current.state == VersionState.DRAFT:
            checked = await service.validate(session, asset, version)
            if checked.problems:
                return {"invalid": checked.problems}
        published = await service.publish(
            session, asset, version, reason=reason, expected_head=seen, check_head=True
        )
        return _record(version_data(published, content=False))

    result = _go(data_dir, work)
    if "invalid" in result:
        from keel.core.clitools import fail

        fail(
            f"version {version} is invalid: {'; '.join(result['invalid'])}",
            hint="fix it in a new draft",
        )
    if as_json:
        print_json(result)
    else:
        out.print(f"{kind} {escape(name)}: version {version} is published.", highlight=False)


@group.command("rollback")
def rollback(  # noqa: PLR0917 - typer takes options as parameters
    kind: KindArg,
    name: NameArg,
    to: Annotated[int, typer.Argument(help="The formerly published version to restore.")],
    reason: ReasonOption = None,
    tenant: TenantOption = None,
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Publish an earlier version's content as a new version."""

    async def work(session: AsyncSession) -> dict[str, Any]:
        asset = await _asset(session, kind, name, tenant, lock=True)
        return _record(
            version_data(await service.rollback(session, asset, to, reason=reason), content=False)
        )

    result = _go(data_dir, work)
    if as_json:
        print_json(result)
    else:
        out.print(
            f"{kind} {escape(name)}: version {result['number']} (a copy of {to}) is published.",
            highlight=False,
        )


@group.command("archive")
def archive(  # noqa: PLR0917 - typer takes options as parameters
    kind: KindArg,
    name: NameArg,
    reason: ReasonOption = None,
    force: Annotated[bool, typer.Option(help="Archive although others reference it.")] = False,
    tenant: TenantOption = None,
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Archive an asset (refused while others reference it, unless --force --reason)."""

    async def work(session: AsyncSession) -> list[dict[str, Any]]:
        asset = await _asset(session, kind, name, tenant, lock=True)
        return await service.archive(session, asset, reason=reason, force=force)

    left = _go(data_dir, work)
    if as_json:
        print_json({"archived": True, "dangling_dependents": left})
        return
    out.print(f"{kind} {escape(name)} is archived.", highlight=False)
    for dependent in left:
        out.print(
            f"  still referenced by {dependent['kind']}/{escape(dependent['name'])}",
            highlight=False,
        )


def registry_cli() -> typer.Typer:
    """The `keel registry` command group."""
    return group
