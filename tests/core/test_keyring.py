"""The keyring: sealed data survives rotation, and any tampering or wrong key is refused."""

from __future__ import annotations

import asyncio
import base64
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keel import Config
from keel.core.database import Database
from keel.core.errors import StartupError
from keel.core.keyring import DecryptionFailed, Keyring, load_master_key
from keel.core.migrate import upgrade


def new_master() -> str:
    """A fresh master key in its configured (base64url) form."""
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


@pytest.fixture
def db(migrated_db: Database) -> Database:
    """A migrated database."""
    return migrated_db


async def loaded(db: Database, master: str) -> Keyring:
    """A keyring over `db` with `master`, loaded."""
    keyring = Keyring(base64.urlsafe_b64decode(master))
    await keyring.load(db)
    return keyring


async def test_round_trip_and_rotation(db: Database) -> None:
    """Data sealed before a rotation still opens after it; new data uses the new key."""
    master = new_master()
    keyring = await loaded(db, master)
    old = keyring.encrypt(b"secret one", context=b"users:1")
    first_key = keyring.current_key_id
    second_key = await keyring.rotate(db)
    assert second_key != first_key
    new = keyring.encrypt(b"secret two", context=b"users:1")
    assert keyring.decrypt(old, context=b"users:1") == b"secret one"
    assert keyring.decrypt(new, context=b"users:1") == b"secret two"
    # Another process loading later knows both keys and uses the newest.
    other = await loaded(db, master)
    assert other.current_key_id == second_key
    assert other.decrypt(old, context=b"users:1") == b"secret one"
    assert b"secret" not in old and b"secret" not in new


async def test_every_flipped_byte_is_refused(db: Database) -> None:
    """Changing any single byte of a ciphertext makes it fail to decrypt, never mis-decrypt."""
    keyring = await loaded(db, new_master())
    sealed = keyring.encrypt(b"payload", context=b"ctx")
    for index in range(len(sealed)):
        damaged = bytearray(sealed)
        damaged[index] ^= 0x01
        with pytest.raises(DecryptionFailed):
            keyring.decrypt(bytes(damaged), context=b"ctx")
    with pytest.raises(DecryptionFailed):
        keyring.decrypt(sealed[:-1], context=b"ctx")
    with pytest.raises(DecryptionFailed):
        keyring.decrypt(b"", context=b"ctx")


async def test_ciphertext_moved_to_another_context_is_refused(db: Database) -> None:
    """A value copied from one row to another (different context) does not decrypt."""
    keyring = await loaded(db, new_master())
    sealed = keyring.encrypt(b"alice's token", context=b"users:alice")
    with pytest.raises(DecryptionFailed):
        keyring.decrypt(sealed, context=b"users:mallory")


async def test_wrong_master_key_is_a_clear_startup_error(db: Database) -> None:
    """Loading stored keys with another master key fails with a hint, not garbage."""
    await loaded(db, new_master())
    with pytest.raises(StartupError, match="master key is not the one"):
        await loaded(db, new_master())


def test_master_key_file_is_created_private_on_sqlite(tmp_path: Path) -> None:
    """On SQLite the master key file is created 0600 once, then reused."""
    config = Config(data_dir=tmp_path)
    first = load_master_key(config)
    path = tmp_path / "master.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_master_key(config) == first
    assert len(first) == 32


def test_postgres_needs_an_explicit_master_key(tmp_path: Path) -> None:
    """A shared database never gets a per-host generated key."""
    config = Config(data_dir=tmp_path, database_url="postgresql+psycopg://u@127.0.0.1:1/x")
    with pytest.raises(StartupError, match="KEEL_MASTER_KEY is not set"):
        load_master_key(config)
    assert not (tmp_path / "master.key").exists()


@pytest.mark.parametrize(
    "value", ["short", "!!!not base64!!!", base64.b64encode(b"x" * 31).decode()]
)
def test_malformed_master_key_is_refused(tmp_path: Path, value: str) -> None:
    """A master key that is not 32 bytes of base64 is refused with a hint."""
    with pytest.raises(StartupError, match="not 32 bytes"):
        load_master_key(Config(data_dir=tmp_path, master_key=value))


def test_keys_rotate_command(
    monkeypatch: pytest.MonkeyPatch, make_config: Callable[..., Config]
) -> None:
    """`keel keys rotate` makes a new data key and signing key current and keeps the old."""
    import json

    from keel.cli import app

    config = make_config()
    monkeypatch.setenv("KEEL_DATABASE_URL", config.effective_database_url)
    monkeypatch.setenv("KEEL_DATA_DIR", str(config.data_dir))
    monkeypatch.setenv("KEEL_AUTO_MIGRATE", "true")
    monkeypatch.setenv("KEEL_MASTER_KEY", new_master())
    runner = CliRunner()
    first = json.loads(runner.invoke(app, ["keys", "rotate", "--json"]).output)
    second = json.loads(runner.invoke(app, ["keys", "rotate", "--json"]).output)
    assert first["data_key"] != second["data_key"]
    assert second["data_keys"] == 3  # the first key made on load, then two rotations
    assert first["signing_key"] != second["signing_key"]
    # The key retired just now is still published: tokens it signed have not expired yet.
    assert second["published_signing_keys"] == 2
    only = json.loads(runner.invoke(app, ["keys", "rotate", "--only", "signing", "--json"]).output)
    assert set(only) == {"signing_key", "published_signing_keys"}


async def test_a_key_rotated_by_another_process_is_picked_up(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process that loaded before another rotated can still open the new data."""
    from keel.core import keyring as keyring_module

    monkeypatch.setattr(keyring_module, "RELOAD_INTERVAL", 0.0)
    master = new_master()
    early = await loaded(db, master)
    late = await loaded(db, master)
    await late.rotate(db)
    sealed = late.encrypt(b"fresh", context=b"c")
    with pytest.raises(DecryptionFailed, match="Unknown key"):
        early.decrypt(sealed, context=b"c")
    assert await early.open(db, sealed, context=b"c") == b"fresh"


async def test_kernel_keyring_is_loaded_once(make_config: Callable[..., Config]) -> None:
    """`Keel.keyring()` loads on first use and returns the same keyring after."""
    from keel import Keel

    kernel = Keel(make_config(master_key=new_master()))
    await upgrade(kernel.db)
    try:
        first = await kernel.keyring()
        assert first is await kernel.keyring()
        assert first.decrypt(first.encrypt(b"x", context=b"c"), context=b"c") == b"x"
    finally:
        await kernel.db.dispose()


async def test_processes_starting_together_agree_on_the_first_key(
    config: Config, db: Database
) -> None:
    """Several processes loading an empty keyring at once create one key and all use it."""
    master = new_master()
    engines = [Database(config) for _ in range(4)]
    try:
        keyrings = await asyncio.gather(*(loaded(engine, master) for engine in engines))
    finally:
        for engine in engines:
            await engine.dispose()
    assert len({keyring.current_key_id for keyring in keyrings}) == 1
    assert all(len(keyring.key_ids) == 1 for keyring in keyrings)


async def test_forged_key_ids_do_not_force_reloads(db: Database) -> None:
    """A ciphertext naming a malformed or unknown key id is refused without a reload storm."""
    keyring = await loaded(db, new_master())
    sealed = keyring.encrypt(b"x", context=b"c")
    forged = b"\x01\x0bnot-a-key-x" + sealed[2 + sealed[1] :]
    with pytest.raises(DecryptionFailed):
        await keyring.open(db, forged, context=b"c")
    plausible = b"\x01\x11k20261122deadbeef" + sealed[2 + sealed[1] :]
    with pytest.raises(DecryptionFailed):
        await keyring.open(db, plausible, context=b"c")  # loaded moments ago: no reload
