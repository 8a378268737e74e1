"""Asset kinds: `register_kind(name, model, ...)` declares what an asset's content is, how it
is validated and which of its values name other assets (`Ref`)."""

from __future__ import annotations

import re
from collections.abc import (
    Callable,
    Iterable,
    Iterator,
    Mapping,
    MutableMapping,
    MutableSequence,
    MutableSet,
    Sequence,
)
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from keel.core.errors import NotFound, ValidationFailed
from keel.registry.schemas import NAME_PATTERN

__all__ = ["Kind", "Ref", "get_kind", "register_kind", "registered_kinds"]

Validator = Callable[[Any], Iterable[str] | None]
"""Takes the parsed content; returns (or raises `ValueError` with) problem messages."""
Normalizer = Callable[[Any], BaseModel]
"""Takes the parsed content of a new version; returns the content to store instead."""

_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")
_ASSET_NAME = re.compile(NAME_PATTERN)
_SEQUENCES = {list, tuple, set, frozenset, Sequence, MutableSequence, AbstractSet, MutableSet}
_MAPPINGS = {dict, Mapping, MutableMapping}
_KEY_AND_VALUE = 2


@dataclass(frozen=True, slots=True)
class Ref:
    """Marks a str (`Annotated[str, Ref("kind")]`) as the name of an asset of `kind` in the
    same tenant. It may sit in a field, in lists, dict values, optional values and nested
    models; `register_kind` refuses it where it cannot be followed (a dict key, a union of
    several types, a recursive model, a non-str value)."""

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
    """(path, referenced kind, many) for every `Ref`: the path is a JSON pointer to the
    value, `*` standing for any item of a list or value of a dict (`/widgets/*/query`);
    `many` says whether it has a `*`."""
    normalize: Normalizer | None = None
    """Rewrites a new version's content before it is stored (e.g. SQL in its checked form)."""

    def parse(self, data: Any, *, pointer: str = "/data") -> BaseModel:
        """`data` as the kind's model; `ValidationFailed` (422) naming each bad field,
        including a referenced name that no asset can have."""
        try:
            content = self.model.model_validate(data)
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
        bad = [
            where
            for where, _, name in self.references_at(content)
            if not _ASSET_NAME.fullmatch(name)
        ]
        if bad:
            raise ValidationFailed(
                f"the content of this {self.name} names assets that cannot exist",
                errors=[
                    {
                        "location": "body",
                        "pointer": pointer + where,
                        "detail": "an asset name is 1-200 letters, digits, '.', '_' or '-', "
                        "starting with a letter or digit",
                        "code": "invalid_reference",
                    }
                    for where in bad
                ],
            )
        return content

    def problems(self, content: BaseModel) -> list[str]:
        """What the kind's validators find wrong with parsed `content` (empty: valid)."""
        found: list[str] = []
        for validator in self.validators:
            try:
                found.extend(validator(content) or ())
            except ValueError as exc:
                found.append(str(exc))
        return found

    def references_at(self, content: BaseModel) -> list[tuple[str, str, str]]:
        """(JSON pointer, kind, name) of every reference `content` makes."""
        data = content.model_dump(mode="json")
        found: list[tuple[str, str, str]] = []
        for path, kind, _ in self.refs:
            for where, value in _follow(data, path.split("/")[1:], ""):
                if value is not None:
                    found.append((where, kind, str(value)))
        return found

    def references(self, content: BaseModel) -> list[tuple[str, str]]:
        """The (kind, name) pairs `content` references, sorted, without duplicates."""
        return sorted({(kind, name) for _, kind, name in self.references_at(content)})


_KINDS: dict[str, Kind] = {}


def _escape(part: str) -> str:
    return part.replace("~", "~0").replace("/", "~1")


def _unescape(part: str) -> str:
    return part.replace("~1", "/").replace("~0", "~")


def _follow(data: Any, parts: list[str], where: str) -> Iterator[tuple[str, Any]]:
    """The values at `parts` (`*`: every item or value) below `data`, with their pointers."""
    if not parts:
        yield where, data
        return
    head, rest = parts[0], parts[1:]
    if head == "*":
        if isinstance(data, list):
            for index, item in enumerate(data):
                yield from _follow(item, rest, f"{where}/{index}")
        elif isinstance(data, dict):
            for key, item in data.items():
                yield from _follow(item, rest, f"{where}/{_escape(str(key))}")
    elif isinstance(data, dict) and _unescape(head) in data:
        yield from _follow(data[_unescape(head)], rest, f"{where}/{head}")


class _Walk:
    """Finds the `Ref` markers in a model's annotations, refusing places it cannot follow."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.stack: list[type[BaseModel]] = []
        self.recursive: set[type[BaseModel]] = set()

    def fail(self, path: str, why: str) -> ValueError:
        return ValueError(f"kind {self.kind!r}: Ref at {path or '/'}: {why}")

    def model(self, model: type[BaseModel], path: str) -> list[tuple[str, str]]:
        if model in self.stack:
            self.recursive.add(model)
            return []
        self.stack.append(model)
        try:
            found: list[tuple[str, str]] = []
            for field, info in model.model_fields.items():
                found.extend(
                    self.annotation(
                        info.annotation, tuple(info.metadata), f"{path}/{_escape(field)}"
                    )
                )
        finally:
            self.stack.pop()
        if model in self.recursive and found:
            raise self.fail(path, "a model that contains itself cannot carry references")
        return found

    def annotation(  # noqa: PLR0911 - one return per kind of annotation
        self, annotation: Any, metadata: tuple[Any, ...], path: str
    ) -> list[tuple[str, str]]:
        origin = get_origin(annotation)
        if origin is Annotated:
            args = get_args(annotation)
            return self.annotation(args[0], (*args[1:], *metadata), path)
        markers = [marker for marker in metadata if isinstance(marker, Ref)]
        if markers:
            if annotation is not str:
                raise self.fail(path, "Ref marks a str (use list[Annotated[str, Ref(...)]])")
            return [(path, markers[0].kind)]
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return self.model(annotation, path)
        args = get_args(annotation)
        if origin is Union or origin is UnionType:
            options = [arg for arg in args if arg is not type(None)]
            found = [self.annotation(arg, (), path) for arg in options]
            if len(options) > 1 and any(found):
                raise self.fail(path, "a union of several types cannot carry references")
            return found[0] if found else []
        if origin in _MAPPINGS:
            if args and self.annotation(args[0], (), path):
                raise self.fail(path, "a dict key cannot be a reference")
            if len(args) != _KEY_AND_VALUE:
                return []
            return self.annotation(args[1], (), f"{path}/*")
        if origin in _SEQUENCES:
            items = [arg for arg in args if arg is not Ellipsis]
            found = [self.annotation(arg, (), f"{path}/*") for arg in items]
            if origin is tuple and Ellipsis not in args and any(found):
                raise self.fail(path, "use tuple[X, ...] or a list for references")
            return found[0] if found else []
        if any(self.annotation(arg, (), path) for arg in args):
            raise self.fail(path, f"references inside {annotation!r} are not followed")
        return []


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
    a name twice is an error, so two modules cannot fight over a kind; so is a `Ref` the
    registry cannot follow.
    """
    if not _NAME.fullmatch(name):
        raise ValueError(f"kind {name!r}: use 1-63 lower-case letters, digits and _")
    if name in _KINDS:
        raise ValueError(f"kind {name!r} is already registered")
    refs = [(path, target, "*" in path) for path, target in _Walk(name).model(model, "")]
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
