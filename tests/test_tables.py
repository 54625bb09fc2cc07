"""Which tables a run dumps: hostile identifiers, partitions, inheritance,
views, include/exclude, missing schemas."""

from __future__ import annotations

import pytest

from .conftest import Database

LONG = "x" * 63
HOSTILE = [
    "MixedCase",
    "with space",
    'quote"inside',
    "dot.ted",
    "select",
    "ünïcødé_表",
    LONG,
    "slash/and\\back",
    "..",
    "'single'",
    "%25percent",
    "semi;colon -- comment",
    "é" * 31,
]


def qi(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def test_hostile_identifiers_in_schemas_tables_and_columns(db: Database) -> None:
    schema = 'Sch "é.ma'
    db.sql(f"CREATE SCHEMA {qi(schema)};")
    for i, name in enumerate(HOSTILE):
        db.sql(
            f"CREATE TABLE {qi(schema)}.{qi(name)} ({qi(name)} int, {qi('col ' + str(i))} text);"
            f"INSERT INTO {qi(schema)}.{qi(name)} VALUES ({i}, {i}::text), ({i + 100}, NULL);"
        )
    result = db.dump("--schema", schema)
    assert result.code == 0, result.stderr
    manifest = result.manifest()
    assert sorted(t["table"] for t in manifest["tables"]) == sorted(HOSTILE)
    paths = [t["path"] for t in manifest["tables"]]
    assert len(set(paths)) == len(paths)
    for i, name in enumerate(HOSTILE):
        rows = result.rows(schema, name)
        assert rows == [{name: i, f"col {i}": str(i)}, {name: i + 100, f"col {i}": None}]
        path = result.entry(schema, name)["path"]
        assert "/" not in path and not path.startswith(".") and len(path.encode()) <= 255
        assert path.isascii()


def test_names_equal_but_for_case_get_distinct_files(db: Database) -> None:
    db.sql(
        'CREATE TABLE "Users" (a int); CREATE TABLE users (b int); CREATE TABLE "USERS" (c int);'
        'INSERT INTO "Users" VALUES (1); INSERT INTO users VALUES (2); INSERT INTO "USERS" VALUES (3);'
    )
    result = db.dump()
    assert result.code == 0, result.stderr
    paths = [t["path"] for t in result.manifest()["tables"]]
    assert len({p.lower() for p in paths}) == 3
    assert result.rows("public", "Users") == [{"a": 1}]
    assert result.rows("public", "users") == [{"b": 2}]
    assert result.rows("public", "USERS") == [{"c": 3}]


def test_partitioned_table_is_dumped_once_through_its_root(db: Database) -> None:
    db.sql("""
        CREATE SCHEMA other;
        CREATE TABLE events (id int, at date, payload text) PARTITION BY RANGE (at);
        CREATE TABLE events_2023 PARTITION OF events FOR VALUES FROM ('2023-01-01') TO ('2024-01-01');
        CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')
            PARTITION BY LIST (payload);
        CREATE TABLE events_2024_a PARTITION OF events_2024 FOR VALUES IN ('a');
        CREATE TABLE other.events_2024_b PARTITION OF events_2024 FOR VALUES IN ('b');
        INSERT INTO events VALUES (1, '2023-05-01', 'x'), (2, '2024-05-01', 'a'), (3, '2024-06-01', 'b');
    """)
    result = db.dump("--schema", "public", "--schema", "other")
    assert result.code == 0, result.stderr
    tables = [(t["schema"], t["table"]) for t in result.manifest()["tables"]]
    assert tables == [("public", "events")]
    assert sorted(r["id"] for r in result.rows("public", "events")) == [1, 2, 3]


def test_inheritance_children_are_not_counted_twice(db: Database) -> None:
    db.sql(
        "CREATE TABLE parent (id int); CREATE TABLE child (extra text) INHERITS (parent);"
        "INSERT INTO parent VALUES (1); INSERT INTO child VALUES (2, 'c');"
    )
    result = db.dump()
    assert result.rows("public", "parent") == [{"id": 1}]
    assert result.rows("public", "child") == [{"id": 2, "extra": "c"}]


def test_views_matviews_and_foreign_tables_are_not_dumped(db: Database) -> None:
    db.sql(
        "CREATE TABLE base (id int); INSERT INTO base VALUES (1);"
        "CREATE VIEW v AS SELECT * FROM base; CREATE MATERIALIZED VIEW mv AS SELECT * FROM base;"
        "CREATE SEQUENCE seq;"
        # A foreign table that reads, a file the server has: dumping it would read another system.
        "CREATE EXTENSION file_fdw; CREATE SERVER files FOREIGN DATA WRAPPER file_fdw;"
        "CREATE FOREIGN TABLE ft (line text) SERVER files "
        "OPTIONS (filename '/etc/passwd', format 'text');"
    )
    assert db.fetch("SELECT count(*) FROM ft")[0][0] >= 1, "the foreign table is readable"
    result = db.dump()
    assert result.code == 0, result.stderr
    assert [t["table"] for t in result.manifest()["tables"]] == ["base"]


def test_zero_column_and_empty_tables(db: Database) -> None:
    db.sql(
        "CREATE TABLE nocols (); INSERT INTO nocols DEFAULT VALUES; INSERT INTO nocols DEFAULT VALUES;"
        "CREATE TABLE empty (id int);"
    )
    for fmt in ("jsonl", "json"):
        result = db.dump("--format", fmt, "--run-id", fmt)
        assert result.code == 0, result.stderr
        assert result.rows("public", "nocols") == [{}, {}]
        assert result.rows("public", "empty") == []
        assert result.entry("public", "empty")["rows"] == 0
    assert (db.tmp / "out" / "json" / "public.empty.json").read_bytes() == b"[\n]\n"
    assert (db.tmp / "out" / "jsonl" / "public.empty.jsonl").read_bytes() == b""


@pytest.mark.parametrize(
    "args,expected",
    [
        ((), ["a_one", "a_two", "b_one", "keep.me"]),
        (("--include", "public.a_*"), ["a_one", "a_two"]),
        (("--include", "public.a_*", "--include", "*.b_one"), ["a_one", "a_two", "b_one"]),
        (("--exclude", "public.a_*"), ["b_one", "keep.me"]),
        (("--include", "public.*one", "--exclude", "public.b*"), ["a_one"]),
        (
            (
                "--include",
                "public.keep.me",
            ),
            ["keep.me"],
        ),
        (
            (
                "--include",
                "public.keep*",
            ),
            ["keep.me"],
        ),  # '*' matches the dot in the table's name too
        (
            (
                "--include",
                "*one",
            ),
            ["a_one", "b_one"],
        ),  # and the one between schema and table
        (
            (
                "--include",
                "public.?_one",
            ),
            ["a_one", "b_one"],
        ),
        (
            (
                "--include",
                "public.[ab]_t*",
            ),
            ["a_two"],
        ),
    ],
)
def test_include_exclude(db: Database, args: tuple[str, ...], expected: list[str]) -> None:
    db.sql(
        "CREATE TABLE a_one (i int); CREATE TABLE a_two (i int); CREATE TABLE b_one (i int);"
        'CREATE TABLE "keep.me" (i int);'
    )
    result = db.dump(*args)
    assert result.code == 0, result.stderr
    assert [t["table"] for t in result.manifest()["tables"]] == expected


def test_globs_are_case_sensitive(db: Database) -> None:
    db.sql('CREATE TABLE a_one (i int); CREATE TABLE "A_TWO" (i int);')
    result = db.dump("--include", "public.A_*")
    assert result.code == 0, result.stderr
    assert [t["table"] for t in result.manifest()["tables"]] == ["A_TWO"]
    refused = db.dump("--include", "PUBLIC.*", "--run-id", "upper")
    assert refused.code == 2 and "--include: 'PUBLIC.*' matches no table" in refused.stderr
    assert not (refused.output / "upper").exists()


def test_include_env_is_comma_separated(db: Database) -> None:
    db.sql("CREATE TABLE a_one (i int); CREATE TABLE a_two (i int); CREATE TABLE b_one (i int);")
    result = db.dump(env={"DUMPER_INCLUDE": "public.a_one, public.b_*"})
    assert [t["table"] for t in result.manifest()["tables"]] == ["a_one", "b_one"]


def test_include_that_matches_nothing_is_a_usage_error(db: Database) -> None:
    db.sql("CREATE TABLE a_one (i int);")
    result = db.dump("--include", "public.a_onee")
    assert result.code == 2
    assert "--include: 'public.a_onee' matches no table" in result.stderr
    assert result.files() == []


def test_missing_schema_is_a_usage_error(db: Database) -> None:
    result = db.dump("--schema", "nope")
    assert result.code == 2
    assert "--schema: schema 'nope' does not exist" in result.stderr
    assert result.files() == []
