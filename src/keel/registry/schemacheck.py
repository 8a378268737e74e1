"""The `json_schema` kind's check: a structural look at a JSON Schema document for UI
definitions (types, properties, required, items, enum, bounds). It does not evaluate
`$ref`s or validate instances."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["check_schema"]

TYPES = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})
_NUMBERS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")
_COUNTS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties")
MAX_DEPTH = 32
_PAIRS = (("minimum", "maximum"), ("minLength", "maxLength"), ("minItems", "maxItems"))


def _check_type(document: Mapping[str, Any], pointer: str) -> list[str]:
    kind = document.get("type")
    if kind is None:
        return []
    names = kind if isinstance(kind, list) else [kind]
    if not names or not all(isinstance(n, str) and n in TYPES for n in names):
        return [f"{pointer}/type: must be one of {', '.join(sorted(TYPES))}"]
    return []


def _check_required(document: Mapping[str, Any], pointer: str) -> list[str]:
    required = document.get("required")
    if required is None:
        return []
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        return [f"{pointer}/required: must be a list of property names"]
    problems = []
    if len(set(required)) != len(required):
        problems.append(f"{pointer}/required: names a property twice")
    properties = document.get("properties")
    if isinstance(properties, Mapping):
        missing = [name for name in required if name not in properties]
        if missing:
            problems.append(f"{pointer}/required: {missing} are not declared properties")
    return problems


def _check_enum(document: Mapping[str, Any], pointer: str) -> list[str]:
    enum = document.get("enum")
    if enum is None:
        return []
    if not isinstance(enum, list) or not enum:
        return [f"{pointer}/enum: must be a non-empty list"]
    if len({repr(value) for value in enum}) != len(enum):
        return [f"{pointer}/enum: values must be distinct"]
    return []


def _check_bounds(document: Mapping[str, Any], pointer: str) -> list[str]:
    problems = []
    for key in _NUMBERS:
        value = document.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            problems.append(f"{pointer}/{key}: must be a number")
    for key in _COUNTS:
        value = document.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 0
        ):
            problems.append(f"{pointer}/{key}: must be a non-negative integer")
    for low, high in _PAIRS:
        a, b = document.get(low), document.get(high)
        if isinstance(a, int | float) and isinstance(b, int | float) and a > b:
            problems.append(f"{pointer or '/'}: {low} is greater than {high}")
    return problems


def check_schema(document: Any, pointer: str = "", depth: int = 0) -> list[str]:
    """Problems in `document` as a JSON Schema (empty: it looks like one)."""
    where = pointer or "/"
    if isinstance(document, bool):
        return []
    if not isinstance(document, Mapping):
        return [f"{where}: a schema must be an object or a boolean"]
    if depth > MAX_DEPTH:
        return [f"{where}: schemas nest deeper than {MAX_DEPTH}"]
    problems = _check_type(document, pointer)
    properties = document.get("properties")
    if properties is not None:
        if not isinstance(properties, Mapping):
            problems.append(f"{pointer}/properties: must be an object")
        else:
            for name, schema in properties.items():
                problems += check_schema(schema, f"{pointer}/properties/{name}", depth + 1)
    if "items" in document:
        problems += check_schema(document["items"], f"{pointer}/items", depth + 1)
    problems += _check_required(document, pointer)
    problems += _check_enum(document, pointer)
    problems += _check_bounds(document, pointer)
    return problems
