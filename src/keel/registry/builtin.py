"""The built-in kinds: `sql_query` (one read-only SELECT) and `json_schema` (UI definitions)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from keel.registry.kinds import register_kind
from keel.registry.schemacheck import check_schema
from keel.registry.sqlcheck import MAX_LENGTH, check_select

__all__ = ["JsonSchema", "SqlQuery"]


class SqlQuery(BaseModel):
    """A read-only SQL query (one SELECT)."""

    sql: str = Field(min_length=1, max_length=MAX_LENGTH)
    description: str = Field(default="", max_length=2000)


class JsonSchema(BaseModel):
    """A JSON Schema document describing a UI form or view."""

    document: dict[str, Any]
    description: str = Field(default="", max_length=2000)


def _sql(query: SqlQuery) -> list[str]:
    return check_select(query.sql)


def _schema(schema: JsonSchema) -> list[str]:
    return check_schema(schema.document)


register_kind("sql_query", SqlQuery, validators=[_sql], text_fields=["sql", "description"])
register_kind("json_schema", JsonSchema, validators=[_schema], text_fields=["description"])
