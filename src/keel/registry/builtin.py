"""The built-in kinds: `sql_query` (one read-only SELECT) and `json_schema` (UI definitions);
`register_sql_kind` registers further SQL kinds with their own functions and tables."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, Field

from keel.registry.kinds import Kind, register_kind
from keel.registry.schemacheck import check_schema
from keel.registry.sqlcheck import MAX_LENGTH, check_select, sql_normalizer, sql_problems

__all__ = ["JsonSchema", "SqlQuery", "register_sql_kind"]


class SqlQuery(BaseModel):
    """A read-only SQL query (one SELECT)."""

    sql: str = Field(min_length=1, max_length=MAX_LENGTH)
    description: str = Field(default="", max_length=2000)


class JsonSchema(BaseModel):
    """A JSON Schema document describing a UI form or view."""

    document: dict[str, Any]
    description: str = Field(default="", max_length=2000)


def _schema(schema: JsonSchema) -> list[str]:
    return check_schema(schema.document)


def register_sql_kind(
    name: str,
    *,
    functions: Iterable[str] = (),
    tables: Iterable[str] | None = None,
    description: str = "",
) -> Kind:
    """Register a kind of read-only SQL query (content `SqlQuery`), checked like `sql_query`.

    `functions` are accepted on top of the deployment's allowlist; `tables`, when given, are
    the only tables (`name` or `schema.name`, each part as PostgreSQL reads it: unquoted
    folded to lower case, `"Quoted"` exact) its queries may read; a malformed entry is a
    `ValueError` here. The stored `sql` is the checker's rendering of the query, so what is
    served is what was checked.
    """
    names = tuple(name.lower() for name in functions)
    permitted = None if tables is None else tuple(tables)
    check_select("SELECT 1", tables=permitted)  # a malformed table entry raises here
    rewrite = sql_normalizer(names, permitted)

    def check(query: SqlQuery) -> list[str]:
        return sql_problems(query.sql, functions=names, tables=permitted)

    def normalize(query: SqlQuery) -> SqlQuery:
        return query.model_copy(update={"sql": rewrite(query.sql)})

    return register_kind(
        name,
        SqlQuery,
        validators=[check],
        text_fields=["sql", "description"],
        description=description,
        normalize=normalize,
    )


register_sql_kind("sql_query")
register_kind("json_schema", JsonSchema, validators=[_schema], text_fields=["description"])
