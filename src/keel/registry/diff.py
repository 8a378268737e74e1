"""Differences between two versions' content: JSON pointers added, removed and changed, and
unified text diffs of the kind's text fields."""

from __future__ import annotations

import difflib
from typing import Any

__all__ = ["structural_diff", "text_diffs"]

_ESCAPES = str.maketrans({"~": "~0", "/": "~1"})


def _walk(before: Any, after: Any, pointer: str, out: dict[str, list[dict[str, Any]]]) -> None:
    if isinstance(before, dict) and isinstance(after, dict):
        for key in sorted(set(before) | set(after)):
            here = f"{pointer}/{str(key).translate(_ESCAPES)}"
            if key not in after:
                out["removed"].append({"path": here, "value": before[key]})
            elif key not in before:
                out["added"].append({"path": here, "value": after[key]})
            else:
                _walk(before[key], after[key], here, out)
        return
    if isinstance(before, list) and isinstance(after, list):
        for index in range(max(len(before), len(after))):
            here = f"{pointer}/{index}"
            if index >= len(after):
                out["removed"].append({"path": here, "value": before[index]})
            elif index >= len(before):
                out["added"].append({"path": here, "value": after[index]})
            else:
                _walk(before[index], after[index], here, out)
        return
    if before != after or type(before) is not type(after):
        out["changed"].append({"path": pointer or "/", "before": before, "after": after})


def structural_diff(before: Any, after: Any) -> dict[str, list[dict[str, Any]]]:
    """What changed from `before` to `after`, as JSON pointers (RFC 6901)."""
    out: dict[str, list[dict[str, Any]]] = {"added": [], "removed": [], "changed": []}
    _walk(before, after, "", out)
    return out


def text_diffs(
    before: dict[str, Any], after: dict[str, Any], fields: tuple[str, ...], labels: tuple[str, str]
) -> dict[str, str]:
    """A unified diff per text field that differs, keyed by field name."""
    found = {}
    for field in fields:
        old, new = before.get(field), after.get(field)
        if old == new:
            continue
        lines = difflib.unified_diff(
            str(old or "").splitlines(keepends=True),
            str(new or "").splitlines(keepends=True),
            fromfile=f"{field}@{labels[0]}",
            tofile=f"{field}@{labels[1]}",
        )
        found[field] = "".join(line if line.endswith("\n") else line + "\n" for line in lines)
    return found
