"""Asset kinds: `register_kind(name, model, ...)` declares what an asset's content is, how it
is validated and which of its fields name other assets (`Ref`)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, get_args, get_origin

from pydantic import BaseModel, ValidationError

from keel.core.errors import NotFound, ValidationFailed

__all__ = ["Kind", "Ref", "get_kind", "register_kind", "registered_kinds"]

Validator = Callable[[Any], Iterable[str] | None]
"""Takes the parsed content; returns (or raises `ValueError` with) problem messages."""
Normalizer = Callable[[Any], BaseModel]
"""Takes the parsed content of a new version; returns the content to store instead."""

_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")


@dataclass(frozen=True, slots=True)
class Ref:
    """Marks a field (`Annotated[str, Ref("kind")]`, or a list of them) as the name of an
    asset of `kind` in the same tenant."""

    kind: str


@dataclass(frozen=True, slots=True)
class Kind:
    """A registered asset kind."""

    name: str
    model: type[BaseModel]
    validators: tuple[Validator, ...]
    text_fields: tuple[str, ...]
    description: str
    refs: tuple[tuple[str, str, bool], ...]
    """(field, referenced kind, is a list) for every `Ref` field."""
    normalize: Normalizer | None = None
    """Rewrites a new version's content before it is stored (e.g. SQL in its checked form)."""

    def parse(self, data: Any, *, pointer: str = "/data") -> BaseModel:
        """`data` as the kind's model; `ValidationFailed` (422) naming each bad field."""
        try:
            return self.model.model_validate(data)
        except ValidationError as exc:
            raise ValidationFailed(
                f"the content is not a valid {self.name}",
                errors=[
                    {
                        "location": "body",
                        "pointer": pointer + "".join(f"/{part}" for part in error["loc"]),
                        "detail": error["msg"],
                        "code": error["type"],
                    }
                    for error in exc.errors()
                ],
            ) from None

    def problems(self, content: BaseModel) -> list[str]:
        """What the kind's validators find wrong with parsed `content` (empty: valid)."""
        found: list[str] = []
        for validator in self.validators:
            try:
                found.extend(validator(content) or ())
            except ValueError as exc:
                found.append(str(exc))
        return found

    def references(self, content: BaseModel) -> list[tuple[str, str]]:
        """The (kind, name) pairs `content` references, sorted, without duplicates."""
        found: set[tuple[str, str]] = set()
        for field, kind, many in self.refs:
            value = getattr(content, field)
            if value is None:
                continue
            for name in value if many else (value,):
                found.add((kind, str(name)))
        return sorted(found)


_KINDS: dict[str, Kind] = {}


def _ref_of(annotation: Any, metadata: Sequence[Any]) -> tuple[str, bool] | None:
    for marker in metadata:
        if isinstance(marker, Ref):
            return marker.kind, False
    origin = get_origin(annotation)
    if origin is Annotated:
        args = get_args(annotation)
        return _ref_of(args[0], args[1:])
    for arg in get_args(annotation):
        inner = _ref_of(arg, ())
        if inner is not None:
            many = origin in {list, tuple, set, frozenset} or inner[1]
            return inner[0], many
    return None


def register_kind(
    name: str,
    model: type[BaseModel],
    *,
    validators: Sequence[Validator] = (),
    text_fields: Sequence[str] = (),
    description: str = "",
    normalize: Normalizer | None = None,
) -> Kind:
    """Register the asset kind `name` (lower-case, `_` allowed) with its content model.

    `validators` run when a version is validated and again when it is published;
    `text_fields` are shown as unified text diffs; `normalize` rewrites the content of each
    new version before it is stored (in a worker thread; it must be idempotent). Registering
    a name twice is an error, so two modules cannot fight over a kind.
    """
    if not _NAME.fullmatch(name):
        raise ValueError(f"kind {name!r}: use 1-63 lower-case letters, digits and _")
    if name in _KINDS:
        raise ValueError(f"kind {name!r} is already registered")
    refs = []
    for field, info in model.model_fields.items():
        found = _ref_of(info.annotation, info.metadata)
        if found is not None:
            refs.append((field, found[0], found[1]))
    unknown = [field for field in text_fields if field not in model.model_fields]
    if unknown:
        raise ValueError(f"kind {name!r}: text_fields {unknown} are not fields of the model")
    kind = Kind(
        name=name,
        model=model,
        validators=tuple(validators),
        text_fields=tuple(text_fields),
        description=description or (model.__doc__ or "").strip().split("\n")[0],
        refs=tuple(refs),
        normalize=normalize,
    )
    _KINDS[name] = kind
    return kind


def get_kind(name: str) -> Kind:
    """The registered kind `name`, or `NotFound`."""
    kind = _KINDS.get(name)
    if kind is None:
        raise NotFound(f"no asset kind {name!r}", hint=f"known kinds: {', '.join(sorted(_KINDS))}")
    return kind


def registered_kinds() -> list[Kind]:
    """Every registered kind, by name."""
    return [_KINDS[name] for name in sorted(_KINDS)]
