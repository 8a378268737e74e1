"""Audit trail: every change recorded in its own transaction, hash-chained, verifiable."""

from keel.audit.api import audited_read
from keel.audit.context import Actor, bind_actor, current_actor, reset_actor, system_actor
from keel.audit.module import audit_module
from keel.audit.service import EventFilter, Verification, diff, record, seal, verify

__all__ = [
    "Actor",
    "EventFilter",
    "Verification",
    "audit_module",
    "audited_read",
    "bind_actor",
    "current_actor",
    "diff",
    "record",
    "reset_actor",
    "seal",
    "system_actor",
    "verify",
]
