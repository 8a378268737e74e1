"""The `keel` command.

Human-readable output on a terminal, `--json` for machines. A failure prints one line naming
the problem (and a hint) on stderr and exits non-zero; never a stack trace for a user error.
"""

from __future__ import annotations

import asyncio
import errno
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from keel._version import __version__
from keel.core.clitools import (
    DataDirOption,
    JsonOption,
    err,
    fail,
    load_config,
    out,
    print_json,
    run,
)
from keel.core.config import Config
from keel.core.errors import KeelError, StartupError

__all__ = ["app", "main"]

app = typer.Typer(
    name="keel",
    help="Keel: the production kernel for Python web services.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
db_app = typer.Typer(help="Database migrations.", no_args_is_help=True)
config_app = typer.Typer(help="Inspect the effective configuration.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(config_app, name="config")


# --- keel version ----------------------------------------------------------------------------
@app.command()
def version(as_json: JsonOption = False) -> None:
    """Print Keel's version."""
    if as_json:
        print_json({"version": __version__, "python": sys.version.split()[0]})
    else:
        out.print(f"keel {__version__}", highlight=False)


# --- keel serve ------------------------------------------------------------------------------
@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="Address to bind [env: KEEL_HOST; default 127.0.0.1].")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port to bind [env: KEEL_PORT; default 8000].")
    ] = None,
    data_dir: DataDirOption = None,
    log_level: Annotated[
        str | None, typer.Option(help="debug, info, warning or error [env: KEEL_LOG_LEVEL].")
    ] = None,
    no_worker: Annotated[
        bool,
        typer.Option(
            "--no-worker",
            help="Do not run jobs in this process (run `keel worker` elsewhere) "
            "[env: KEEL_WORKER_IN_PROCESS=false].",
        ),
    ] = False,
) -> None:
    """Run the Keel server (API, pages, every module and a job worker) until Ctrl-C or SIGTERM.

    On SQLite the database in the data directory is created and migrated automatically; on
    PostgreSQL run `keel db upgrade` first. In-flight requests get `KEEL_SHUTDOWN_GRACE`
    seconds to finish when stopping.
    """
    import uvicorn

    from keel.app import create_app
    from keel.observability.logging import configure_logging, get_logger

    config = load_config(
        host=host,
        port=port,
        data_dir=data_dir,
        log_level=log_level,
        worker_in_process=False if no_worker else None,
    )
    configure_logging(config)
    logger = get_logger("keel.cli")
    _require_free_port(config.host, config.port)
    run(_preflight(config))
    base_url = config.public_url or f"http://{_url_host(config.host)}:{config.port}"
    link = run(_first_setup_link(config, base_url))
    if link is not None:
        # Straight to the terminal, not the structured log: log files and aggregators must
        # never hold the one-time secret.
        err.print(
            "\nNo account exists yet. Create the first one (the link works once, for 1 hour):"
            f"\n  {link}\n",
            markup=False,
            highlight=False,
        )
    if not config.bind_is_loopback and not config.is_https:
        logger.warning(
            "listening on a non-loopback address without HTTPS",
            host=config.host,
            hint="set KEEL_PUBLIC_URL=https://… behind a TLS proxy, or bind 127.0.0.1",
        )
    # The preflight brought the schema to head; the app only has to verify it.
    application = create_app(
        config.model_copy(update={"auto_migrate": False}), configure_logs=False
    )
    server = uvicorn.Server(
        uvicorn.Config(
            application,
            host=config.host,
            port=config.port,
            proxy_headers=False,  # Keel's guard decides whom to believe (KEEL_TRUSTED_PROXIES)
            server_header=False,
            access_log=False,
            log_config=None,
            lifespan="on",
            timeout_graceful_shutdown=config.shutdown_grace,
        )
    )
    logger.info(
        "serving",
        url=f"http://{_url_host(config.host)}:{config.port}",
        database=application.state.keel.db.display_url,
    )
    # uvicorn re-raises the stop signal after its graceful shutdown; a no-op handler lets a
    # requested stop end with exit status 0 instead of dying by that signal.
    for stop in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop, _ignore_signal)
    server.run()
    if not server.started:
        fail("the server did not start (see the log above)", code=3)


def _require_free_port(host: str, port: int) -> None:
    """Fail in one line, before migrating or printing a setup link, if the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host.strip("[]"), port))
        except PermissionError:
            fail(
                f"not allowed to listen on {host}:{port}",
                hint="ports below 1024 need privileges; use --port 8000 behind a proxy",
            )
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                fail(
                    f"{host}:{port} is already in use",
                    hint="stop the process using it, or pick another port with --port",
                )
            fail(f"cannot listen on {host}:{port}: {exc.strerror}", hint="check --host")


def _ignore_signal(_signum: int, _frame: Any) -> None:
    return None


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


async def _preflight(config: Config) -> None:
    """Migrate (SQLite) or check migrations (PostgreSQL), and check the master key can be
    had (token signing keys need it), before binding the port."""
    from keel.core.database import Database
    from keel.core.keyring import load_master_key
    from keel.core.migrate import prepare
    from keel.deps.spec import apply_configuration

    if config.dialect == "postgresql":
        load_master_key(config)  # raises a one-line StartupError with its hint
    db = Database(config)
    try:
        # _locations() imports the modules, so dependencies declared in code are known.
        await prepare(db, auto_migrate=config.should_auto_migrate, locations=_locations())
    finally:
        await db.dispose()
    apply_configuration(config.deps)  # a bad `deps` setting stops here, in one line


async def _first_setup_link(config: Config, base_url: str) -> str | None:
    from keel.core.database import Database
    from keel.identity.setup import setup_link

    db = Database(config)
    try:
        return await setup_link(db, base_url)
    finally:
        await db.dispose()


def _locations() -> tuple[Path, ...]:
    from keel.core.modules import discover_modules, migration_locations

    try:
        return migration_locations(discover_modules())
    except KeelError as exc:
        fail(exc.detail, hint=exc.hint)


# --- keel db ---------------------------------------------------------------------------------
@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[
        str, typer.Argument(help="Target revision (default: every branch to its head).")
    ] = "heads",
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Apply pending migrations (safe to run again: does nothing when at head)."""
    from keel.core.database import Database
    from keel.core.migrate import first_line, migration_state, upgrade

    config = load_config(data_dir=data_dir)

    async def _go() -> tuple[tuple[str, ...], tuple[str, ...]]:
        db = Database(config)
        try:
            locations = _locations()
            before = (await migration_state(db, locations)).current
            after = (await upgrade(db, revision, locations)).current
            return before, after
        except KeelError:
            raise
        except Exception as exc:
            raise StartupError(
                f"migration failed on {db.display_url}: {first_line(exc)}",
                hint="nothing was changed if the database supports transactional DDL",
            ) from exc
        finally:
            await db.dispose()

    before, after = run(_go())
    if as_json:
        print_json({"before": list(before), "after": list(after), "changed": before != after})
    elif before == after:
        out.print(f"Already at {', '.join(after)}; nothing to do.", highlight=False)
    else:
        was = ", ".join(before) or "empty"
        out.print(f"Migrated {was} → {', '.join(after)}.", highlight=False)


@db_app.command("current")
def db_current(data_dir: DataDirOption = None, as_json: JsonOption = False) -> None:
    """Print the database's migration revision and whether it is at head."""
    from keel.core.database import Database
    from keel.core.migrate import MigrationState, first_line, migration_state

    config = load_config(data_dir=data_dir)

    async def _go() -> MigrationState:
        db = Database(config)
        try:
            return await migration_state(db, _locations())
        except KeelError:
            raise
        except Exception as exc:
            raise StartupError(
                f"cannot read the database at {db.display_url}: {first_line(exc)}",
                hint="check KEEL_DATABASE_URL (`keel doctor`)",
            ) from exc
        finally:
            await db.dispose()

    state = run(_go())
    if as_json:
        print_json(
            {"current": list(state.current), "heads": list(state.heads), "at_head": state.at_head}
        )
    else:
        current = ", ".join(state.current) or "(empty: no migrations applied)"
        suffix = " (head)" if state.at_head else f" — head is {', '.join(state.heads)}"
        out.print(f"{current}{suffix}", highlight=False)


# --- keel config -----------------------------------------------------------------------------
@config_app.command("show")
def config_show(data_dir: DataDirOption = None, as_json: JsonOption = False) -> None:
    """Print the effective configuration, secrets redacted."""
    config = load_config(data_dir=data_dir)
    data = config.redacted()
    if as_json:
        print_json(data)
        return
    table = Table(show_header=True, header_style="bold", box=None)
    table.add_column("setting", no_wrap=True)
    table.add_column("value", overflow="fold")
    table.add_column("environment variable", no_wrap=True)
    for name, value in data.items():
        shown = "" if value is None else ", ".join(value) if isinstance(value, list) else str(value)
        table.add_row(name, escape(shown), f"KEEL_{name.upper()}")
    out.print(table)


# --- keel keys -------------------------------------------------------------------------------
keys_app = typer.Typer(help="Encryption keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("rotate")
def keys_rotate(
    only: Annotated[
        str | None,
        typer.Option(help="Rotate only `data` keys or only token `signing` keys."),
    ] = None,
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Make new keys current: the data key (data sealed with older keys stays readable) and
    the token signing key (tokens it signed stay valid until they expire)."""
    from datetime import timedelta

    from keel.core.database import Database
    from keel.core.keyring import Keyring, load_master_key
    from keel.core.migrate import prepare
    from keel.identity.tokens import SigningKeys

    if only not in (None, "data", "signing"):
        fail(f"--only must be data or signing, not {only!r}")
    config = load_config(data_dir=data_dir)

    async def _go() -> dict[str, object]:
        db = Database(config)
        try:
            await prepare(db, auto_migrate=config.should_auto_migrate, locations=_locations())
            keyring = Keyring(load_master_key(config))
            await keyring.load(db)
            result: dict[str, object] = {}
            if only in (None, "data"):
                result["data_key"] = await keyring.rotate(db)
                result["data_keys"] = len(keyring.key_ids)

            async def ring() -> Keyring:
                return keyring

            if only in (None, "signing"):
                window = timedelta(
                    minutes=config.access_token_minutes, seconds=config.jwt_leeway_seconds
                )
                signing = SigningKeys(db, keyring=ring, window=window)
                result["signing_key"] = await signing.rotate()
                result["published_signing_keys"] = len(signing.public)
            return result
        finally:
            await db.dispose()

    result = run(_go())
    if as_json:
        print_json(result)
        return
    if "data_key" in result:
        out.print(
            f"New data key {result['data_key']} is current "
            f"({result['data_keys']} keys in the keyring)."
        )
    if "signing_key" in result:
        out.print(
            f"New signing key {result['signing_key']} signs tokens from now on "
            f"({result['published_signing_keys']} published in the JWKS)."
        )


# --- keel doctor -----------------------------------------------------------------------------
@app.command()
def doctor(data_dir: DataDirOption = None, as_json: JsonOption = False) -> None:
    """Check the configuration, data directory, database, migrations and Redis."""
    from keel.core.doctor import diagnose

    config = load_config(data_dir=data_dir)
    results = asyncio.run(diagnose(config))
    if as_json:
        print_json([result.as_dict() for result in results])
    else:
        for result in results:
            mark = "[green]ok[/]  " if result.ok else "[red]FAIL[/]"
            out.print(f"{mark} {result.name}: {result.detail}", highlight=False)
            if result.hint and not result.ok:
                out.print(f"      [dim]hint:[/] {result.hint}", highlight=False)
    if not all(result.ok for result in results):
        raise typer.Exit(1)


def add_module_commands(commands: list[tuple[str, Callable[[], typer.Typer]]]) -> None:
    """Attach module CLIs (`keel <name> …`)."""
    for name, factory in commands:
        app.add_typer(factory(), name=name)


def main() -> None:
    """Entry point of the `keel` console script."""
    from keel.app import builtin_modules
    from keel.core.modules import discover_modules

    try:
        modules = [*builtin_modules(), *discover_modules()]
    except KeelError as exc:
        err.print(f"[bold red]keel: error:[/] {exc.detail}", highlight=False)
        sys.exit(1)
    commands = [(m.cli_name or m.name, m.cli) for m in modules if m.cli is not None]
    add_module_commands([*commands, *(group for m in modules for group in m.more_cli)])
    app()
