"""Setting declarations: a key, a type, bounds and where a default comes from.

`declare()` registers a setting at import time and returns its handle. A handle answers reads
from the values its store last loaded, held on the handle itself, so a read is an attribute
lookup and never a query. Parsing and checking of values lives here too, so the API, the CLI,
the environment and the default are all validated the same way.
"""

from __future__ import annotations

import enum
import json
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, Generic, Literal, NamedTuple, TypeVar, cast

from pydantic import BaseModel, TypeAdapter
from pydantic import ValidationError as PydanticValidationError

from keel.observability.logging import get_logger

__all__ = [
    "MASK",
    "Reading",
    "Setting",
    "Source",
    "declare",
    "declared",
    "forget",
    "format_duration",
]

T = TypeVar("T")
_logger = get_logger("keel.settings")
Source = Literal["tenant", "override", "env", "default"]
MASK = "***"
"""What a secret setting's value shows as, everywhere."""

_KEY = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+")
_UNITS = {
    "ms": Decimal("0.001"),
    "s": Decimal(1),
    "m": Decimal(60),
    "h": Decimal(3600),
    "d": Decimal(86400),
}
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*")
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_ISO_DURATION: TypeAdapter[timedelta] = TypeAdapter(timedelta)
_MICROSECOND = timedelta(microseconds=1)
_MAX_SECONDS = 10**9


class Reading(NamedTuple, Generic[T]):
    """An effective value and where it came from (a tuple: cheap to make per read)."""

    value: T
    source: Source


def format_duration(value: timedelta) -> str:
    """A duration as Keel prints and stores it: whole seconds and up to six decimals, never
    an exponent (`"30s"`, `"1.5s"`, `"2592000s"`, `"0.000001s"`), so it parses back exactly."""
    micro = value // _MICROSECOND
    sign, micro = ("-", -micro) if micro < 0 else ("", micro)
    seconds, fraction = divmod(micro, 1_000_000)
    decimals = f"{fraction:06d}".rstrip("0")
    return f"{sign}{seconds}{'.' + decimals if decimals else ''}s"


_SIMPLE_KINDS: dict[Any, str] = {
    bool: "bool",
    int: "int",
    float: "float",
    str: "str",
    timedelta: "duration",
}


def _kind_of(kind: Any, choices: Sequence[str] | None) -> str:
    if kind in _SIMPLE_KINDS:
        return "enum" if kind is str and choices else _SIMPLE_KINDS[kind]
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return "enum"
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        return "json"
    raise TypeError(
        f"unsupported setting type {kind!r}: use bool, int, float, str, timedelta, an Enum "
        "or a pydantic model"
    )


class Setting(Generic[T]):
    """A declared setting; read it with `.value`, `.get(tenant)` or `.read(tenant)`."""

    __slots__ = (
        "_enum",
        "_model",
        "_reading",
        "_tenant_readings",
        "_tenants",
        "choices",
        "default",
        "description",
        "env",
        "ge",
        "key",
        "kind",
        "le",
        "per_tenant",
        "restart_required",
        "secret",
        "source",
        "validator",
        "value",
    )

    def __init__(
        self,
        key: str,
        kind: type[T],
        *,
        default: Any,
        env: str | None,
        description: str,
        ge: Any,
        le: Any,
        choices: Sequence[str] | None,
        validator: Callable[[T], Any] | None,
        restart_required: bool,
        secret: bool,
        per_tenant: bool,
    ) -> None:
        self.key = key
        self.kind = _kind_of(kind, choices)
        self._enum: type[enum.Enum] | None = kind if issubclass(kind, enum.Enum) else None
        self._model: type[BaseModel] | None = kind if issubclass(kind, BaseModel) else None
        self.choices: tuple[str, ...] | None = (
            tuple(str(member.value) for member in self._enum)
            if self._enum is not None
            else (tuple(choices) if choices else None)
        )
        self.env = env
        self.description = description
        self.ge = ge
        self.le = le
        self.validator = validator
        self.restart_required = restart_required
        self.secret = secret
        self.per_tenant = per_tenant
        self.default: T = self.parse(default, what="the default")
        value, source = self.base()
        self.value: T = value
        """The effective deployment-wide value (kept current by the running kernel; before
        one loads, the environment's value or the default)."""
        self.source: Source = source
        """Where `value` came from."""
        self._tenants: dict[str, T] = {}
        self._reading: Reading[T] = Reading(self.value, self.source)
        self._tenant_readings: Mapping[str, Reading[T]] = {}

    def __repr__(self) -> str:
        return f"Setting({self.key!r}, {self.kind})"

    # --- reads -----------------------------------------------------------------------------
    def get(self, tenant: str | None = None) -> T:
        """The effective value for `tenant` (its override if it has one), else `.value`."""
        if tenant is None:
            return self.value
        return self._tenants.get(tenant, self.value)

    def read(self, tenant: str | None = None) -> Reading[T]:
        """The effective value for `tenant` with its source."""
        if tenant is not None:
            found = self._tenant_readings.get(tenant)
            if found is not None:
                return found
        return self._reading

    def _publish(self, value: Any, source: Source, tenants: Mapping[str, Any]) -> None:
        """Make a loaded snapshot's values current (the store calls this)."""
        self._tenant_readings = {t: Reading(v, "tenant") for t, v in tenants.items()}
        self._reading = Reading(value, source)
        self.value, self.source, self._tenants = value, source, dict(tenants)

    # --- values ----------------------------------------------------------------------------
    def parse(self, raw: Any, *, what: str = "the value") -> T:
        """`raw` (JSON data or text) as this setting's type, checked; ValueError if not.

        For a secret setting the error says only that the value is not valid: a type's or a
        validator's message may quote the value, so none of it is passed on."""
        try:
            value = self._coerce(raw, what)
            self._check(value, what)
        except ValueError:
            if not self.secret:
                raise
        else:
            return cast("T", value)
        # Raised outside the handler, so the detailed error is not even its context.
        raise ValueError(
            f"{what} is not a valid value for the secret setting {self.key} "
            "(details are withheld so the value is not echoed)"
        )

    def base(self, *, strict: bool = False) -> tuple[T, Source]:
        """The environment's value, else the default. An invalid environment value raises
        ValueError if `strict`; otherwise it is logged (naming the key and variable, never
        the value of a secret) and the default is used."""
        try:
            env = self.from_env()
        except ValueError as exc:
            if strict:
                raise
            _logger.warning(
                "invalid setting in the environment ignored",
                key=self.key,
                variable=self.env,
                **({} if self.secret else {"error": str(exc)}),
            )
            env = None
        if env is not None:
            return env, "env"
        return self.default, "default"

    def from_env(self, environ: Mapping[str, str] | None = None) -> T | None:
        """The environment's value, or None if its variable is unset."""
        if self.env is None:
            return None
        text = (os.environ if environ is None else environ).get(self.env)
        if text is None:
            return None
        return self.parse(text, what=f"the environment variable {self.env}")

    def dump(self, value: Any) -> Any:
        """`value` as JSON data (what is stored and shown)."""
        if self.kind == "duration":
            return format_duration(value)
        if isinstance(value, enum.Enum):
            return value.value
        if isinstance(value, BaseModel):
            return value.model_dump(mode="json")
        return value

    def shown(self, value: Any) -> Any:
        """`value` as the API and CLI show it: masked if secret."""
        return MASK if self.secret else self.dump(value)

    def _coerce(self, raw: Any, what: str) -> Any:
        if self.kind == "enum":
            return self._choice(raw, what)
        if self.kind == "json":
            assert self._model is not None
            return _model(self._model, raw, what)
        return _COERCE[self.kind](raw, what)

    def _choice(self, raw: Any, what: str) -> Any:
        member = raw.value if isinstance(raw, enum.Enum) else raw
        if self._enum is not None and not isinstance(member, bool):
            # A member's value may be any type (IntEnum: 1); text names it by str(value).
            for candidate in self._enum:
                if candidate.value == member or (
                    isinstance(member, str) and str(candidate.value) == member.strip()
                ):
                    return candidate
        elif isinstance(member, str) and self.choices is not None and member in self.choices:
            return member
        raise ValueError(f"{what} must be one of: {', '.join(self.choices or ())}")

    def _check(self, value: Any, what: str) -> None:
        if self.ge is not None and value < self.ge:
            raise ValueError(f"{what} must be at least {self._bound(self.ge)}")
        if self.le is not None and value > self.le:
            raise ValueError(f"{what} must be at most {self._bound(self.le)}")
        if self.validator is not None:
            try:
                self.validator(value)
            except ValueError as exc:
                raise ValueError(f"{what} is not valid: {exc}") from None

    def _bound(self, bound: Any) -> str:
        return format_duration(bound) if isinstance(bound, timedelta) else str(bound)


def _bool(raw: Any, what: str) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in _TRUE | _FALSE:
        return raw.strip().lower() in _TRUE
    raise ValueError(f"{what} must be true or false")


def _int(raw: Any, what: str) -> int:
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and re.fullmatch(r"[+-]?\d{1,30}", raw.strip()):
        return int(raw)
    raise ValueError(f"{what} must be an integer")


def _float(raw: Any, what: str) -> float:
    number: float | None = None
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        number = float(raw)
    elif isinstance(raw, str):
        try:
            number = float(raw.strip())
        except ValueError:
            number = None
    if number is None or not math.isfinite(number):
        raise ValueError(f"{what} must be a finite number")
    return number


def _str(raw: Any, what: str) -> str:
    if isinstance(raw, str):
        return raw
    raise ValueError(f"{what} must be a string")


def _model(model: type[BaseModel], raw: Any, what: str) -> BaseModel:
    try:
        if isinstance(raw, model):
            return model.model_validate(raw.model_dump())
        if isinstance(raw, str):
            return model.model_validate_json(raw)
        return model.model_validate(raw)
    except PydanticValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ValueError(
            f"{what} is not valid: {where + ': ' if where else ''}{first['msg']}"
        ) from None


def _duration(raw: Any, what: str) -> timedelta:
    seconds: Decimal | None = None
    if isinstance(raw, timedelta):
        seconds = Decimal(raw // _MICROSECOND) / 1_000_000
    elif isinstance(raw, int | float) and not isinstance(raw, bool):
        seconds = Decimal(raw) if math.isfinite(raw) else None
    elif isinstance(raw, str):
        text = raw.strip()
        if re.fullmatch(r"\d+(\.\d+)?", text):
            seconds = Decimal(text)
        elif (match := _DURATION.fullmatch(text)) is not None:
            seconds = Decimal(match[1]) * _UNITS[match[2]]
        elif text[:1] in {"P", "p", "-"}:
            try:
                parsed = _ISO_DURATION.validate_python(text.upper())
                seconds = Decimal(parsed // _MICROSECOND) / 1_000_000
            except PydanticValidationError:
                seconds = None
    if seconds is None or seconds < 0 or seconds > _MAX_SECONDS:
        raise ValueError(f"{what} must be a duration such as 30s, 5m, 1h or PT5M")
    # Exact decimal arithmetic, rounded to the microsecond timedelta keeps.
    return timedelta(microseconds=int((seconds * 1_000_000).to_integral_value(ROUND_HALF_EVEN)))


_COERCE: dict[str, Callable[[Any, str], Any]] = {
    "bool": _bool,
    "int": _int,
    "float": _float,
    "str": _str,
    "duration": _duration,
}
_DECLARED: dict[str, Setting[Any]] = {}


def declare(
    key: str,
    type: type[T],
    *,
    default: Any,
    env: str | None = None,
    description: str = "",
    ge: Any = None,
    le: Any = None,
    choices: Sequence[str] | None = None,
    validator: Callable[[T], Any] | None = None,
    restart_required: bool = False,
    secret: bool = False,
    per_tenant: bool = False,
) -> Setting[T]:
    """Declare the setting `key` (`module.name`) and return its handle.

    `type` is bool, int, float, str (with `choices` for an enumeration), timedelta, an Enum
    class or a pydantic model. Declaring a key twice is an error (two owners of one key).
    """
    if _KEY.fullmatch(key) is None or len(key) > 100:
        raise ValueError(f"setting key {key!r} must look like module.name (lowercase, dotted)")
    if key in _DECLARED:
        raise ValueError(f"setting {key!r} is already declared")
    if per_tenant and restart_required:
        raise ValueError(f"setting {key!r}: per_tenant settings cannot be restart_required")
    setting: Setting[T] = Setting(
        key,
        type,
        default=default,
        env=env,
        description=description,
        ge=ge,
        le=le,
        choices=choices,
        validator=validator,
        restart_required=restart_required,
        secret=secret,
        per_tenant=per_tenant,
    )
    _DECLARED[key] = setting
    return setting


def declared() -> dict[str, Setting[Any]]:
    """Every declared setting by key (a copy)."""
    return dict(_DECLARED)


def forget(key: str) -> None:
    """Drop a declaration (tests declare their own settings and clean up)."""
    _DECLARED.pop(key, None)


def dumps(data: Any) -> str:
    """JSON text of stored values (compact, keys sorted)."""
    return json.dumps(data, separators=(",", ":"), sort_keys=True)
