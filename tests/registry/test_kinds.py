"""Kinds: the sql_query check refuses anything but one read-only SELECT (hostile inputs
included) and accepts ordinary queries; the json_schema check; Ref fields; registration."""

from __future__ import annotations

from typing import Annotated

import pytest
from pydantic import BaseModel

from keel.core.errors import NotFound, ValidationFailed
from keel.registry import (
    Kind,
    Ref,
    SqlQuery,
    allow_functions,
    canonical_sql,
    check_select,
    get_kind,
    register_kind,
    register_sql_kind,
)
from keel.registry.diff import structural_diff
from keel.registry.kinds import _KINDS
from keel.registry.schemacheck import check_schema

HOSTILE = [
    "SELECT 1; DELETE FROM keel_users",
    "SELECT 1 --\n; DROP TABLE keel_users",
    "SELECT 1 /* /* */ ; DROP TABLE t; /* */",  # unterminated for PostgreSQL (nested)
    # PostgreSQL nests `/*` comments, also right after an opening `/*`; the parser does not:
    # each of these hides SQL from it that PostgreSQL runs.
    "/*/* */ -- */ WITH d AS (DELETE FROM victim RETURNING 1)\nSELECT 1",
    "SELECT 1 /*/* */ -- */ ; DELETE FROM victim",
    "SELECT 1 /*/* */ -- */ , pg_sleep(10)",
    "SELECT 1 /*/*/ */ -- */ , pg_sleep(10)",
    "SELECT 1 /* /*/* */ */ -- */ , pg_sleep(10)",
    "/*/**/*/ SELECT 1",
    "SELECT 1 --",
    "SELECT 1 */",
    "SELECT * FROM t WHERE note = 'DELETE FROM t; -- not code'",
    "SELECT 1 /* ; DROP TABLE t */",
    "SELECT '/*', pg_sleep(1), '*/'",
    "select 'a\\'; DELETE FROM t; --'",
    "SELECT E'a\\'; DELETE FROM t; --'",
    "DELETE FROM keel_users",
    "INSERT INTO t VALUES (1)",
    "UPDATE t SET a = 1",
    "DROP TABLE t",
    "CREATE TABLE t (a int)",
    "ALTER TABLE t ADD COLUMN b int",
    "TRUNCATE t",
    "MERGE INTO t USING u ON t.id = u.id WHEN MATCHED THEN DELETE",
    "COPY t TO '/tmp/x'",
    "GRANT ALL ON t TO public",
    "SET ROLE postgres",
    "BEGIN",
    "EXPLAIN ANALYZE DELETE FROM t",
    "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
    "WITH u AS (UPDATE t SET a = 1 RETURNING a) SELECT a FROM u",
    "WITH i AS (INSERT INTO t VALUES (1) RETURNING *) SELECT 1",
    "SELECT * INTO copy_of_t FROM t",
    "SELECT * FROM t FOR UPDATE",
    "SELECT * FROM t FOR SHARE",
    "SELECT * FROM t FOR NO KEY UPDATE",
    "SELECT pg_sleep(10)",
    "SELECT public.pg_sleep(10)",
    "SELECT set_config('role', 'postgres', false)",
    "SELECT nextval('s')",
    "SELECT setval('s', 1)",
    "SELECT pg_terminate_backend(1)",
    "SELECT lo_import('/etc/passwd')",
    "SELECT lo_unlink(1)",
    "SELECT dblink_exec('host=x', 'DROP TABLE t')",
    "SELECT * FROM dblink('host=x', 'SELECT 1') AS t(a int)",
    "SELECT query_to_xml('DELETE FROM t', true, true, '')",
    "SELECT pg_read_file('/etc/passwd')",
    "SELECT pg_advisory_lock(1)",
    "SELECT a FROM t WHERE a IN (SELECT nextval('s'))",
    'SELECT U&"\\0064" FROM t',
    "SELECT U&'d\\0061t\\+000061' FROM t",
    "SELECT /*! DROP TABLE t */ 1",
    "",
    "   ",
    ";",
    "VALUES (1)",
    "SELECT 1\x00",
    "SELEC 1",
    'SELECT "pg_sleep"(1)',
    "SELECT pg_catalog.pg_sleep(1)",
    "SELECT * FROM pg_sleep(1)",
    "SELECT (pg_sleep(1))::text",
    "SELECT * FROM t WHERE EXISTS (SELECT set_config('a', 'b', true))",
    "SELECT pg_notify('x', 'y')",
    # Not side-effect free, and missing from the blocklist this allowlist replaced.
    "SELECT pg_stat_reset()",
    "SELECT pg_stat_reset_shared('bgwriter')",
    "SELECT pg_stat_statements_reset()",
    "SELECT * FROM pg_logical_slot_get_changes('s', NULL, NULL)",
    "SELECT pg_replication_slot_advance('s', '0/0')",
    "SELECT pg_replication_origin_drop('o')",
    "SELECT pg_wal_replay_pause()",
    "SELECT pg_wal_replay_resume()",
    "SELECT pg_backup_start('x')",
    "SELECT pg_start_backup('x')",
    "SELECT pg_log_backend_memory_contexts(1)",
    "SELECT pg_file_sync('x')",
    "SELECT * FROM pg_ls_logdir()",
    "SELECT * FROM pg_ls_waldir()",
    "SELECT * FROM pg_ls_tmpdir()",
    "SELECT current_setting('search_path')",
    "SELECT my_function_that_deletes(1)",
    "SELECT a FROM t WHERE my_function_that_deletes(a) > 0",
    "SELECT s.lower(a) FROM t",
    "SELECT * FROM s.generate_series(1, 2)",
    "SELECT * FROM (DELETE FROM t RETURNING *) AS d",
    "SELECT 1 UNION (DELETE FROM t RETURNING 1)",
    "DO $$ BEGIN DELETE FROM t; END $$",
    "CALL p()",
    "PREPARE x AS SELECT 1",
    "LISTEN x",
    "NOTIFY x",
    "REFRESH MATERIALIZED VIEW v",
    "VACUUM",
    "SELECT " + "(" * 60 + "1" + ")" * 60,
    "SELECT " + "(" * 5000 + "1" + ")" * 5000,
    "SELECT 1" + " " * 100_000,
    # WITH only at the start: a nested one could shadow a table name elsewhere.
    "SELECT * FROM (WITH s AS (SELECT 1) SELECT * FROM s) AS x",
    "SELECT 1 UNION (WITH s AS (SELECT 1) SELECT * FROM s)",
    "SELECT (WITH s AS (SELECT 1) SELECT * FROM s)",
    "WITH a AS (WITH b AS (SELECT 1) SELECT * FROM b) SELECT * FROM a",
    # System catalogs (unqualified pg_ names resolve to pg_catalog first).
    "SELECT * FROM pg_authid",
    "SELECT rolpassword FROM pg_catalog.pg_authid",
    "SELECT * FROM PG_CATALOG.PG_SHADOW",
    "SELECT * FROM information_schema.tables",
    "SELECT * FROM pg_toast.pg_toast_1255",
    "SELECT * FROM t WHERE a IN (SELECT usename FROM pg_user)",
    # Identifiers PostgreSQL would not read as the checker did.
    'SELECT "NUM_NULLS"(1)',
    'SELECT "num_nulls"(1)',
    "SELECT NUM_NULL\u017f(1)",
    "SELECT RAN\u212a() OVER ()",
    'SELECT * FROM "a.b"',
    "SELECT * FROM mydb.public.t",
    # Ways past the function allowlist: operators and user-defined types.
    "SELECT 1 OPERATOR(pg_catalog.+) 2",
    "SELECT a OPERATOR(rv_probe.===) b FROM t",
    "SELECT CAST(1 AS rv_probe.dom)",
    "SELECT 1::dom",
    "SELECT CAST(a AS dom[]) FROM t",
    "SELECT CAST(1 AS pg_catalog.int4)",
    "SELECT * FROM t WHERE a = CAST(:a AS my_type)",
    # Placeholders PostgreSQL's lexer would read differently.
    "SELECT :a$$",
    "SELECT * FROM t WHERE a = :a$b",
    "SELECT ?",
]

GOOD = [
    "SELECT 1",
    "SELECT 1;",
    "select id, email from keel_users where tenant_id = :tenant order by id limit 10",
    "SELECT a, count(*) FROM t GROUP BY a HAVING count(*) > 1",
    "WITH recent AS (SELECT * FROM t WHERE at > now() - interval '1 day') SELECT * FROM recent",
    "SELECT a FROM t UNION ALL SELECT b FROM u",
    "SELECT a FROM t INTERSECT SELECT b FROM u",
    "SELECT t.a, u.b FROM t JOIN u ON u.id = t.id LEFT JOIN v ON v.id = u.id",
    "SELECT coalesce(a, 'x'), lower(b), date_trunc('day', at) FROM t",
    "SELECT * FROM t WHERE note = 'DELETE FROM t; not code'",
    "SELECT row_number() OVER (PARTITION BY a ORDER BY b) FROM t",
    "SELECT * FROM generate_series(1, 3)",
    "(SELECT 1)",
    "SELECT * FROM ONLY t",
    "SELECT * FROM t WHERE a = ANY(ARRAY[1, 2])",
    "SELECT count(DISTINCT a), sum(b), avg(c), string_agg(d, ',') FROM t",
    "SELECT a ->> 'x', a -> 'y', a::int, jsonb_build_object('k', b) FROM t",
    "SELECT extract(year FROM at), to_char(at, 'YYYY'), greatest(a, b), nullif(a, 0) FROM t",
    "SELECT CASE WHEN a > 0 THEN 'pos' ELSE 'neg' END, round(b, 2), abs(c) FROM t",
    "SELECT lag(a) OVER (ORDER BY b), rank() OVER (ORDER BY b) FROM t",
    "SELECT pg_sleep FROM t",
    "SELECT $$ ; DELETE FROM t; $$ AS text",
    "WITH a AS (SELECT 1 AS x), b AS (SELECT x FROM a) SELECT * FROM b JOIN a USING (x)",
    "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 3) SELECT n FROM c",
    "WITH s AS (SELECT 1 AS x) SELECT x FROM s UNION SELECT 2",
    "SELECT * FROM t WHERE a = :a_1 AND b = :_B2",
    "SELECT CAST(a AS TEXT), b::numeric(10, 2), c::timestamptz, d::jsonb, e::int[] FROM t",
    "SELECT NUM_NULLS(a, b), Lower(c) FROM t",
    'SELECT * FROM "Orders"',
]


@pytest.mark.parametrize("sql", HOSTILE)
def test_hostile_sql_is_refused(sql: str) -> None:
    """Each statement that writes, locks, waits, reads files, hides a second statement or
    is ambiguous to the parser is refused with a reason."""
    assert check_select(sql) != []


@pytest.mark.parametrize("sql", GOOD)
def test_ordinary_selects_are_accepted(sql: str) -> None:
    """Read-only queries with joins, CTEs, set operations and windows pass."""
    assert check_select(sql) == []


def test_refusals_say_why() -> None:
    """The problems name the cause, not just 'invalid'."""
    assert check_select("SELECT pg_sleep(1)") == ["the function pg_sleep() is not on the allowlist"]
    assert check_select("WITH d AS (DELETE FROM t RETURNING *) SELECT 1") == [
        "DELETE is not allowed in a read-only query"
    ]
    assert check_select("SELECT 1; SELECT 2") == ["exactly one statement is allowed, found 2"]
    assert check_select("SELECT " + "(" * 60 + "1" + ")" * 60) == [
        "the query nests too deeply to be checked"
    ]
    assert check_select('SELECT "NUM_NULLS"(1)') == ["quoted function names are refused"]
    assert check_select("SELECT 1 OPERATOR(pg_catalog.+) 2") == ["OPERATOR(...) syntax is refused"]
    assert check_select("SELECT (SELECT 1 FROM (WITH s AS (SELECT 1) SELECT 1) AS x)") == [
        "WITH is allowed only at the start of the query, not inside it"
    ]
    assert check_select("SELECT :a$$") == [
        "placeholders are :name, a name of letters, digits and _ (not first a digit)"
    ]


@pytest.mark.parametrize("sql", GOOD)
def test_canonical_form_is_stable_and_passes(sql: str) -> None:
    """The stored form of an accepted query is a fixed point that passes the check itself."""
    stored = canonical_sql(sql)
    assert stored is not None
    assert canonical_sql(stored) == stored
    assert check_select(stored) == []


@pytest.mark.parametrize("sql", HOSTILE)
def test_sql_query_kind_stores_nothing_hostile_as_valid(sql: str) -> None:
    """What the sql_query kind would store for a hostile query still fails its validation."""
    kind = get_kind("sql_query")
    assert kind.normalize is not None
    try:
        content = kind.parse({"sql": sql})
    except ValidationFailed:
        return  # refused before anything is stored
    stored = kind.normalize(content)
    assert kind.problems(stored) != []


def test_sql_query_kind_stores_the_checked_text() -> None:
    """A query is stored as the checker's rendering; a non-canonical text fails validation."""
    kind = get_kind("sql_query")
    assert kind.normalize is not None
    stored = kind.normalize(kind.parse({"sql": "select a from t where b = :b"}))
    assert isinstance(stored, SqlQuery)
    assert stored.sql == "SELECT\n  a\nFROM t\nWHERE\n  b = :b"
    assert kind.problems(stored) == []
    assert kind.problems(kind.parse({"sql": "select a from t where b = :b"})) == [
        "the query is not in the form the registry stores; create a new draft from it"
    ]


def test_functions_and_tables_can_be_extended_per_kind_and_deployment() -> None:
    """A SQL kind may allow more functions and limit the tables; a deployment may allow
    functions for every check."""
    kind = register_sql_kind("test_sql_limited", functions=["my_rank"], tables=["orders"])
    try:
        ok = kind.normalize(kind.parse({"sql": "SELECT my_rank(a) FROM orders"}))  # type: ignore[misc]
        assert kind.problems(ok) == []
        other = kind.normalize(kind.parse({"sql": "SELECT a FROM keel_users"}))  # type: ignore[misc]
        assert kind.problems(other) == ["the table keel_users is not one this kind may read"]
        with_cte = "WITH o AS (SELECT a FROM orders) SELECT a FROM o"
        assert check_select(with_cte, tables=["orders"]) == []
    finally:
        _KINDS.pop("test_sql_limited")
    assert check_select("SELECT my_rank(a) FROM orders") != []
    from keel.registry import sqlcheck

    try:
        allow_functions("test_only_fn")
        assert check_select("SELECT test_only_fn(1)") == []
    finally:
        sqlcheck._extra_functions.discard("test_only_fn")
    with pytest.raises(ValueError, match="lower-case"):
        allow_functions("Bad Name")


# (query, tables a kind may read); each reads the table `secret`, which is not among them.
SHADOWED = [
    "WITH secret AS (SELECT * FROM secret) SELECT * FROM secret",
    "WITH a AS (SELECT * FROM secret), secret AS (SELECT 1) SELECT * FROM a",
    "WITH a AS (SELECT * FROM secret), secret AS (SELECT 1) SELECT * FROM a, secret",
    "SELECT (SELECT string_agg(pw, ',') FROM secret) AS leaked "
    "FROM (WITH secret AS (SELECT 1) SELECT 1) AS x",
    "SELECT * FROM secret, (WITH secret AS (SELECT 1) SELECT * FROM secret) AS s",
    "SELECT * FROM secret UNION (WITH secret AS (SELECT 1) SELECT * FROM secret)",
    "WITH x AS (SELECT 1) SELECT * FROM orders WHERE EXISTS "
    "(WITH secret AS (SELECT 1) SELECT 1) AND EXISTS (SELECT 1 FROM secret)",
    "WITH s AS (SELECT 1) SELECT * FROM public.secret",
    'WITH "Secret" AS (SELECT 1) SELECT * FROM secret',
    'WITH secret AS (SELECT 1) SELECT * FROM "secret", "Secret"',
]


@pytest.mark.parametrize("sql", SHADOWED)
def test_a_cte_name_does_not_hide_a_table_the_kind_may_not_read(sql: str) -> None:
    """A name is a CTE only where PostgreSQL reads it as one (top-level WITH; in a CTE body
    the earlier CTEs only), so a CTE named like a disallowed table does not let it through."""
    problems = check_select(sql, tables=["orders"])
    assert problems != []
    assert all("orders" not in problem for problem in problems)


def test_cte_scopes_accept_what_postgresql_resolves_to_a_cte() -> None:
    """Earlier siblings, every CTE of a WITH RECURSIVE, and the main query see the CTEs."""
    tables = ["orders"]
    assert check_select("WITH secret AS (SELECT 1) SELECT * FROM secret", tables=tables) == []
    assert (
        check_select(
            "WITH a AS (SELECT * FROM orders), b AS (SELECT * FROM a) SELECT * FROM a, b",
            tables=tables,
        )
        == []
    )
    assert (
        check_select(
            "WITH RECURSIVE a AS (SELECT * FROM b), b AS (SELECT 1 FROM orders) SELECT * FROM a",
            tables=tables,
        )
        == []
    )
    assert check_select("(WITH secret AS (SELECT 1) SELECT * FROM secret)", tables=tables) == []


@pytest.mark.parametrize(
    ("sql", "accepted"),
    [
        ('SELECT * FROM orders, ORDERS, Orders, "orders"', True),
        ('SELECT * FROM sales.refunds, SALES.REFUNDS, "sales"."refunds"', True),
        ('SELECT * FROM "Orders"', False),
        ('SELECT * FROM "ORDERS"', False),
        ('SELECT * FROM "SALES"."REFUNDS"', False),
        ('SELECT * FROM "sales.refunds"', False),
        ("SELECT * FROM refunds", False),
        ("SELECT * FROM public.orders", False),
        ("SELECT * FROM x.sales.refunds", False),
        ("SELECT * FROM \u00c9orders", False),
    ],
)
def test_table_names_compare_as_postgresql_reads_them(sql: str, accepted: bool) -> None:
    """Unquoted names fold to lower case (ASCII only), quoted ones are exact, a dot inside
    a name part or a third part is refused."""
    tables = ["orders", "sales.refunds", '"\u00e9orders"']
    assert (check_select(sql, tables=tables) == []) is accepted


def test_allowlisted_tables_are_read_as_postgresql_names() -> None:
    """A quoted allowlist entry is exact, an unquoted one folds; a bad entry is an error, and
    an allowlist may name a catalog table the default kind refuses."""
    assert check_select('SELECT * FROM "Orders"', tables=['"Orders"']) == []
    assert check_select("SELECT * FROM orders", tables=['"Orders"']) != []
    assert check_select("SELECT * FROM ORDERS", tables=["Orders"]) == []
    assert check_select("SELECT * FROM pg_class", tables=["pg_class"]) == []
    assert check_select("SELECT * FROM pg_class") == [
        "the table pg_class is a system catalog, which queries may not read"
    ]
    for bad in ("a.b.c", "", "a b", "a;b", "f(x)", '"a.b"'):
        with pytest.raises(ValueError, match=r"name or schema\.name"):
            check_select("SELECT 1", tables=[bad])
    with pytest.raises(ValueError, match=r"name or schema\.name"):
        register_sql_kind("test_sql_bad_tables", tables=["a.b.c"])
    assert "test_sql_bad_tables" not in _KINDS


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}, []),
        ({"type": "array", "items": {"enum": ["x", "y"]}}, []),
        (True, []),
        ({"type": "strng"}, ["/type: must be one of"]),
        ({"properties": []}, ["/properties: must be an object"]),
        ({"properties": {"a": {}}, "required": ["b"]}, ["/required: ['b'] are not declared"]),
        ({"enum": []}, ["/enum: must be a non-empty list"]),
        ({"enum": [1, 1]}, ["/enum: values must be distinct"]),
        ({"items": {"type": 3}}, ["/items/type: must be one of"]),
        ({"minLength": -1}, ["/minLength: must be a non-negative integer"]),
        ({"minimum": 5, "maximum": 1}, ["/: minimum is greater than maximum"]),
        ("nope", ["/: a schema must be an object or a boolean"]),
    ],
)
def test_json_schema_structure(document: object, expected: list[str]) -> None:
    """Well-formed UI schemas pass; each structural mistake is reported with its pointer."""
    problems = check_schema(document)
    assert len(problems) == len(expected), problems
    for problem, start in zip(problems, expected, strict=True):
        assert problem.startswith(start), problem


def test_ref_fields_are_found_in_plain_and_list_annotations() -> None:
    """`Annotated[str, Ref(...)]`, optional and list forms all declare references."""

    class Page(BaseModel):
        main: Annotated[str, Ref("sql_query")]
        maybe: Annotated[str, Ref("json_schema")] | None = None
        more: list[Annotated[str, Ref("sql_query")]] = []
        plain: str = ""

    kind = register_kind("test_page_refs", Page)
    try:
        _check_page_kind(kind, Page)
    finally:
        _KINDS.pop("test_page_refs")


def _check_page_kind(kind: Kind, page: type[BaseModel]) -> None:
    assert sorted(kind.refs) == [
        ("/main", "sql_query", False),
        ("/maybe", "json_schema", False),
        ("/more/*", "sql_query", True),
    ]
    content = kind.parse({"main": "a", "more": ["b", "a"], "maybe": "s"})
    assert kind.references(content) == [
        ("json_schema", "s"),
        ("sql_query", "a"),
        ("sql_query", "b"),
    ]
    with pytest.raises(ValueError, match="already registered"):
        register_kind("test_page_refs", page)
    with pytest.raises(ValueError, match="lower-case"):
        register_kind("Bad-Name", page)
    with pytest.raises(ValidationFailed) as caught:
        kind.parse({"main": 3})
    assert caught.value.errors and caught.value.errors[0]["pointer"] == "/data/main"
    with pytest.raises(NotFound):
        get_kind("no_such_kind")


def test_refs_are_followed_into_nested_models_lists_and_dict_values() -> None:
    """A Ref inside a list of nested models, a dict's values or an optional nested model is
    found, with the JSON pointer of each value."""

    class Widget(BaseModel):
        q: Annotated[str, Ref("sql_query")]
        schema_: Annotated[str, Ref("json_schema")] | None = None

    class Board(BaseModel):
        widgets: list[Widget] = []
        by_slot: dict[str, Annotated[str, Ref("sql_query")]] = {}
        main: Widget | None = None
        grid: tuple[list[Annotated[str, Ref("sql_query")]], ...] = ()

    kind = register_kind("test_board_refs", Board)
    try:
        assert sorted(kind.refs) == [
            ("/by_slot/*", "sql_query", True),
            ("/grid/*/*", "sql_query", True),
            ("/main/q", "sql_query", False),
            ("/main/schema_", "json_schema", False),
            ("/widgets/*/q", "sql_query", True),
            ("/widgets/*/schema_", "json_schema", True),
        ]
        content = kind.parse(
            {
                "widgets": [{"q": "a"}, {"q": "b", "schema_": "s"}],
                "by_slot": {"left/top": "c"},
                "main": {"q": "d"},
                "grid": [["e"], ["a"]],
            }
        )
        assert sorted(kind.references_at(content)) == [
            ("/by_slot/left~1top", "sql_query", "c"),
            ("/grid/0/0", "sql_query", "e"),
            ("/grid/1/0", "sql_query", "a"),
            ("/main/q", "sql_query", "d"),
            ("/widgets/0/q", "sql_query", "a"),
            ("/widgets/1/q", "sql_query", "b"),
            ("/widgets/1/schema_", "json_schema", "s"),
        ]
        assert kind.references(content) == [
            ("json_schema", "s"),
            ("sql_query", "a"),
            ("sql_query", "b"),
            ("sql_query", "c"),
            ("sql_query", "d"),
            ("sql_query", "e"),
        ]
    finally:
        _KINDS.pop("test_board_refs")


class _Tree(BaseModel):
    """A recursive model carrying a reference (refused)."""

    q: Annotated[str, Ref("sql_query")]
    children: list[_Tree] = []


class _Plain(BaseModel):
    """A recursive model without references (accepted)."""

    children: list[_Plain] = []


def test_refs_where_they_cannot_be_followed_are_refused_at_registration() -> None:
    """A Ref on a dict key, in a union of several types, on a non-str or in a recursive
    model is an error when the kind is registered, not a silent miss."""

    class OnKey(BaseModel):
        m: dict[Annotated[str, Ref("sql_query")], int]

    class InUnion(BaseModel):
        v: Annotated[str, Ref("sql_query")] | int

    class OnList(BaseModel):
        v: Annotated[list[str], Ref("sql_query")]

    for model, message in [
        (OnKey, "dict key"),
        (InUnion, "union"),
        (OnList, "marks a str"),
        (_Tree, "contains itself"),
    ]:
        with pytest.raises(ValueError, match=message):
            register_kind("test_bad_refs", model)
        assert "test_bad_refs" not in _KINDS
    kind = register_kind("test_plain_tree", _Plain)
    _KINDS.pop("test_plain_tree")
    assert kind.refs == ()


@pytest.mark.parametrize("name", ["x" * 201, "", "bad name", "-lead", "a\n", "../etc", "é"])
def test_a_reference_to_an_impossible_name_is_a_422(name: str) -> None:
    """A referenced name that no asset can have is refused when parsed, with its pointer."""
    kind = get_kind("test_report")
    with pytest.raises(ValidationFailed) as caught:
        kind.parse({"title": "T", "query": "ok", "extra": ["fine", name]})
    assert caught.value.errors is not None
    assert [e["pointer"] for e in caught.value.errors] == ["/data/extra/1"]


def test_structural_diff_paths() -> None:
    """Added, removed and changed values are reported by JSON pointer, nested and in lists."""
    diff = structural_diff(
        {"a": 1, "b": {"c": [1, 2]}, "gone": True, "x/y": 1},
        {"a": 2, "b": {"c": [1, 3, 4]}, "new": None, "x/y": 1},
    )
    assert diff == {
        "added": [{"path": "/b/c/2", "value": 4}, {"path": "/new", "value": None}],
        "removed": [{"path": "/gone", "value": True}],
        "changed": [
            {"path": "/a", "before": 1, "after": 2},
            {"path": "/b/c/1", "before": 2, "after": 3},
        ],
    }


@pytest.mark.parametrize(
    ("name", "accepted"),
    [
        ("registry:sql_query:read", True),
        ("registry:json_schema:publish", True),
        ("jobs:read", True),
        ("registry:_hidden:read", False),
        ("registry_x:read", False),
        ("Registry:sql_query:read", False),
        ("registry:sql query:read", False),
        ("registry", False),
    ],
)
def test_permission_names_allow_underscores_only_after_the_resource(
    name: str, accepted: bool
) -> None:
    """Kind names with `_` fit the permission pattern; the rest of it stays strict."""
    from keel.core.errors import StartupError
    from keel.core.modules import PermissionSpec
    from keel.identity.access import Catalog

    if accepted:
        assert name in Catalog([PermissionSpec(name, "x")]).permissions
    else:
        with pytest.raises(StartupError):
            Catalog([PermissionSpec(name, "x")])
