"""The `sql_query` kind's check: exactly one read-only SELECT, as sqlglot parses it.

It refuses rather than guesses: anything the parser cannot place, or whose meaning depends on
server settings, is a problem. It never runs the SQL.
"""

from __future__ import annotations

import logging
import re

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

__all__ = ["SIDE_EFFECTS", "check_select"]

MAX_LENGTH = 100_000

SIDE_EFFECTS = frozenset(
    {
        "pg_sleep",
        "pg_sleep_for",
        "pg_sleep_until",
        "set_config",
        "nextval",
        "setval",
        "pg_terminate_backend",
        "pg_cancel_backend",
        "pg_reload_conf",
        "pg_rotate_logfile",
        "pg_notify",
        "pg_read_file",
        "pg_read_binary_file",
        "pg_ls_dir",
        "pg_stat_file",
        "pg_switch_wal",
        "pg_promote",
        "pg_export_snapshot",
        "pg_import_system_collations",
        "pg_logical_emit_message",
        "pg_drop_replication_slot",
        "pg_replication_origin_create",
        "pg_file_write",
        "pg_file_unlink",
        "pg_file_rename",
        "query_to_xml",
        "query_to_xml_and_xmlschema",
        "query_to_xmlschema",
        "cursor_to_xml",
        "txid_current",
        "pg_current_xact_id",
    }
)
"""Functions that change state, wait, read files or run SQL given as text."""

_PREFIXES = ("lo_", "dblink", "pg_advisory", "pg_try_advisory", "pg_create_", "pg_drop_")

# Statement classes that are never part of a read-only query, wherever they appear.
_FORBIDDEN: tuple[type[exp.Expression], ...] = (
    exp.Insert,
    exp.Update,
    exp.Delete,
    exp.Merge,
    exp.Create,
    exp.Drop,
    exp.Alter,
    exp.Command,
    exp.Copy,
    exp.TruncateTable,
    exp.Set,
    exp.Transaction,
    exp.Commit,
    exp.Rollback,
    exp.Grant,
    exp.Pragma,
    exp.Use,
    exp.Into,
    exp.Lock,
    exp.Semicolon,
)
_ROOTS: tuple[type[exp.Expression], ...] = (exp.Select, exp.SetOperation, exp.Subquery)
_UNICODE_ESCAPE = re.compile(r"u&\s*['\"]", re.IGNORECASE)


def _function_name(node: exp.Func) -> str:
    return (node.name if isinstance(node, exp.Anonymous) else node.sql_name()).lower()


def _surface(sql: str) -> list[str]:
    """Problems visible before parsing: text whose meaning the parser might not share."""
    if not sql.strip():
        return ["the query is empty"]
    if len(sql) > MAX_LENGTH:
        return [f"the query is longer than {MAX_LENGTH} characters"]
    problems = []
    if "\x00" in sql:
        problems.append("the query contains a NUL character")
    if "\\" in sql:
        problems.append("backslashes are refused: their meaning depends on server settings")
    if _UNICODE_ESCAPE.search(sql):
        problems.append('U&"..." Unicode-escape identifiers and strings are refused')
    if "/*!" in sql or "/*+" in sql:
        problems.append("executable or hint comments (/*! */, /*+ */) are refused")
    return problems


def _parse(sql: str) -> exp.Expr | str:
    """The one statement in `sql`, or why there is not exactly one."""
    # sqlglot logs a warning for each statement it falls back to an opaque Command for; the
    # check reports those itself.
    logger = logging.getLogger("sqlglot")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        statements = [s for s in sqlglot.parse(sql, read="postgres") if s is not None]
    except (ParseError, TokenError) as exc:
        return f"the query does not parse: {str(exc).splitlines()[0][:200]}"
    except RecursionError:
        return "the query nests too deeply to be checked"
    finally:
        logger.setLevel(level)
    if len(statements) != 1:
        return f"exactly one statement is allowed, found {len(statements)}"
    return statements[0]


def _node_problem(node: exp.Expr) -> str | None:
    if isinstance(node, exp.Into):
        return "SELECT ... INTO writes a table"
    if isinstance(node, exp.Lock):
        return "locking clauses (FOR UPDATE, FOR SHARE, ...) are refused"
    if isinstance(node, _FORBIDDEN):
        return f"{node.key.upper()} is not allowed in a read-only query"
    if isinstance(node, exp.Func):
        name = _function_name(node)
        if name in SIDE_EFFECTS or name.startswith(_PREFIXES):
            return f"the function {name}() has side effects"
    return None


def check_select(sql: str) -> list[str]:
    """Problems that keep `sql` from being one read-only SELECT (empty: it is one)."""
    problems = _surface(sql)
    if problems:
        return problems
    root = _parse(sql)
    if isinstance(root, str):
        return [root]
    if not isinstance(root, _ROOTS):
        return [f"only SELECT queries are allowed, not {root.key.upper()}"]
    try:
        found = {_node_problem(node) for node in root.walk()}
    except RecursionError:
        return ["the query nests too deeply to be checked"]
    return sorted(problem for problem in found if problem is not None)
