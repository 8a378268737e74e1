"""Versioned registry: assets of registered kinds with immutable versions, validated,
published (one at a time), rolled back and diffed, with impact analysis; consumers read the
published versions from an in-memory cache. It never rewrites a version or its history."""

import keel.registry.builtin  # noqa: F401 - registers sql_query and json_schema
from keel.registry.builtin import JsonSchema, SqlQuery, register_sql_kind
from keel.registry.cache import Published, PublishedCache, cache_of, published
from keel.registry.kinds import Kind, Ref, get_kind, register_kind, registered_kinds
from keel.registry.module import registry_module
from keel.registry.run import run_query
from keel.registry.sqlcheck import allow_functions, canonical_sql, check_select

__all__ = [
    "JsonSchema",
    "Kind",
    "Published",
    "PublishedCache",
    "Ref",
    "SqlQuery",
    "allow_functions",
    "cache_of",
    "canonical_sql",
    "check_select",
    "get_kind",
    "published",
    "register_kind",
    "register_sql_kind",
    "registered_kinds",
    "registry_module",
    "run_query",
]
