"""A change committed in one process reaches another Keel process within 1 s: through
PostgreSQL LISTEN, through Redis, and through the version poll when neither carries it."""

from __future__ import annotations

from pathlib import Path

import pytest

from keel import Config
from tests.conftest import TEST_MASTER_KEY
from tests.settings.propagation import measure

pytestmark = pytest.mark.slow


def _config(tmp_path: Path, url: str, **extra: object) -> Config:
    return Config(
        data_dir=tmp_path / "data",
        database_url=url,
        master_key=TEST_MASTER_KEY,
        auto_migrate=True,
        log_format="json",
        worker_in_process=False,
        **extra,
    )


def _env(config: Config, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "KEEL_DATABASE_URL": config.effective_database_url,
        "KEEL_DATA_DIR": str(tmp_path / "data"),
        "KEEL_MASTER_KEY": TEST_MASTER_KEY,
        "KEEL_AUTO_MIGRATE": "false",
        "KEEL_WORKER_IN_PROCESS": "false",
        "KEEL_LOG_LEVEL": "warning",
        "KEEL_CONFIG_FILE": str(tmp_path / "absent.toml"),
        **extra,
    }


async def test_postgres_listen_carries_a_change_within_a_second(
    postgres_url: str, tmp_path: Path
) -> None:
    """On PostgreSQL without Redis, and with the poll slowed to 30 s, LISTEN/NOTIFY brings
    every change to the other process within 1 s."""
    config = _config(tmp_path, postgres_url, changes_poll_interval=30.0)
    delays = await measure(config, _env(config, tmp_path, KEEL_CHANGES_POLL_INTERVAL="30"))
    assert max(delays) < 1.0, delays


async def test_redis_carries_a_change_within_a_second(redis_url: str, tmp_path: Path) -> None:
    """On a shared SQLite file (no LISTEN) with the poll slowed to 30 s, Redis pub/sub brings
    every change to the other process within 1 s."""
    url = f"sqlite+aiosqlite:///{(tmp_path / 'shared.db').as_posix()}"
    config = _config(tmp_path, url, redis_url=redis_url, changes_poll_interval=30.0)
    env = _env(config, tmp_path, KEEL_REDIS_URL=redis_url, KEEL_CHANGES_POLL_INTERVAL="30")
    delays = await measure(config, env)
    assert max(delays) < 1.0, delays


async def test_the_version_poll_alone_converges(tmp_path: Path) -> None:
    """With neither LISTEN nor Redis (a shared SQLite file), the version poll every 0.2 s
    still brings every change to the other process within 1 s."""
    url = f"sqlite+aiosqlite:///{(tmp_path / 'shared.db').as_posix()}"
    config = _config(tmp_path, url, changes_poll_interval=0.2)
    delays = await measure(config, _env(config, tmp_path, KEEL_CHANGES_POLL_INTERVAL="0.2"))
    assert max(delays) < 1.0, delays
