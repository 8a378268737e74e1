"""The `sql_query` kind's check: exactly one read-only SELECT, as sqlglot parses it.

It refuses rather than guesses: anything the parser cannot place, or whose meaning depends on
server settings, is a problem, and so is any comment (PostgreSQL nests `/* */` comments where
the parser does not) and any function not on the allowlist. It never runs the SQL.

The text a kind stores is `canonical_sql(...)`: the parser's own rendering of the statement it
checked, so the text that is served and run is exactly the text that was checked.
"""

from __future__ import annotations

import logging
import re
import string
from collections.abc import Callable, Iterable

import sqlglot
from sqlglot import exp
from sqlglot.dialects.postgres import Postgres
from sqlglot.errors import ParseError, TokenError

__all__ = [
    "SAFE_FUNCTIONS",
    "allow_functions",
    "allowed_functions",
    "canonical_sql",
    "check_select",
]

MAX_LENGTH = 100_000

SAFE_FUNCTIONS = frozenset(
    {
        # aggregates and windows
        "count", "sum", "avg", "min", "max", "array_agg", "string_agg", "bool_and",
        "bool_or", "every", "stddev", "stddev_pop", "stddev_samp", "variance", "var_pop",
        "var_samp", "corr", "covar_pop", "covar_samp", "percentile_cont", "percentile_disc",
        "mode", "json_agg", "jsonb_agg", "json_object_agg", "jsonb_object_agg",
        "row_number", "rank", "dense_rank", "percent_rank", "cume_dist", "ntile", "lag",
        "lead", "first_value", "last_value", "nth_value",
        # conditional
        "coalesce", "nullif", "greatest", "least", "num_nulls", "num_nonnulls",
        # strings
        "lower", "upper", "initcap", "length", "char_length", "character_length",
        "octet_length", "substring", "substr", "trim", "btrim", "ltrim", "rtrim", "lpad",
        "rpad", "concat", "concat_ws", "left", "right", "replace", "translate", "reverse",
        "repeat", "split_part", "strpos", "position", "starts_with", "overlay", "format",
        "to_char", "to_number", "md5", "ascii", "chr", "quote_ident", "quote_literal",
        "regexp_replace", "regexp_match", "regexp_matches", "regexp_split_to_array",
        "string_to_array", "array_to_string", "encode", "decode",
        # math
        "abs", "ceil", "ceiling", "floor", "round", "trunc", "sign", "sqrt", "cbrt", "power",
        "pow", "exp", "ln", "log", "log10", "mod", "div", "pi", "width_bucket", "random",
        # date and time
        "now", "current_date", "current_time", "current_timestamp", "localtime",
        "localtimestamp", "clock_timestamp", "statement_timestamp", "transaction_timestamp",
        "date_trunc", "date_part", "extract", "age", "to_date", "to_timestamp", "make_date",
        "make_time", "make_timestamp", "make_timestamptz", "make_interval", "justify_days",
        "justify_hours", "justify_interval", "isfinite", "timezone", "date_bin",
        # json
        "to_json", "to_jsonb", "row_to_json", "array_to_json", "json_build_object",
        "jsonb_build_object", "json_build_array", "jsonb_build_array", "json_typeof",
        "jsonb_typeof", "json_array_length", "jsonb_array_length", "json_each",
        "jsonb_each", "json_each_text", "jsonb_each_text", "json_array_elements",
        "jsonb_array_elements", "json_array_elements_text", "jsonb_array_elements_text",
        "json_object_keys", "jsonb_object_keys", "json_extract_path", "jsonb_extract_path",
        "json_extract_path_text", "jsonb_extract_path_text", "jsonb_strip_nulls",
        "jsonb_pretty", "jsonb_set", "jsonb_insert", "jsonb_path_query",
        "jsonb_path_exists", "jsonb_path_match", "jsonb_path_query_array",
        "jsonb_path_query_first",
        # arrays and sets
        "array_length", "cardinality", "array_position", "array_positions", "array_append",
        "array_prepend", "array_cat", "array_remove", "array_replace", "unnest",
        "generate_series", "array_lower", "array_upper", "array_ndims",
        # row constructors and quantifiers that sqlglot reads as calls
        "row", "all", "any", "some",
    }
)  # fmt: skip
"""PostgreSQL functions a query may call (lower case). Extend with `allow_functions()`."""

# sqlglot reads known functions and many operators as typed nodes; these are read-only.
_SAFE_NODES: tuple[type[exp.Expression], ...] = tuple(
    node
    for node in (
        getattr(exp, name, None)
        for name in (
            # operators and syntax sqlglot models as function nodes
            "And", "Or", "Xor", "Not", "Array", "Case", "If", "Cast", "TryCast", "Collate",
            "Exists", "ArrayContainedBy", "ArrayContainsAll", "ArrayOverlaps", "ArrayAny",
            "ArrayAll", "JSONExtract", "JSONExtractScalar", "JSONBExtract",
            "JSONBExtractScalar", "JSONBContains", "JSONBContainsTopKey",
            "JSONBContainsAnyTopKeys", "JSONBContainsAllTopKeys", "RegexpLike", "RegexpILike",
            "Struct", "Tuple", "Bracket",
            # aggregates and windows
            "Count", "Sum", "Avg", "Min", "Max", "ArrayAgg", "GroupConcat", "LogicalAnd",
            "LogicalOr", "Stddev", "StddevPop", "StddevSamp", "Variance", "VariancePop",
            "Corr", "CovarPop", "CovarSamp", "PercentileCont", "PercentileDisc", "Mode",
            "JSONArrayAgg", "JSONObjectAgg", "JSONBObjectAgg", "RowNumber", "Rank",
            "DenseRank", "PercentRank", "CumeDist", "Ntile", "Lag", "Lead", "FirstValue",
            "LastValue", "NthValue",
            # conditional
            "Coalesce", "Nullif", "Greatest", "Least",
            # strings
            "Lower", "Upper", "Initcap", "Length", "Substring", "Trim", "Pad", "Concat",
            "ConcatWs", "Left", "Right", "Replace", "Translate", "Reverse", "Repeat",
            "SplitPart", "StrPosition", "StartsWith", "Overlay", "Format", "TimeToStr",
            "ToChar", "ToNumber", "MD5", "SHA2Digest", "Ascii", "Chr", "RegexpReplace",
            "RegexpSplit", "StringToArray", "ArrayToString", "Encode", "Decode", "Hex",
            # math
            "Abs", "Ceil", "Floor", "Round", "Trunc", "Sign", "Sqrt", "Cbrt", "Pow", "Exp",
            "Ln", "Log", "Mod", "WidthBucket", "Rand",
            # date and time
            "CurrentDate", "CurrentTime", "CurrentTimestamp", "Localtime", "Localtimestamp",
            "TimestampTrunc", "DateTrunc", "Extract", "Date", "StrToDate", "StrToTime",
            "UnixToTime", "MakeInterval", "JustifyDays", "JustifyHours", "JustifyInterval",
            "CurrentUser", "SessionUser", "CurrentSchema",
            # arrays and sets
            "ArraySize", "ArrayPosition", "ArrayAppend", "ArrayPrepend", "ArrayConcat",
            "ArrayRemove", "Explode", "ExplodingGenerateSeries", "GenerateSeries",
        )
    )
    if isinstance(node, type) and issubclass(node, exp.Expression)
)  # fmt: skip

_extra_functions: set[str] = set()

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
_COMMENT = re.compile(r"/\*|\*/|--")
_PLACEHOLDER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NAME_PART = r'(?:[A-Za-z_][A-Za-z0-9_$]*|"(?:[^"]|"")+")'
_TABLE_ENTRY = re.compile(rf"({_NAME_PART})(?:\.({_NAME_PART}))?")
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


class _Dialect(Postgres):
    """PostgreSQL as sqlglot writes it, with `:name` placeholders kept as they were written
    (SQLAlchemy's `text()` binds them)."""

    class Generator(Postgres.Generator):  # type: ignore[valid-type, misc]
        """Renders named placeholders as `:name`."""

        def placeholder_sql(self, expression: exp.Placeholder) -> str:
            """`:name` (unnamed ones as PostgreSQL writes them)."""
            if expression.name:
                return f":{expression.name}"
            return str(super().placeholder_sql(expression))


def allow_functions(*names: str) -> None:
    """Let every `sql_query` check accept the functions `names` (deployment-wide; call at
    import time, before the kernel starts). A per-kind list goes to `register_sql_kind`."""
    for name in names:
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise ValueError(f"function name {name!r}: use lower-case letters, digits and _")
    _extra_functions.update(names)


def allowed_functions() -> frozenset[str]:
    """The function names every check accepts: `SAFE_FUNCTIONS` and `allow_functions()`."""
    return SAFE_FUNCTIONS | frozenset(_extra_functions)


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
    if _COMMENT.search(sql):
        problems.append(
            "comments and the character pairs /*, */ and -- are refused anywhere, also in "
            "strings (PostgreSQL nests /* */ comments where the checker does not)"
        )
    return problems


def _parse(sql: str) -> exp.Expr | str:
    """The one statement in `sql`, or why there is not exactly one."""
    # sqlglot logs a warning for each statement it falls back to an opaque Command for; the
    # check reports those itself.
    logger = logging.getLogger("sqlglot")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        statements = [s for s in sqlglot.parse(sql, read=_Dialect) if s is not None]
    except (ParseError, TokenError) as exc:
        return f"the query does not parse: {str(exc).splitlines()[0][:200]}"
    except RecursionError:
        return "the query nests too deeply to be checked"
    finally:
        logger.setLevel(level)
    if len(statements) != 1:
        return f"exactly one statement is allowed, found {len(statements)}"
    return statements[0]


def _fold(name: str) -> str:
    """An unquoted identifier as PostgreSQL reads it: ASCII letters folded to lower case
    (other letters are left as they are, as PostgreSQL does for UTF-8)."""
    return name.translate(_ASCII_LOWER)


def _identifier_key(part: exp.Expr | str) -> str:
    """One identifier as PostgreSQL compares it: unquoted folded, quoted exact."""
    if isinstance(part, exp.Identifier):
        return str(part.this) if part.quoted else _fold(str(part.this))
    if isinstance(part, str):
        return _fold(part)
    return _fold(part.name)


def _function_problem(node: exp.Func, allowed: frozenset[str]) -> str | None:
    parent = node.parent
    if (isinstance(parent, exp.Dot) and parent.expression is node) or (
        isinstance(parent, exp.Table) and parent.this is node and (parent.db or parent.catalog)
    ):
        return "schema-qualified function calls are refused"
    if isinstance(node, exp.Anonymous):
        if isinstance(node.this, exp.Identifier) and node.this.quoted:
            return "quoted function names are refused"
        name = _fold(node.name)
        if name in allowed:
            return None
    else:
        name = _fold(node.sql_name())
        if isinstance(node, _SAFE_NODES) or name in allowed:
            return None
    return f"the function {name}() is not on the allowlist"


def _type_problem(node: exp.DataType) -> str | None:
    if node.this == exp.DataType.Type.USERDEFINED:
        return (
            f"the type {node.sql(dialect=_Dialect)} is refused: only built-in types, "
            "unqualified (a user-defined type or domain can run its own functions)"
        )
    return None


def _node_problem(node: exp.Expr, allowed: frozenset[str]) -> str | None:
    if isinstance(node, exp.Into):
        return "SELECT ... INTO writes a table"
    if isinstance(node, exp.Lock):
        return "locking clauses (FOR UPDATE, FOR SHARE, ...) are refused"
    if isinstance(node, _FORBIDDEN):
        return f"{node.key.upper()} is not allowed in a read-only query"
    if isinstance(node, exp.Func):
        return _function_problem(node, allowed)
    return _syntax_problem(node)


def _syntax_problem(node: exp.Expr) -> str | None:
    """Operators, types and placeholders the check cannot vouch for."""
    if isinstance(node, exp.Operator):
        return "OPERATOR(...) syntax is refused"
    if isinstance(node, exp.DataType):
        return _type_problem(node)
    if isinstance(node, exp.Placeholder) and not _PLACEHOLDER.fullmatch(node.name or ""):
        return "placeholders are :name, a name of letters, digits and _ (not first a digit)"
    return None


def _table_key(entry: str) -> tuple[str, ...]:
    """An allowlist entry (`name` or `schema.name`, each part unquoted or `"quoted"`, read
    as PostgreSQL reads it) as the tuple of its identifiers."""
    match = _TABLE_ENTRY.fullmatch(entry)
    if match is None:
        raise ValueError(f"table {entry!r}: use name or schema.name")
    parts = []
    for part in match.groups():
        if part is None:
            continue
        if part.startswith('"'):
            exact = part[1:-1].replace('""', '"')
            if "." in exact:
                raise ValueError(f"table {entry!r}: use name or schema.name")
            parts.append(exact)
        else:
            parts.append(_fold(part))
    return tuple(parts)


def _top_with(root: exp.Expr) -> exp.With | None:
    """The WITH at the start of the statement (also around parentheses), if any."""
    node: exp.Expr | None = root
    while node is not None:
        found = node.args.get("with_") or node.args.get("with")
        if isinstance(found, exp.With):
            return found
        node = node.this if isinstance(node, exp.Subquery) else None
    return None


def _visible_ctes(table: exp.Table, top: exp.With | None) -> set[str]:
    """The CTE names an unqualified table reference at `table` may mean: in the main query
    every CTE; in a CTE's body the CTEs before it (WITH RECURSIVE: all of them)."""
    if top is None:
        return set()
    ctes = [cte for cte in top.expressions if isinstance(cte, exp.CTE)]
    names = [_identifier_key(cte.args["alias"].this) for cte in ctes]
    node: exp.Expr | None = table
    while node is not None and node.parent is not top:
        node = node.parent
    if node is None:
        return set(names)  # the main query
    if top.args.get("recursive"):
        return set(names)
    index = next(i for i, cte in enumerate(ctes) if cte is node)
    return set(names[:index])


def _is_catalog(parts: tuple[str, ...]) -> bool:
    first = parts[0].lower()
    if len(parts) == 1:
        return first.startswith("pg_")  # pg_catalog comes first on any search path
    return first.startswith("pg_") or first == "information_schema"


def _table_problems(root: exp.Expr, tables: Iterable[str] | None) -> list[str]:
    """Tables the query reads that it may not: with `tables`, any table not in it; without,
    the system catalogs. A WITH is allowed only at the start of the statement, and a name
    is a CTE only where PostgreSQL would read it as one."""
    top = _top_with(root)
    found = set()
    if any(node is not top for node in root.find_all(exp.With)):
        found.add("WITH is allowed only at the start of the query, not inside it")
    permitted = None if tables is None else {_table_key(entry) for entry in tables}
    for table in root.find_all(exp.Table):
        if not isinstance(table.this, exp.Identifier):
            continue  # a function in FROM: checked as a function
        raw = [table.args.get(arg) for arg in ("catalog", "db", "this")]
        parts = tuple(_identifier_key(part) for part in raw if part is not None)
        shown = ".".join(part.sql(dialect=_Dialect) for part in raw if part is not None)
        if any("." in part for part in parts):
            found.add(f"the table name {shown} is refused: a name part contains a dot")
        elif len(parts) > 2:
            found.add(f"the table name {shown} is refused: use name or schema.name")
        elif len(parts) == 1 and parts[0] in _visible_ctes(table, top):
            continue
        elif permitted is None:
            if _is_catalog(parts):
                found.add(f"the table {shown} is a system catalog, which queries may not read")
        elif parts not in permitted:
            found.add(f"the table {shown} is not one this kind may read")
    return sorted(found)


def check_select(
    sql: str, *, functions: Iterable[str] = (), tables: Iterable[str] | None = None
) -> list[str]:
    """Problems that keep `sql` from being one read-only SELECT (empty: it is one).

    `functions` are accepted on top of `allowed_functions()`; `tables`, when given, are the
    only tables (`name` or `schema.name`) the query may read.
    """
    problems = _surface(sql)
    if problems:
        return problems
    root = _parse(sql)
    if isinstance(root, str):
        return [root]
    if not isinstance(root, _ROOTS):
        return [f"only SELECT queries are allowed, not {root.key.upper()}"]
    allowed = allowed_functions() | {_fold(name) for name in functions}
    try:
        found = {_node_problem(node, allowed) for node in root.walk()}
        found.update(_table_problems(root, tables))
    except RecursionError:
        return ["the query nests too deeply to be checked"]
    return sorted(problem for problem in found if problem is not None)


def canonical_sql(sql: str) -> str | None:
    """The checker's own rendering of the one statement in `sql` (None: not exactly one
    statement, or text the check refuses before parsing). This is the text a `sql_query`
    stores and serves, so what runs is what was checked."""
    if _surface(sql):
        return None
    root = _parse(sql)
    if isinstance(root, str):
        return None
    try:
        return root.sql(dialect=_Dialect, pretty=True, comments=False)
    except RecursionError:
        return None


def sql_problems(
    sql: str, *, functions: Iterable[str] = (), tables: Iterable[str] | None = None
) -> list[str]:
    """`check_select` plus: `sql` is in its canonical form (what a kind stores)."""
    problems = check_select(sql, functions=functions, tables=tables)
    if not problems and canonical_sql(sql) != sql:
        problems.append(
            "the query is not in the form the registry stores; create a new draft from it"
        )
    return problems


def sql_normalizer(
    functions: Iterable[str] = (), tables: Iterable[str] | None = None
) -> Callable[[str], str]:
    """A function returning the canonical form of a query that passes the check, and any
    other query unchanged (its validation then reports the problems)."""
    names = tuple(functions)
    permitted = None if tables is None else tuple(tables)

    def normalize(sql: str) -> str:
        if check_select(sql, functions=names, tables=permitted):
            return sql
        return canonical_sql(sql) or sql

    return normalize
