"""`keel deps list|probe|incidents|maintenance`: the monitor from a shell, as the system
(every change audited like the API's)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any, TypeVar

import typer
from rich.markup import escape
from rich.table import Table
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from keel.audit.system import as_cli
from keel.core.clitools import DataDirOption, JsonOption, fail, load_config, out, print_json, run
from keel.core.config import Config
from keel.core.database import Database
from keel.core.errors import KeelError
from keel.deps.api import window_as_dict

__all__ = ["deps_cli"]

T = TypeVar("T")
group = typer.Typer(
    help="Dependencies and the status page: state, probes, incidents, maintenance.",
    no_args_is_help=True,
)
incidents = typer.Typer(help="Incidents: list, show, open, update, close, post-mortem.")
maintenance = typer.Typer(help="Maintenance windows: list, add, remove.")
incidents.info.no_args_is_help = True
maintenance.info.no_args_is_help = True
group.add_typer(incidents, name="incidents")
group.add_typer(maintenance, name="maintenance")

Impact = Annotated[
    str | None, typer.Option(help="none, minor, major or critical.", show_default=False)
]
IncidentId = Annotated[str, typer.Argument(help="The incident's id (`keel deps incidents list`).")]


def _config(data_dir: Any) -> Config:
    """The configuration, with its `deps` settings applied to the declarations."""
    from keel.deps.spec import apply_configuration

    config = load_config(data_dir=data_dir)
    try:
        apply_configuration(config.deps)
    except KeelError as exc:
        fail(exc.detail, hint=exc.hint, code=2)
    return config


def _operate(
    config: Config,
    work: Callable[[AsyncSession], Awaitable[T]],
    *,
    hint: str,
) -> T:
    """Run `work` in one audited transaction; errors become one line with `hint`."""

    async def inner(db: Database) -> T:
        async with db.transaction() as session:
            return await work(session)

    try:
        return asyncio.run(as_cli(config, inner))
    except KeelError as exc:
        fail(exc.detail, hint=exc.hint or hint or None)


# --- list and probe --------------------------------------------------------------------------
def _policy(dep: Any) -> dict[str, Any]:
    from dataclasses import asdict

    from keel.core.config import redact_url

    probe = asdict(dep.probe) if dep.probe else None
    if probe is not None:
        probe["path"] = redact_url(probe["path"])  # an absolute probe URL may carry a token
    return {
        "base_url": redact_url(dep.base_url),
        "timeouts": asdict(dep.timeouts),
        "retry": asdict(dep.retry),
        "breaker": asdict(dep.breaker),
        "concurrency": asdict(dep.concurrency),
        "probe": probe,
        "probe_every": dep.probe_every,
        "public": asdict(dep.public) if dep.public else None,
    }


@group.command("list")
def list_(data_dir: DataDirOption = None, as_json: JsonOption = False) -> None:
    """Declared dependencies and Keel's own components: last probe, streak, open incident."""
    from keel.deps.models import ComponentState, ProbeResult
    from keel.deps.monitor import API, API_NAME, OWN_COMPONENTS
    from keel.deps.spec import declared

    config = _config(data_dir)

    async def work(db: Database) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        own = {API: API_NAME, **OWN_COMPONENTS}
        names = [*own, *sorted(declared())]
        async with db.session() as session:
            # unscoped: dependencies are deployment-wide.
            states = {s.component: s for s in await session.scalars(select(ComponentState))}
            for name in names:
                last = await session.scalar(
                    select(ProbeResult)
                    .where(ProbeResult.component == name)
                    .order_by(ProbeResult.at.desc())
                    .limit(1)
                )
                state = states.get(name)
                dep = declared().get(name)
                rows.append(
                    {
                        "name": name,
                        "kind": "keel" if name in own else "dependency",
                        "policy": _policy(dep) if dep else None,
                        "last_probe": None
                        if last is None
                        else {
                            "at": last.at.isoformat(),
                            "ok": last.ok,
                            "latency_ms": last.latency_ms,
                            "detail": last.detail,
                            "maintenance": last.maintenance,
                        },
                        "failing_streak": state.failures if state else 0,
                        "incident_id": state.incident_id if state else None,
                    }
                )
        return rows

    rows = run(as_cli(config, work, seal=False))
    if as_json:
        print_json(rows)
        return
    table = Table(box=None, header_style="bold")
    for column in ("name", "base url", "last probe", "state", "streak", "incident"):
        table.add_column(column, overflow="fold")
    for row in rows:
        last = row["last_probe"]
        table.add_row(
            escape(row["name"]),
            escape(row["policy"]["base_url"]) if row["policy"] else "(keel)",
            last["at"][:19] if last else "never",
            "no data"
            if last is None
            else ("ok" if last["ok"] else f"failing: {escape((last['detail'] or '')[:60])}"),
            str(row["failing_streak"]),
            row["incident_id"] or "",
        )
    out.print(table)


@group.command("probe")
def probe_(
    name: Annotated[str, typer.Argument(help="A dependency's name, or keel.database.")],
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Probe now and record the result like a scheduled probe (exit 1 when it fails)."""
    from keel.deps.monitor import API, probe_now
    from keel.deps.spec import declared, dependency

    config = _config(data_dir)
    if name in (API, "keel.workers"):
        fail(
            f"{name} cannot be probed from a shell: it is judged by the running service",
            hint="`keel deps list` shows its last result; `keel deps probe keel.database` works",
        )
    if name != "keel.database":
        try:
            name = dependency(name).name  # `image-gen` names the settings' `image_gen`
        except LookupError:
            known = ", ".join(["keel.database", *sorted(declared())])
            fail(f"no dependency {name!r} is declared", hint=f"known: {known}")
    result = run(as_cli(config, lambda db: probe_now(db, name)))
    if as_json:
        print_json(result)
    else:
        ms = f" in {result['ms']:.0f} ms" if result["ms"] is not None else ""
        verdict = "[green]ok[/]" if result["ok"] else "[red]FAILED[/]"
        out.print(
            f"{escape(name)}: {verdict}{ms} — {escape(result['detail'] or '')}", highlight=False
        )
        if result["opened_incident"]:
            out.print(f"Opened incident {result['opened_incident']}.", highlight=False)
    if not result["ok"]:
        raise typer.Exit(1)


# --- incidents -------------------------------------------------------------------------------
async def _shown(session: AsyncSession, incident: Any) -> dict[str, Any]:
    from keel.deps import service

    entries = await service.timelines(session, [incident.id])
    data = service.as_dict(incident, entries[incident.id])
    data["component"] = incident.component
    data["automatic"] = incident.automatic
    return data


def _print_incident(data: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(data)
        return
    out.print(
        f"[bold]{escape(data['title'])}[/] ({data['id']}) — {data['state']}, "
        f"impact {data['impact']}",
        highlight=False,
    )
    for entry in data["updates"]:
        out.print(
            f"  {entry['at'][:19]}  {entry['kind']:<10} {escape(entry['message'])}",
            highlight=False,
        )
    if data["postmortem"]:
        out.print(f"Post-mortem: {escape(data['postmortem'])}", highlight=False)


_NO_INCIDENT = "`keel deps incidents list` shows the incidents and their ids"


@incidents.command("list")
def incidents_list(
    state: Annotated[
        str | None, typer.Option(help="open or resolved (default: both).", show_default=False)
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Most incidents shown.")] = 50,
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Incidents, newest first."""
    from keel.deps.models import Incident

    if state not in (None, "open", "resolved"):
        fail(f"--state must be open or resolved, not {state!r}", code=2)
    config = _config(data_dir)

    async def work(session: AsyncSession) -> list[dict[str, Any]]:
        # unscoped: incidents are deployment-wide.
        query = select(Incident).order_by(Incident.opened_at.desc()).limit(limit)
        if state:
            query = query.where(Incident.state == state)
        return [await _shown(session, i) for i in await session.scalars(query)]

    rows = _operate(config, work, hint=_NO_INCIDENT)
    if as_json:
        print_json(rows)
        return
    table = Table(box=None, header_style="bold")
    for column in ("id", "opened", "state", "impact", "component", "title"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            row["id"],
            row["opened_at"][:19],
            row["state"],
            row["impact"],
            escape(row["component"] or ""),
            escape(row["title"]),
        )
    out.print(table if rows else "No incidents.")


@incidents.command("show")
def incidents_show(
    incident_id: IncidentId, data_dir: DataDirOption = None, as_json: JsonOption = False
) -> None:
    """One incident with its whole timeline."""
    from keel.deps.service import get_incident

    config = _config(data_dir)

    async def work(session: AsyncSession) -> dict[str, Any]:
        return await _shown(session, await get_incident(session, incident_id))

    _print_incident(_operate(config, work, hint=_NO_INCIDENT), as_json)


@incidents.command("open")
def incidents_open(  # noqa: PLR0917 - one parameter per option
    title: Annotated[str, typer.Argument(help="What users see, e.g. 'Slow uploads'.")],
    impact: Impact = "major",
    component: Annotated[
        str | None, typer.Option(help="The component's name, if one.", show_default=False)
    ] = None,
    message: Annotated[
        str | None, typer.Option(help="The first timeline entry (default: the title).")
    ] = None,
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Open an incident by hand."""
    from keel.deps.service import open_incident

    _impact(impact)
    config = _config(data_dir)

    async def work(session: AsyncSession) -> dict[str, Any]:
        incident = await open_incident(
            session, title=title, impact=impact or "major", component=component, message=message
        )
        return await _shown(session, incident)

    _print_incident(
        _operate(config, work, hint="impact is none, minor, major or critical"), as_json
    )


@incidents.command("update")
def incidents_update(
    incident_id: IncidentId,
    message: Annotated[str, typer.Argument(help="The update users see.")],
    impact: Impact = None,
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Add an update to an incident's timeline, optionally with a new impact."""
    from keel.deps.service import add_update

    _impact(impact)
    config = _config(data_dir)

    async def work(session: AsyncSession) -> dict[str, Any]:
        return await _shown(session, await add_update(session, incident_id, message, impact=impact))

    _print_incident(_operate(config, work, hint=_NO_INCIDENT), as_json)


@incidents.command("close")
def incidents_close(
    incident_id: IncidentId,
    message: Annotated[str, typer.Argument(help="The closing update users see.")] = "Resolved.",
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Resolve an open incident."""
    from keel.deps.service import resolve_incident

    config = _config(data_dir)

    async def work(session: AsyncSession) -> dict[str, Any]:
        return await _shown(session, await resolve_incident(session, incident_id, message))

    _print_incident(_operate(config, work, hint=_NO_INCIDENT), as_json)


@incidents.command("postmortem")
def incidents_postmortem(
    incident_id: IncidentId,
    text: Annotated[str, typer.Argument(help="The post-mortem (replaces an earlier one).")],
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Write an incident's post-mortem (every version stays in the timeline)."""
    from keel.deps.service import set_postmortem

    config = _config(data_dir)

    async def work(session: AsyncSession) -> dict[str, Any]:
        return await _shown(session, await set_postmortem(session, incident_id, text))

    _print_incident(_operate(config, work, hint=_NO_INCIDENT), as_json)


# --- maintenance -----------------------------------------------------------------------------
def _moment(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        fail(
            f"{option} {value!r} is not a date and time",
            hint="e.g. 2026-12-24T02:00+00:00",
            code=2,
        )
    if moment.tzinfo is None:
        fail(
            f"{option} {value!r} has no time zone offset",
            hint="e.g. 2026-12-24T02:00+09:00",
            code=2,
        )
    return moment


def _impact(impact: str | None) -> None:
    """Refuse an unknown --impact as a bad argument (exit 2) before touching anything."""
    from keel.deps.service import IMPACTS

    if impact is not None and impact not in IMPACTS:
        fail(
            f"impact must be one of {', '.join(IMPACTS)} (got {impact!r})",
            hint="--impact none, minor, major or critical",
            code=2,
        )


@maintenance.command("list")
def maintenance_list(data_dir: DataDirOption = None, as_json: JsonOption = False) -> None:
    """Maintenance windows, oldest first."""
    from keel.deps.models import Maintenance

    config = _config(data_dir)

    async def work(session: AsyncSession) -> list[dict[str, Any]]:
        # unscoped: maintenance windows are deployment-wide.
        found = await session.scalars(select(Maintenance).order_by(Maintenance.created_at))
        return [window_as_dict(w) for w in found]

    rows = _operate(config, work, hint="")
    if as_json:
        print_json(rows)
        return
    table = Table(box=None, header_style="bold")
    for column in ("id", "title", "component", "when"):
        table.add_column(column, overflow="fold")
    for row in rows:
        when = (
            f"{row['cron']} ({row['tz']}) for {row['minutes']} min"
            if row["cron"]
            else f"{row['starts_at'][:16]} to {row['ends_at'][:16]}"
        )
        table.add_row(
            row["id"], escape(row["title"]), escape(row["component"] or "all"), escape(when)
        )
    out.print(table if rows else "No maintenance windows.")


@maintenance.command("add")
def maintenance_add(  # noqa: PLR0917 - one parameter per option
    title: Annotated[str, typer.Argument(help="What users see, e.g. 'Database upgrade'.")],
    component: Annotated[
        str | None, typer.Option(help="One component's name (default: all).", show_default=False)
    ] = None,
    starts_at: Annotated[
        str | None, typer.Option(help="One-off: start, ISO 8601 with an offset.")
    ] = None,
    ends_at: Annotated[
        str | None, typer.Option(help="One-off: end, ISO 8601 with an offset.")
    ] = None,
    cron: Annotated[
        str | None, typer.Option(help="Recurring: a cron expression, e.g. '0 3 * * 0'.")
    ] = None,
    minutes: Annotated[
        int | None, typer.Option(min=1, max=10080, help="Recurring: the window's length.")
    ] = None,
    tz: Annotated[str, typer.Option(help="Recurring: the cron's time zone.")] = "UTC",
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Add a one-off (--starts-at, --ends-at) or recurring (--cron, --minutes) window."""
    from keel.deps.service import add_maintenance

    if cron is not None and (starts_at is not None or ends_at is not None):
        fail("give --cron or --starts-at/--ends-at, not both", code=2)
    starts, ends = _moment(starts_at, "--starts-at"), _moment(ends_at, "--ends-at")
    config = _config(data_dir)

    async def work(session: AsyncSession) -> dict[str, Any]:
        window = await add_maintenance(
            session,
            title=title,
            component=component,
            starts_at=starts,
            ends_at=ends,
            cron=cron,
            tz=tz,
            minutes=minutes,
        )
        return window_as_dict(window)

    data = _operate(
        config,
        work,
        hint="one-off: --starts-at … --ends-at …; recurring: --cron '0 3 * * *' --minutes 30",
    )
    if as_json:
        print_json(data)
    else:
        out.print(f"Added maintenance window {data['id']}.", highlight=False)


@maintenance.command("remove")
def maintenance_remove(
    window_id: Annotated[
        str, typer.Argument(help="The window's id (`keel deps maintenance list`).")
    ],
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Remove a maintenance window."""
    from keel.deps.service import remove_maintenance

    config = _config(data_dir)
    _operate(
        config,
        lambda session: remove_maintenance(session, window_id),
        hint="`keel deps maintenance list` shows the windows and their ids",
    )
    if as_json:
        print_json({"id": window_id, "removed": True})
    else:
        out.print(f"Removed maintenance window {window_id}.", highlight=False)


def deps_cli() -> typer.Typer:
    """The `keel deps` command group."""
    return group
