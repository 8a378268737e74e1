"""Who is calling (defined in `keel.core.principal`, re-exported for identity's users)."""

from keel.core.principal import (
    PRINCIPAL_KEY,
    Principal,
    Via,
    current_principal,
    require_user,
)

__all__ = ["PRINCIPAL_KEY", "Principal", "Via", "current_principal", "require_user"]
