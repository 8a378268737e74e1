"""Declaring settings and parsing values: every type, bounds, choices and validators."""

from __future__ import annotations

import enum
import json
import random
from datetime import timedelta
from typing import Any

import pytest

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
        ("test.token", 12, "string"),
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
    """Without a running kernel `from_env` reads the variable; an unset one gives None."""
    handle = declare("spec.env", int, default=3, env="SPEC_ENV")
    try:
        assert handle.from_env() is None
        monkeypatch.setenv("SPEC_ENV", "9")
        assert handle.from_env() == 9
        assert handle.read().source == "default" and handle.value == 3
    finally:
        forget("spec.env")


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
