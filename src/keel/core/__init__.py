"""Core: configuration, database and migrations, request context, errors, ids, module plumbing."""

from keel.core.config import Config
from keel.core.context import TraceContext, current_trace
from keel.core.database import Base, Database
from keel.core.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    KeelError,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    StartupError,
    Unauthenticated,
    ValidationFailed,
)
from keel.core.ids import new_id
from keel.core.modules import KeelModule, LandingLink, MiddlewareSpec, Slot

__all__ = [
    "BadRequest",
    "Base",
    "Config",
    "Conflict",
    "Database",
    "Forbidden",
    "KeelError",
    "KeelModule",
    "LandingLink",
    "MiddlewareSpec",
    "NotFound",
    "PayloadTooLarge",
    "ServiceUnavailable",
    "Slot",
    "StartupError",
    "TraceContext",
    "Unauthenticated",
    "ValidationFailed",
    "current_trace",
    "new_id",
]
