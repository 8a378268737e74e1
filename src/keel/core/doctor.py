"""`keel doctor`: check that this configuration can run, and say how to fix what cannot."""

from __future__ import annotations

import asyncio
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from keel.core.config import Config, redact_url
from keel.core.database import Database
from keel.core.migrate import first_line, migration_state

__all__ = ["Diagnosis", "diagnose"]


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """The result of one check."""

    name: str
    ok: bool
    detail: str
    hint: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"name": self.name, "ok": self.ok, "detail": self.detail, "hint": self.hint}


def _data_dir(config: Config) -> Diagnosis:
    path = config.data_dir
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".doctor-"):
            pass
    except OSError as exc:
        return Diagnosis(
            "data directory",
            False,
            f"{path} is not writable ({exc.strerror})",
            hint="choose another with --data-dir or KEEL_DATA_DIR",
        )
    return Diagnosis("data directory", True, f"{path.resolve()} is writable")


async def _database(config: Config) -> list[Diagnosis]:
    try:
        db = Database(config)
    except Exception as exc:  # noqa: BLE001 - the doctor reports every failure, never raises
        return [Diagnosis("database", False, first_line(exc), getattr(exc, "hint", None))]
    sqlite_file = make_url(db.url).database if db.dialect == "sqlite" else None
    if sqlite_file and sqlite_file != ":memory:" and not Path(sqlite_file).exists():  # noqa: ASYNC240
        await db.dispose()
        return [Diagnosis("database", True, f"{sqlite_file} will be created by `keel serve`")]
    try:
        try:
            await asyncio.wait_for(db.ping(), config.database_timeout + 1)
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            return [
                Diagnosis(
                    "database",
                    False,
                    f"cannot reach {db.display_url}: {first_line(exc) or 'timeout'}",
                    hint="check KEEL_DATABASE_URL and that the server is running",
                )
            ]
        found = [Diagnosis("database", True, f"{db.dialect} at {db.display_url} answers")]
        state = await migration_state(db)
        if state.at_head:
            found.append(Diagnosis("migrations", True, f"at head ({', '.join(state.heads)})"))
        else:
            hint = (
                "`keel serve` applies them on SQLite"
                if config.should_auto_migrate
                else "run `keel db upgrade`"
            )
            detail = state.describe() + (
                " (applied at start)" if config.should_auto_migrate else ""
            )
            found.append(Diagnosis("migrations", config.should_auto_migrate, detail, hint))
        return found
    finally:
        await db.dispose()


async def _redis(config: Config) -> Diagnosis:
    assert config.redis_url is not None
    shown = redact_url(config.redis_url)
    try:
        import redis.asyncio as redis_asyncio
    except ModuleNotFoundError:
        return Diagnosis(
            "redis", False, "client not installed", hint="pip install 'keel-server[redis]'"
        )
    client = redis_asyncio.from_url(config.redis_url, socket_connect_timeout=2, socket_timeout=2)
    try:
        await client.ping()
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        return Diagnosis("redis", False, f"cannot reach {shown}: {first_line(exc)}")
    finally:
        await client.aclose()
    return Diagnosis("redis", True, f"{shown} answers")


def _exposure(config: Config) -> Diagnosis:
    if config.bind_is_loopback:
        return Diagnosis("exposure", True, f"binds {config.host} (this machine only)")
    if config.is_https:
        return Diagnosis("exposure", True, f"binds {config.host}; public URL is https")
    return Diagnosis(
        "exposure",
        False,
        f"binds {config.host} without an https public URL",
        hint="set KEEL_PUBLIC_URL=https://… behind a TLS proxy, or bind 127.0.0.1",
    )


async def diagnose(config: Config) -> list[Diagnosis]:
    """Run every check for `config`."""
    results = [Diagnosis("configuration", True, f"loaded (pid {os.getpid()})")]
    if config.dialect == "sqlite":
        results.append(_data_dir(config))
    results.extend(await _database(config))
    if config.redis_url:
        results.append(await _redis(config))
    results.append(_exposure(config))
    return results
