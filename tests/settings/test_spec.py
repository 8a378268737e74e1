"""Declaring settings and parsing values: every type, bounds, choices and validators."""

from __future__ import annotations

import enum
import json
import random
from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from keel.settings import Setting, declare
from keel.settings.spec import forget, format_duration


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


@pytest.mark.parametrize(
    ("key", "raw", "expected"),
    [
        ("test.flag", True, True),
        ("test.flag", "off", False),
        ("test.flag", " Yes ", True),
        ("test.count", 7, 7),
        ("test.count", "42", 42),
        ("test.ratio", 1, 1.0),
        ("test.ratio", "0.25", 0.25),
        ("test.mode", "live", "live"),
        ("test.every", "5m", timedelta(minutes=5)),
        ("test.every", "1500ms", timedelta(seconds=1.5)),
        ("test.every", "PT2H", timedelta(hours=2)),
        ("test.every", 90, timedelta(seconds=90)),
        ("test.every", "2d", timedelta(days=2)),
    ],
)
def test_values_of_every_type_parse(
    test_settings: dict[str, Setting[Any]], key: str, raw: Any, expected: Any
) -> None:
    """JSON data and text both parse to the setting's type."""
    assert test_settings[key].parse(raw) == expected


@pytest.mark.parametrize(
    ("key", "raw", "message"),
    [
        ("test.flag", 1, "true or false"),
        ("test.flag", "maybe", "true or false"),
        ("test.count", True, "integer"),
        ("test.count", 1.5, "integer"),
        ("test.count", 0, "at least 1"),
        ("test.count", 101, "at most 100"),
        ("test.ratio", "nan", "finite"),
        ("test.ratio", 1.5, "at most 1.0"),
        ("test.mode", "prod", "one of: sim, live"),
        ("test.mode", 3, "one of"),
        ("test.every", "0.5s", "at least 1s"),
        ("test.every", "soon", "duration"),
        ("test.every", -5, "duration"),
        ("test.limits", {"burst": 0}, "burst"),
        ("test.limits", "{not json", "not valid"),
        ("test.token", 12, "not a valid value for the secret setting test.token"),
    ],
)
def test_bad_values_are_refused_with_a_reason(
    test_settings: dict[str, Setting[Any]], key: str, raw: Any, message: str
) -> None:
    """Wrong types, out-of-bound values, unknown choices and invalid JSON raise ValueError."""
    with pytest.raises(ValueError, match=message):
        test_settings[key].parse(raw)


def test_json_settings_are_pydantic_models(test_settings: dict[str, Setting[Any]]) -> None:
    """A JSON setting parses dicts and JSON text into its model and dumps back to JSON data."""
    limits = test_settings["test.limits"]
    value = limits.parse('{"burst": 3, "names": ["a"]}')
    assert value.burst == 3
    assert limits.dump(value) == {"burst": 3, "names": ["a"]}
    assert limits.value.burst == 2


def test_enum_classes_and_validators() -> None:
    """An Enum type parses its values; a validator's ValueError refuses a value."""

    def even(value: int) -> None:
        if value % 2:
            raise ValueError("must be even")

    colour = declare("spec.colour", Colour, default=Colour.RED)
    number = declare("spec.even", int, default=2, validator=even)
    try:
        assert colour.parse("blue") is Colour.BLUE
        assert colour.choices == ("red", "blue")
        assert colour.dump(Colour.BLUE) == "blue"
        with pytest.raises(ValueError, match="must be even"):
            number.parse(3)
    finally:
        forget("spec.colour")
        forget("spec.even")


@pytest.mark.parametrize(
    ("key", "options", "message"),
    [
        ("NoDots", {"default": 1}, "module.name"),
        ("test.count", {"default": 1}, "already declared"),
        ("spec.both", {"default": 1, "per_tenant": True, "restart_required": True}, "per_tenant"),
        ("spec.bad_default", {"default": 0, "ge": 1}, "the default must be at least 1"),
    ],
)
def test_bad_declarations_fail_at_import(key: str, options: dict[str, Any], message: str) -> None:
    """A malformed key, a duplicate, an impossible combination or an invalid default fail."""
    try:
        with pytest.raises(ValueError, match=message):
            declare(key, int, **options)
    finally:
        if key.startswith("spec."):
            forget(key)


def test_unsupported_types_are_refused() -> None:
    """Only the documented types can be declared."""
    with pytest.raises(TypeError, match="unsupported"):
        declare("spec.bytes", bytes, default=b"")


def test_a_handle_answers_from_the_environment_before_any_kernel_loads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without a running kernel a handle's value is the environment's (source "env") when
    its variable is set at declaration, else the default."""
    monkeypatch.setenv("SPEC_ENV", "9")
    handle = declare("spec.env", int, default=3, env="SPEC_ENV")
    try:
        assert (handle.value, handle.source) == (9, "env")
        assert handle.read() == (9, "env") and handle.get("some-tenant") == 9
    finally:
        forget("spec.env")
    monkeypatch.delenv("SPEC_ENV")
    handle = declare("spec.env", int, default=3, env="SPEC_ENV")
    try:
        assert handle.read() == (3, "default")
    finally:
        forget("spec.env")


def test_an_invalid_environment_value_at_declaration_falls_back_to_the_default(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Declaring a setting whose variable is invalid does not fail the import: the handle
    answers the default and the problem is logged, without the value of a secret."""
    monkeypatch.setenv("SPEC_ENV", "lots")
    monkeypatch.setenv("SPEC_SECRET", "hunter2-not-a-number")
    plain = declare("spec.env", int, default=3, env="SPEC_ENV")
    secret = declare("spec.secret", int, default=1, env="SPEC_SECRET", secret=True)
    try:
        assert plain.read() == (3, "default")
        assert secret.read() == (1, "default")
        with pytest.raises(ValueError, match="SPEC_ENV"):
            plain.base(strict=True)
        assert "spec.secret" in caplog.text and "SPEC_ENV must be an integer" in caplog.text
        assert "hunter2" not in caplog.text
    finally:
        forget("spec.env")
        forget("spec.secret")


@pytest.mark.parametrize(
    "seconds",
    [
        "0",
        "0.000001",
        "0.00005",
        "0.0001",
        "1.5",
        "59.999999",
        "123456.7",
        "999999.999999",
        "1000000",
        "2592000",
        "31536000.25",
        "999999999.999999",
        "1000000000",
    ],
)
def test_durations_round_trip_exactly(seconds: str) -> None:
    """A duration from a microsecond to 1e9 s parses, dumps without an exponent and parses
    back to the same value, so a stored duration is never ignored or rounded."""
    handle = declare("spec.wait", timedelta, default=timedelta(0))
    try:
        parsed = handle.parse(f"{seconds}s")
        dumped = handle.dump(parsed)
        assert "e" not in dumped.lower().removesuffix("s")
        assert handle.parse(dumped) == parsed
        assert handle.parse(json.loads(json.dumps(dumped))) == parsed
        whole, _, fraction = seconds.partition(".")
        expected = int(whole) * 1_000_000 + int((fraction + "000000")[:6])
        assert parsed // timedelta(microseconds=1) == expected
    finally:
        forget("spec.wait")


def test_random_durations_round_trip() -> None:
    """Random durations over 0..1e9 s with microsecond fractions survive parse → dump →
    parse unchanged."""
    handle = declare("spec.wait", timedelta, default=timedelta(0))
    rng = random.Random(11)
    try:
        for _ in range(5000):
            micro = rng.choice([rng.randrange(10**6), rng.randrange(10**15 + 1)])
            value = timedelta(microseconds=micro)
            dumped = handle.dump(value)
            assert handle.parse(dumped) == value, dumped
            assert handle.parse(value) == value
            assert handle.parse(format_duration(value)) == value
    finally:
        forget("spec.wait")


class Priority(enum.IntEnum):
    LOW = 1
    HIGH = 2


def test_int_enums_parse_their_values_and_text() -> None:
    """An IntEnum setting accepts its default, its members' values as numbers or text and
    dumps a member back to its value; other values and booleans are refused."""
    handle = declare("spec.priority", Priority, default=Priority.LOW)
    try:
        assert handle.value is Priority.LOW and handle.choices == ("1", "2")
        assert handle.parse(2) is Priority.HIGH
        assert handle.parse("2") is Priority.HIGH
        assert handle.parse(Priority.HIGH) is Priority.HIGH
        assert handle.dump(Priority.HIGH) == 2
        assert handle.parse(json.loads(json.dumps(handle.dump(Priority.HIGH)))) is Priority.HIGH
        for bad in (3, "3", True, None, "HIGH"):
            with pytest.raises(ValueError, match="one of: 1, 2"):
                handle.parse(bad)
    finally:
        forget("spec.priority")


SECRET = "tok-9f8e7d6c5b4a"


class Credentials(BaseModel):
    """A secret JSON setting whose secret is a dict key."""

    tokens: dict[str, int]


def _echoing(value: str) -> None:
    if not value.startswith("ok-"):
        raise ValueError(f"bad token {value!r}")


def test_errors_of_secret_settings_never_quote_the_value() -> None:
    """A pydantic error whose location holds the secret and a validator that quotes the
    value both give a generic message for a secret setting (and the detail otherwise)."""
    model = declare("spec.creds", Credentials, default={"tokens": {}}, secret=True)
    checked = declare("spec.checked", str, default="ok-1", secret=True, validator=_echoing)
    plain = declare("spec.plain", str, default="ok-1", validator=_echoing)
    try:
        for handle, raw in (
            (model, {"tokens": {SECRET: "many"}}),
            (model, f'{{"tokens": {{"{SECRET}": "many"}}}}'),
            (checked, SECRET),
        ):
            with pytest.raises(ValueError) as caught:
                handle.parse(raw)
            assert SECRET not in str(caught.value) and "withheld" in str(caught.value)
            assert caught.value.__cause__ is None and caught.value.__context__ is None
        with pytest.raises(ValueError, match=SECRET):
            plain.parse(SECRET)  # not secret: the detail helps
    finally:
        for key in ("spec.creds", "spec.checked", "spec.plain"):
            forget(key)
