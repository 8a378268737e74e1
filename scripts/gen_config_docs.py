"""Write docs/configuration.md from the Config model (`--check`: fail if it is stale)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo

from keel.core.config import Config

TARGET = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"

HEADER = """# Configuration reference

Keel reads its boot-time configuration once, at start, from (highest first):

1. command-line options (`keel serve --port 9000`),
2. `KEEL_*` environment variables,
3. a TOML file: `keel.toml` in the working directory, or the file named by `KEEL_CONFIG_FILE`,
4. the defaults below.

List settings take comma-separated values in the environment (`KEEL_ALLOWED_HOSTS=a.example,
b.example`) and arrays in TOML. Unknown keys in `keel.toml` are an error. The configuration
cannot change while Keel runs; runtime operation settings are a separate module.
`keel config show` prints the effective values with secrets redacted.

This page is generated from `keel.core.config.Config` by `python scripts/gen_config_docs.py`;
`scripts/check` fails when it is out of date.

| setting | environment variable | default | description |
|---|---|---|---|
"""


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value: Any = field.default_factory()  # type: ignore[call-arg]  # pydantic types it loosely
    else:
        value = field.default
    if value is None:
        return "—"
    if isinstance(value, list):
        return "`[]`" if not value else f"`{', '.join(value)}`"
    if isinstance(value, Path):
        return f"`{value.as_posix()}`"
    return f"`{value}`"


def render() -> str:
    """The whole page."""
    rows = []
    for name, field in Config.model_fields.items():
        description = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{name}` | `KEEL_{name.upper()}` | {_default(field)} | {description} |")
    return HEADER + "\n".join(rows) + "\n"


def main() -> int:
    """Write the page, or with `--check` report whether it is current."""
    text = render()
    if "--check" in sys.argv[1:]:
        if not TARGET.exists() or TARGET.read_text(encoding="utf-8") != text:
            print(f"{TARGET.name} is stale: run python scripts/gen_config_docs.py")
            return 1
        return 0
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
