"""The public names each package promises (httpx's habit: a test pins them)."""

from __future__ import annotations

import importlib

import pytest

import keel

EXPECTED = {
    "keel": ["Config", "Keel", "KeelError", "KeelModule", "__version__", "create_app", "install"],
    "keel.settings": [
        "MASK",
        "Reading",
        "Setting",
        "Source",
        "declare",
        "declared",
        "settings_module",
        "store",
    ],
}


def test_top_level_exports() -> None:
    """`keel` exports exactly the kernel's user-facing names."""
    assert sorted(keel.__all__) == sorted(EXPECTED["keel"])


def test_settings_exports() -> None:
    """`keel.settings` exports exactly its declared public names."""
    assert sorted(importlib.import_module("keel.settings").__all__) == EXPECTED["keel.settings"]


@pytest.mark.parametrize(
    "name", ["keel.core", "keel.observability", "keel.protection", "keel.identity", "keel.settings"]
)
def test_every_exported_name_exists(name: str) -> None:
    """Each module's `__all__` names only things that exist."""
    module = importlib.import_module(name)
    for exported in module.__all__:
        assert hasattr(module, exported), f"{name}.{exported}"
