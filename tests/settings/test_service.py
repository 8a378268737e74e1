"""The store and the writes, on SQLite and PostgreSQL: precedence, validation, secrets,
history and rollback, restart_required, concurrent writers."""

from __future__ import annotations

import asyncio
import enum
import itertools
import json
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import func, select

from keel import Config, Keel
from keel.audit.models import AuditEvent
from keel.core import changes as changes_module
from keel.core.database import Database
from keel.core.errors import NotFound, StartupError, ValidationFailed
from keel.core.keyring import Keyring
from keel.settings import Setting, declare, store
from keel.settings import service as settings_service
from keel.settings.models import SettingChange, SettingOverride
from keel.settings.service import lookup, rollback, set_value, unset_value, write
from keel.settings.spec import forget

TENANT = "0190aaaa-0000-7000-8000-000000000001"


async def _set(keel: Keel, key: str, raw: Any, *, tenant: str | None = None) -> SettingChange:
    setting = lookup(key)
    keyring = await keel.keyring()
    change = await write(
        keel.db,
        lambda s: set_value(s, setting, raw, reason="test", tenant_id=tenant, keyring=keyring),
    )
    await store(keel).reload()
    return change


async def _counts(db: Database) -> tuple[int, int, int]:
    async with db.session() as session:
        overrides = await session.scalar(select(func.count()).select_from(SettingOverride))
        changes = await session.scalar(select(func.count()).select_from(SettingChange))
        events = await session.scalar(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.action.like("setting.%"))
        )
    return int(overrides or 0), int(changes or 0), int(events or 0)


@pytest.mark.parametrize("case", list(itertools.product([False, True], repeat=3)))
async def test_precedence_in_every_combination(
    keel: Keel,
    test_settings: dict[str, Setting[Any]],
    monkeypatch: pytest.MonkeyPatch,
    case: tuple[bool, bool, bool],
) -> None:
    """Tenant override > global override > environment > default, with the right source for
    the tenant, for another tenant and for the deployment."""
    env, override, tenant_override = case
    quota = test_settings["test.quota"]
    if env:
        monkeypatch.setenv("TEST_QUOTA", "20")
    if override:
        await _set(keel, "test.quota", 30)
    if tenant_override:
        await _set(keel, "test.quota", 40, tenant=TENANT)
    await store(keel).reload()
    deployment = (30, "override") if override else (20, "env") if env else (10, "default")
    mine = (40, "tenant") if tenant_override else deployment
    assert (quota.value, quota.source) == deployment
    assert (quota.read().value, quota.read().source) == deployment
    assert (quota.read(TENANT).value, quota.read(TENANT).source) == mine
    assert quota.get(TENANT) == mine[0]
    assert quota.get("0190bbbb-0000-7000-8000-000000000002") == deployment[0]
    assert store(keel).get("test.quota", TENANT) == mine[0]


@pytest.mark.parametrize(
    ("key", "raw", "tenant"),
    [
        ("test.count", "many", None),
        ("test.count", 0, None),
        ("test.count", 101, None),
        ("test.mode", "prod", None),
        ("test.every", "-1s", None),
        ("test.limits", {"burst": "x"}, None),
        ("test.count", 3, TENANT),  # not a per-tenant setting
        ("test.quota", 3, ""),  # an empty tenant would be the global override
        ("test.quota", 3, "t" * 37),
    ],
)
async def test_invalid_values_change_nothing(
    keel: Keel, test_settings: dict[str, Setting[Any]], key: str, raw: Any, tenant: str | None
) -> None:
    """A bad type, a value out of bounds or a tenant override of a deployment-wide setting is
    refused (422) and leaves no override, history entry or audit event."""
    await _set(keel, "test.count", 7)
    before = await _counts(keel.db)
    with pytest.raises(ValidationFailed):
        await _set(keel, key, raw, tenant=tenant)
    assert await _counts(keel.db) == before
    assert test_settings["test.count"].value == 7


async def test_an_unknown_key_is_not_found(keel: Keel) -> None:
    """Looking up an undeclared key is a 404 with a hint."""
    with pytest.raises(NotFound) as caught:
        lookup("test.nothing")
    assert caught.value.hint is not None


async def test_a_missing_reason_is_refused(keel: Keel) -> None:
    """Every change needs a reason; a blank one writes nothing."""
    setting = lookup("test.count")
    with pytest.raises(ValidationFailed, match="reason"):
        await write(keel.db, lambda s: set_value(s, setting, 3, reason="  "))
    assert await _counts(keel.db) == (0, 0, 0)


async def test_secrets_are_encrypted_and_never_shown(
    keel: Keel, test_settings: dict[str, Setting[Any]]
) -> None:
    """A secret is usable in code but stored only as ciphertext; history and audit mask it."""
    secret = "s3cr3t-value-xyz"
    await _set(keel, "test.token", secret)
    await _set(keel, "test.token", secret + "-2")
    assert test_settings["test.token"].value == secret + "-2"
    async with keel.db.session() as session:
        row = await session.scalar(select(SettingOverride))
        assert row is not None and row.value is None and row.ciphertext is not None
        assert secret.encode() not in row.ciphertext
        changes = list(await session.scalars(select(SettingChange)))
        events = list(await session.scalars(select(AuditEvent)))
    dumped = json.dumps([settings_service.change_data(lookup("test.token"), c) for c in changes])
    assert secret not in dumped and "***" in dumped
    assert all(c.before is None and c.after is None for c in changes)
    audit_text = json.dumps([e.changes for e in events])
    assert secret not in audit_text and "[redacted]" in audit_text


async def test_history_and_rollback(keel: Keel, test_settings: dict[str, Setting[Any]]) -> None:
    """Each change is kept with before and after; rollback restores an earlier value as a
    new entry, and rolling back to the first change's "before" state is an unset."""
    first = await _set(keel, "test.mode", "live")
    await _set(keel, "test.mode", "sim")
    await write(
        keel.db,
        lambda s: rollback(s, lookup("test.mode"), first.id, reason="undo"),
    )
    await store(keel).reload()
    assert test_settings["test.mode"].read().value == "live"
    async with keel.db.session() as session:
        rows = await settings_service.history(session, "test.mode")
    assert [r.action for r in rows] == ["rollback", "set", "set"]
    assert rows[0].rolled_back_to == first.id
    assert [(json.loads(r.before or "null"), json.loads(r.after or "null")) for r in rows] == [
        ("sim", "live"),
        ("live", "sim"),
        (None, "live"),
    ]
    await write(keel.db, lambda s: unset_value(s, lookup("test.mode"), reason="default"))
    await store(keel).reload()
    assert test_settings["test.mode"].read().source == "default"
    with pytest.raises(NotFound):
        await write(keel.db, lambda s: rollback(s, lookup("test.mode"), "nope", reason="x"))


async def test_unsetting_without_an_override_writes_nothing(keel: Keel) -> None:
    """Removing an override that does not exist adds no history entry."""
    result = await write(keel.db, lambda s: unset_value(s, lookup("test.mode"), reason="noop"))
    assert result is None
    assert await _counts(keel.db) == (0, 0, 0)


async def test_restart_required_settings_keep_their_start_value(
    keel: Keel, test_settings: dict[str, Setting[Any]]
) -> None:
    """A restart_required setting keeps the value the process started with and is reported
    pending until then; setting it back clears the pending state."""
    workers = test_settings["test.workers"]
    await _set(keel, "test.workers", 8)
    assert workers.value == 4
    entry = store(keel).entry("test.workers")
    assert entry.pending and entry.live == 8
    assert store(keel).snapshot.pending() == ["test.workers"]
    check = keel.readiness_checks()["settings"]
    assert await check() == "1 setting pending restart"
    await write(keel.db, lambda s: unset_value(s, lookup("test.workers"), reason="back"))
    await store(keel).reload()
    assert store(keel).snapshot.pending() == []
    assert await check() is None


async def test_a_new_kernel_starts_with_the_stored_value(
    config: Config, test_settings: dict[str, Setting[Any]]
) -> None:
    """After a restart the stored value of a restart_required setting is in effect."""
    first = Keel(config, modules=[])
    await first.startup()
    try:
        await _set(first, "test.workers", 8)
    finally:
        await first.shutdown()
    assert test_settings["test.workers"].value == 4  # handles are released on shutdown
    second = Keel(config, modules=[])
    await second.startup()
    try:
        assert test_settings["test.workers"].read().value == 8
        assert store(second).snapshot.pending() == []
    finally:
        await second.shutdown()


async def test_an_invalid_environment_value_stops_startup(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A malformed environment value names the variable at startup instead of being guessed."""
    monkeypatch.setenv("TEST_COUNT", "lots")
    kernel = Keel(config, modules=[])
    with pytest.raises(StartupError, match="TEST_COUNT"):
        await kernel.startup()
    await kernel.shutdown()


async def test_a_stored_value_that_became_invalid_is_ignored(
    keel: Keel, test_settings: dict[str, Setting[Any]]
) -> None:
    """An override the current declaration refuses (bounds tightened since) falls back to the
    environment or default instead of breaking reads."""
    await _set(keel, "test.count", 50)
    async with keel.db.transaction() as session:
        row = await session.scalar(select(SettingOverride))
        assert row is not None
        row.value = "500"
    await store(keel).reload()
    assert test_settings["test.count"].read().source == "default"


async def test_concurrent_writers_lose_no_history(
    keel: Keel, config: Config, make_config: Callable[..., Config]
) -> None:
    """Writers on two engines racing on one key (its first write included) each leave one
    history entry, and each entry's before is the previous entry's after."""
    other = Database(config)
    setting = lookup("test.count")
    try:

        async def one(db: Database, value: int) -> None:
            await write(db, lambda s: set_value(s, setting, value, reason=f"w{value}"))

        await asyncio.gather(
            *(one(keel.db if n % 2 else other, n) for n in range(1, 21)),
        )
    finally:
        await other.dispose()
    async with keel.db.session() as session:
        rows = list(
            await session.scalars(
                select(SettingChange).order_by(SettingChange.at, SettingChange.id)
            )
        )
        current = await session.scalar(select(SettingOverride))
    assert len(rows) == 20
    assert sorted(int(r.after or 0) for r in rows) == list(range(1, 21))
    chain = [(r.before, r.after) for r in rows]
    assert chain[0][0] is None
    for previous, following in itertools.pairwise(chain):
        assert following[0] == previous[1]
    assert current is not None and current.value == rows[-1].after


async def test_another_kernel_sees_a_change_without_the_in_process_path(
    keel: Keel, make_config: Callable[..., Config]
) -> None:
    """A second kernel with its own engine, cut off from in-process notices, reloads a
    committed change within 1 s through PostgreSQL LISTEN or (SQLite) its 0.2 s version poll.
    The multi-process tests in test_propagation.py check the same across processes."""
    other = Keel(make_config(changes_poll_interval=0.2), modules=[])
    await other.startup()
    changes_module._watchers.discard(other.changes)  # only LISTEN/the poll can tell it
    try:
        await _set(keel, "test.count", 77)
        deadline = asyncio.get_running_loop().time() + 1.0
        while store(other).get("test.count") != 77:
            assert asyncio.get_running_loop().time() < deadline, "not propagated within 1 s"
            await asyncio.sleep(0.01)
    finally:
        await other.shutdown()


async def test_long_and_fine_durations_survive_storage(
    keel: Keel, test_settings: dict[str, Setting[Any]]
) -> None:
    """A stored 30-day or 123456.7-second duration is read back exactly after a reload of
    another store, not ignored or rounded."""
    for raw, seconds in (("30d", 2_592_000.0), ("123456.7s", 123_456.7)):
        await _set(keel, "test.every", raw)
        fresh = settings_service.SettingsStore(keel.db, keel.keyring)
        await fresh.reload()
        assert fresh.entry("test.every").source == "override"
        assert fresh.get("test.every").total_seconds() == seconds
        assert test_settings["test.every"].value.total_seconds() == seconds


class Level(enum.IntEnum):
    QUIET = 1
    LOUD = 2


async def test_int_enum_settings_are_stored_and_read_back(keel: Keel) -> None:
    """An IntEnum setting is set from text, stored as its number and read back as the
    member by a fresh store."""
    handle = declare("spec.level", Level, default=Level.QUIET)
    try:
        await _set(keel, "spec.level", "2")
        assert handle.value is Level.LOUD
        fresh = settings_service.SettingsStore(keel.db, keel.keyring)
        await fresh.reload()
        assert fresh.get("spec.level") is Level.LOUD
        async with keel.db.session() as session:
            row = await session.scalar(select(SettingOverride))
        assert row is not None and row.value == "2"
    finally:
        forget("spec.level")


async def test_an_invalid_secret_in_the_environment_stops_startup_without_echoing_it(
    config: Config, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A secret setting's invalid environment value stops startup naming the variable; a
    validator that quotes the value does not get it into the error or the logs."""
    secret = "tok-env-5a4b3c2d1e"

    def echoing(value: str) -> None:
        if value:
            raise ValueError(f"bad token {value!r}")

    monkeypatch.setenv("SPEC_TOKEN", secret)
    declare("spec.token", str, default="", secret=True, env="SPEC_TOKEN", validator=echoing)
    kernel = Keel(config, modules=[])
    try:
        with pytest.raises(StartupError) as caught:
            await kernel.startup()
        assert "SPEC_TOKEN" in str(caught.value) + str(caught.value.hint)
        assert secret not in str(caught.value) and secret not in caplog.text
    finally:
        await kernel.shutdown()
        forget("spec.token")


async def test_an_unusable_keyring_loses_only_the_encrypted_settings(
    keel: Keel, test_settings: dict[str, Setting[Any]], caplog: pytest.LogCaptureFixture
) -> None:
    """With a secret override stored and no usable master key, a reload still loads every
    other setting (the secret falls back to its default) instead of failing whole."""
    await _set(keel, "test.token", "s3cr3t-keyring-test")
    await _set(keel, "test.count", 42)

    async def broken_keyring() -> Keyring:
        raise StartupError("no master key", hint="set KEEL_MASTER_KEY")

    fresh = settings_service.SettingsStore(keel.db, broken_keyring)
    await fresh.reload()
    assert fresh.entry("test.count").value == 42
    assert fresh.entry("test.token").source == "default"
    assert "keyring unavailable" in caplog.text and "s3cr3t" not in caplog.text
