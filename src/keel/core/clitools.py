"""Shared pieces of the `keel` command: one-line failures, config loading, JSON output.

Every module's CLI uses these, so all commands fail, print and read configuration alike.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from keel.core.config import Config
from keel.core.errors import KeelError

__all__ = [
    "DataDirOption",
    "JsonOption",
    "err",
    "fail",
    "load_config",
    "on_config",
    "out",
    "print_json",
    "run",
]

T = TypeVar("T")

out = Console()
err = Console(stderr=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
DataDirOption = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Directory for SQLite and local state [env: KEEL_DATA_DIR]."),
]


def fail(message: str, *, hint: str | None = None, code: int = 1) -> NoReturn:
    """Print `keel: error: message` (and a hint) on stderr and exit with `code`."""
    # Messages carry user input (emails, paths): escaped, so brackets are text, not markup.
    err.print(f"[bold red]keel: error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    if hint:
        err.print(f"  [dim]hint:[/] {escape(hint)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


_CONFIG_HOOKS: dict[str, Callable[[Config], None]] = {}


def on_config(name: str, hook: Callable[[Config], None]) -> None:
    """Run `hook` on the configuration every command loads (`keel worker` and `keel serve`
    included), once it is read: a module applies its part of the configuration to the process
    there. A hook raising a KeelError stops the command with its one line (exit 2). `name`
    identifies the hook: registering it again replaces it."""
    _CONFIG_HOOKS[name] = hook


def load_config(**overrides: Any) -> Config:
    """The configuration from environment and `keel.toml`, with command-line overrides, after
    every `on_config` hook applied it to this process."""
    try:
        config = Config(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "configuration"
        message = first["msg"].removeprefix("Value error, ")
        fail(
            f"invalid configuration: {field}: {message}",
            hint=f"check KEEL_{field.upper().replace('.', '__')} (or `{field}` in keel.toml)",
            code=2,
        )
    for hook in list(_CONFIG_HOOKS.values()):
        try:
            hook(config)
        except KeelError as exc:
            fail(exc.detail, hint=exc.hint, code=2)
    return config


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run `coroutine`, turning Keel errors into one-line failures."""
    try:
        return asyncio.run(coroutine)
    except KeelError as exc:
        fail(exc.detail, hint=exc.hint)


def print_json(data: Any) -> None:
    """Write `data` as indented JSON to stdout."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
