"""The identity module's registration with the kernel."""

from __future__ import annotations

from keel.core.modules import KeelModule

__all__ = ["identity_module"]


def identity_module() -> KeelModule:
    """Identity's contributions: for now its CLI (`keel user …`)."""
    from keel.identity.cli import user_cli

    return KeelModule(name="identity", cli=user_cli, cli_name="user")
