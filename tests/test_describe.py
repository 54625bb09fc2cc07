"""`dumper describe`: what it prints loads a real dump exactly in the real client
(DuckDB, a JSON Schema validator), value by value against the source."""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path
from typing import Any

import duckdb
import jsonschema
import orjson
import pytest
import sqlglot

from dumper import cli
from dumper.core.options import DESCRIBE_TARGETS
from dumper.format.describe import TARGETS

from .conftest import BUCKET, Database, Moto, parse_json, read_rows
from .test_contract import create_every_type
from .test_s3 import s3_env


def describe(run: Path | str, target: str, *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main(["describe", str(run), "--as", target, *args], dict(os.environ), stdout=out)
    return code, out.getvalue(), err.getvalue()


def test_the_option_names_every_client_described() -> None:
    assert set(DESCRIBE_TARGETS) == set(TARGETS)


def test_describe_needs_a_client_and_a_dump(tmp_path: Path) -> None:
    code, out, err = describe(tmp_path, "parquet-please")
    assert code == 2 and "--as: 'parquet-please' is not one of athena, duckdb, json-schema, spark" in err
    out_, err_ = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err_):
        assert cli.main(["describe", str(tmp_path)], {}, stdout=out_) == 2
    assert "needs --as athena|duckdb|json-schema|spark" in err_.getvalue()
    code, out, err = describe(tmp_path, "duckdb")
    assert code == 7 and "manifest.json does not exist: not a complete dump" in err and out == ""


@pytest.mark.parametrize("fmt", ["jsonl", "json"])
def test_every_row_of_every_type_validates_against_its_json_schema(db: Database, fmt: str) -> None:
    create_every_type(db)
    db.sql('CREATE TABLE "odd ""name"" ☺" (id int NOT NULL, "a b" varchar(3), m mood, c pair)')
    db.sql(
        """INSERT INTO "odd ""name"" ☺" VALUES (1, 'abc', 'ok', ROW(1, 'x', 'NaN', 'infinity')), """
        "(2, NULL, NULL, NULL)"
    )
    result = db.dump("--run-id", "schema", "--format", fmt)
    assert result.code == 0, result.stderr
    code, out, err = describe(result.run_dir, "json-schema")
    assert (code, err) == (0, "")
    schemas = orjson.loads(out)
    assert set(schemas) == {"public.every_type", 'public.odd "name" ☺'}
    for qualified, schema in schemas.items():
        jsonschema.Draft202012Validator.check_schema(schema)
        validator = jsonschema.Draft202012Validator(schema)
        entry = next(t for t in result.manifest()["tables"] if f"{t['schema']}.{t['table']}" == qualified)
        rows = read_rows(result.run_dir / entry["path"])
        assert len(rows) == entry["rows"] > 0
        for row in rows:
            errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(row)]
            assert errors == [], f"{qualified} row {row.get('id')}"
    # The schemas are not vacuous: each thing a row could get wrong is refused.
    validator = jsonschema.Draft202012Validator(schemas["public.every_type"])
    good = next(r for r in read_rows(result.run_dir / result.entry("public", "every_type")["path"]) if r["id"] == 1)
    for column, wrong in [
        ("int2", 40000),
        ("int8", "42"),
        ("numeric", "1.5"),
        ("float8", "nan"),
        ("bool", 1),
        ("date", "2024-02-30T00:00:00"),
        ("tstz", "2024-01-02T03:04:05"),
        ("bytea", "0001"),
        ("uuid", "A0EEBC99"),
        ("enum", "angry"),
        ("varchar", "x" * 21),
        ("int_arr", [1, "2"]),
        ("int_arr2", [[1, 2], ["3"]]),
        ("composite", {"a": 1}),
        ("id", None),
    ]:
        assert not validator.is_valid({**good, column: wrong}), column
    assert not validator.is_valid({**good, "extra": 1})
    assert not validator.is_valid({k: v for k, v in good.items() if k != "text"})


EDGES_SQL = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'it''s');
CREATE TYPE pair AS (a int, b text);
CREATE TABLE edges (
  id int PRIMARY KEY, i2 int2, i8 int8, f8 float8, f4 float4, n numeric(38,10), n2 numeric(12,2), b bool,
  t text, v varchar(5), u uuid, d date, ts timestamp, tz timestamptz, tm time, ttz timetz, iv interval,
  by bytea, m mood, grid int[][], p pair, j jsonb, "Odd ""col"" ☺" text
);
INSERT INTO edges VALUES
  (1, 32767, 9223372036854775807, 0.1, 0.1, 1234567890123456789012345678.0123456789, 9999999999.99, true,
   E'quote '' " \\\\ \\n tab\\t ☺', 'abcde', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '4713-01-01 BC',
   '0044-03-15 12:00:00.5 BC', '0044-03-15 12:00:00+00 BC', '24:00:00', '12:34:56.789+05:30',
   '1 year 2 mons -3 days 04:05:06.789', '\\x00ff10', 'it''s', '{{1,NULL},{3,4}}', ROW(1, 'x"y'),
   '{"a": [1, true, null], "b": "s"}', 'odd'),
  (2, -32768, -9223372036854775808, 'NaN', 'Infinity', -0.0000000001, -0.01, false,
   '', '', '00000000-0000-0000-0000-000000000000', 'infinity', 'infinity', '-infinity', '00:00:00',
   '00:00:00-08', '0', '', 'sad', '{}', ROW(NULL, NULL), '[]', ''),
  (3, 0, 9007199254740993, 1.7976931348623157e308, 3.4028235e38, 0, 0, NULL,
   NULL, NULL, NULL, '-infinity', '2024-02-29 23:59:59.999999', '2024-06-30 23:59:59.999999-11:30', NULL,
   NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
  (4, NULL, NULL, 5e-324, '-Infinity', NULL, NULL, NULL, NULL, NULL, NULL, '5874897-12-31', NULL, NULL, NULL,
   NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
  (5, NULL, NULL, '-Infinity', '-0', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
   NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
  (6, NULL, NULL, 123456789012345680000, 1e-45, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
   NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
  (7, NULL, NULL, 'Infinity', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
   NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
"""

# column -> (PostgreSQL's comparable value, DuckDB's): the same Python value when the two are equal
_WHEN = "CASE WHEN isfinite({c}) THEN {finite} ELSE {c}::{text} END"
_FLOAT_TEXT = (  # DuckDB's float as PostgreSQL prints it (its shortest form, which DuckDB's FLOAT keeps)
    "CASE WHEN isnan({c}) THEN 'NaN' WHEN isinf({c}) THEN (CASE WHEN {c} > 0 THEN '' ELSE '-' END) || 'Infinity' "
    "ELSE CAST({c} AS VARCHAR) END"
)
COMPARABLE = {
    "i2": ("{c}", "{c}"),
    "i8": ("{c}", "{c}"),
    "f8": ("{c}::text", _FLOAT_TEXT),
    "f4": ("{c}::text", _FLOAT_TEXT),
    "n": ("{c}", "{c}"),
    "n2": ("{c}", "{c}"),
    "b": ("{c}", "{c}"),
    "t": ("{c}", "{c}"),
    "v": ("{c}", "{c}"),
    "u": ("{c}", "{c}"),
    "d": (
        _WHEN.format(c="{c}", finite="({c} - DATE '2000-01-01')::text", text="text"),
        _WHEN.format(c="{c}", finite="CAST(datediff('day', DATE '2000-01-01', {c}) AS VARCHAR)", text="VARCHAR"),
    ),
    "ts": (
        _WHEN.format(c="{c}", finite="(extract(epoch FROM {c}) * 1000000)::bigint::text", text="text"),
        _WHEN.format(c="{c}", finite="CAST(epoch_us({c}) AS VARCHAR)", text="VARCHAR"),
    ),
    "tz": (
        _WHEN.format(c="{c}", finite="(extract(epoch FROM {c}) * 1000000)::bigint::text", text="text"),
        _WHEN.format(c="{c}", finite="CAST(epoch_us({c}) AS VARCHAR)", text="VARCHAR"),
    ),
    "tm": ("{c}::text", "CAST({c} AS VARCHAR)"),
    "ttz": ("{c}::text", "CAST({c} AS VARCHAR)"),
    "iv": ("{c}::text", "{c}"),
    "by": ("{c}", "{c}"),
    "m": ("{c}::text", "{c}"),
    "grid": ("to_json({c})::text", "CAST({c} AS VARCHAR)"),
    "p": ("to_json({c})::text", "CAST({c} AS VARCHAR)"),
    "j": ("{c}::text", "CAST({c} AS VARCHAR)"),
    'Odd "col" ☺': ("{c}", "{c}"),
}


def quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _normal(value: Any) -> Any:
    """JSON text compared as values (DuckDB prints it without PostgreSQL's spaces)."""
    if isinstance(value, str) and value[:1] in ("[", "{"):
        return parse_json(value)
    return value


def test_duckdb_loads_every_edge_value_exactly_through_the_views_describe_prints(db: Database) -> None:
    db.sql(EDGES_SQL)
    result = db.dump("--run-id", "duck", "--compression", "gzip")
    assert result.code == 0, result.stderr
    code, script, err = describe(result.run_dir, "duckdb")
    assert code == 0
    assert err.splitlines() == [
        "dumper: not exact in duckdb: public.edges.f8: -0 (negative zero) reads as 0",
        "dumper: not exact in duckdb: public.edges.f4: -0 (negative zero) reads as 0",
        "dumper: not exact in duckdb: public.edges.j: JSON numbers re-printed from doubles by DuckDB; "
        "JSON null reads as SQL NULL: dump with --as-text json",
    ]
    con = duckdb.connect()
    con.execute(script)
    columns = list(COMPARABLE)
    pg_values = ", ".join(COMPARABLE[c][0].format(c=quoted(c)) for c in columns)
    duck_values = ", ".join(COMPARABLE[c][1].format(c=quoted(c)) for c in columns)
    want = db.fetch(f"SELECT id, {pg_values} FROM edges ORDER BY id")
    got = con.sql(f"SELECT id, {duck_values} FROM public.edges ORDER BY id").fetchall()
    assert len(got) == len(want) == 7
    for pg_row, duck_row in zip(want, got, strict=True):
        for name, pg_value, duck_value in zip(["id", *columns], pg_row, duck_row, strict=True):
            if pg_value == "-0":  # what describe said DuckDB loses: the sign of a floating-point zero
                pg_value = "0.0"
            assert _normal(duck_value) == _normal(pg_value), f"row {pg_row[0]}, column {name}"


def test_describe_reads_a_run_on_s3_and_its_views_name_the_objects(db: Database, s3: Any, moto: Moto) -> None:
    db.sql("CREATE TABLE t (id int, n numeric(5,1))")
    assert db.dump("--run-id", "r1", env=s3_env(moto)).code == 0
    code, script, err = describe(f"s3://{BUCKET}/nightly/r1", "duckdb", "--s3-endpoint-url", moto.endpoint)
    assert (code, err) == (0, "")
    assert f"FROM read_json('s3://{BUCKET}/nightly/r1/public.t.jsonl', " in script
    assert "columns = {'id': 'INTEGER', 'n': 'DECIMAL(5,1)'}" in script


def test_with_as_text_duckdb_holds_long_numerics_and_json_exactly(db: Database) -> None:
    """What a default dump cannot give DuckDB: numeric of 40 digits (and NaN), json numbers past a
    double, JSON null apart from SQL NULL. Written as their text, DuckDB reads them exactly."""
    db.sql(
        "CREATE TABLE exact (id int, n numeric, n2 numeric(38,2), ns numeric[], j json, b jsonb);"
        "INSERT INTO exact VALUES (1, 1234567890123456789012345678901234567890.0123456789, "
        "123456789012345678901234567890123456.78, '{1.10,NaN}', '{\"a\": 0.1000000000000000055511151231257827}', "
        "'[1e400, -1e-400]'), (2, 'NaN', -0.01, '{{1,2},{3,NULL}}', 'null', 'null'), "
        "(3, '-Infinity', NULL, NULL, NULL, NULL)"
    )
    result = db.dump("--run-id", "exact", "--as-text", "numeric", "--as-text", "json")
    assert result.code == 0, result.stderr
    code, script, err = describe(result.run_dir, "duckdb")
    assert (code, err) == (0, "")
    con = duckdb.connect()
    con.execute(script)
    got = con.sql(
        "SELECT id, n, n2, CAST(ns AS VARCHAR), j, b, j IS NULL, json_type(j) FROM public.exact ORDER BY id"
    ).fetchall()
    want = db.fetch(
        "SELECT id, n::text, n2, to_json(ns::text[])::text, j::text, b::text, j IS NULL, "
        "CASE WHEN j IS NOT NULL THEN upper(json_typeof(j)) END FROM exact ORDER BY id"
    )
    assert [tuple(map(_normal, r)) for r in got] == [tuple(map(_normal, r)) for r in want]
    assert got[0][1] == "1234567890123456789012345678901234567890.0123456789"
    assert got[0][4] == '{"a": 0.1000000000000000055511151231257827}'  # the text, not re-printed
    assert (got[1][4], got[1][6], got[2][6]) == ("null", False, True)  # JSON null is not SQL NULL
    schema = orjson.loads(describe(result.run_dir, "json-schema")[1])["public.exact"]
    validator = jsonschema.Draft202012Validator(schema)
    rows = result.rows("public", "exact")
    assert [list(validator.iter_errors(row)) for row in rows] == [[], [], []]
    assert not validator.is_valid({**rows[0], "n": 1.5}) and not validator.is_valid({**rows[0], "j": {"a": 1}})
    assert not validator.is_valid({**rows[0], "ns": ["1.1", "x"]})


ATHENA_TYPES = {"boolean", "tinyint", "smallint", "int", "bigint", "float", "double", "decimal", "string"}


def test_athena_ddl_parses_and_names_documented_types_over_each_table_prefix(db: Database, s3: Any, moto: Moto) -> None:
    create_every_type(db)
    db.sql('CREATE TABLE "Odd ""name"" ☺" (id int, "A" int, "a" text, "x y" numeric(5,2))')
    env = s3_env(moto)
    flat = db.dump("--run-id", "flat", env=env)
    assert flat.code == 0, flat.stderr
    code, out, err = describe(f"s3://{BUCKET}/nightly/flat", "athena", "--s3-endpoint-url", moto.endpoint)
    assert code == 2 and "describe a dump taken with --layout folders --format jsonl" in err and out == ""
    result = db.dump("--run-id", "r1", "--layout", "folders", env=env)
    assert result.code == 0, result.stderr
    code, ddl, err = describe(f"s3://{BUCKET}/nightly/r1", "athena", "--s3-endpoint-url", moto.endpoint)
    assert code == 0
    assert "public.every_type.numeric: numeric without precision <= 38: the reader" in err
    statements = [s for s in sqlglot.parse(ddl, read="athena") if s is not None]
    assert len(statements) == 2
    key = "nightly/r1/manifest.json"
    tables = orjson.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())["tables"]
    for statement in statements:
        assert isinstance(statement, sqlglot.exp.Create) and statement.kind == "TABLE"
        columns = [c for c in statement.this.expressions if isinstance(c, sqlglot.exp.ColumnDef)]
        types = {c.args["kind"].sql(dialect="hive").split("(")[0].lower() for c in columns}
        assert types <= ATHENA_TYPES, types
        found = statement.find_all(sqlglot.exp.Property)
        props = {p.this.name: p.args["value"].name for p in found if type(p) is sqlglot.exp.Property}
        where = statement.find(sqlglot.exp.LocationProperty)
        assert where is not None
        location = where.this.name
        table = next(t for t in tables if location.endswith("/" + t["path"].split("/")[0] + "/"))
        assert location == f"s3://{BUCKET}/nightly/r1/{table['path'].split('/')[0]}/"
        keys = [props[f"mapping.{c.name}"] for c in columns]
        assert keys == [c["name"] for c in table["columns"]], "every column mapped to its JSON key, in order"
        assert len({c.name for c in columns}) == len(columns) and props["case.insensitive"] == "false"
        assert all(re.fullmatch("[a-z0-9_]+", c.name) for c in columns)


# Spark's data types (spark.apache.org/docs/latest/sql-ref-datatypes.html), as StructType.json() names them
SPARK_TYPES = {
    "byte",
    "short",
    "integer",
    "long",
    "float",
    "double",
    "boolean",
    "string",
    "binary",
    "date",
    "timestamp",
}


@pytest.mark.parametrize("fmt", ["jsonl", "json"])
def test_spark_schema_is_structtype_json_of_documented_types(db: Database, fmt: str) -> None:
    create_every_type(db)
    result = db.dump("--run-id", "spark", "--format", fmt)
    assert result.code == 0, result.stderr
    code, out, err = describe(result.run_dir, "spark")
    assert code == 0 and "public.every_type.jsonb: the reader's text of a JSON value" in err
    described = orjson.loads(out)["public.every_type"]
    entry = result.entry("public", "every_type")
    assert described["path"] == str(result.run_dir / entry["path"])
    assert described["options"] == {"mode": "FAILFAST", "multiLine": "true" if fmt == "json" else "false"}
    schema = described["schema"]
    assert schema["type"] == "struct"
    assert [f["name"] for f in schema["fields"]] == [c["name"] for c in entry["columns"]]
    for field in schema["fields"]:
        assert set(field) == {"name", "type", "nullable", "metadata"}
        assert field["type"] in SPARK_TYPES or re.fullmatch(r"decimal\(\d+,\d+\)", field["type"]), field
    kinds = {f["name"]: f["type"] for f in schema["fields"]}
    assert (kinds["int2"], kinds["int8"], kinds["numeric_p"], kinds["numeric"]) == (
        "short",
        "long",
        "decimal(12,2)",
        "string",
    )
    assert (kinds["date"], kinds["bytea"], kinds["dom_num"]) == ("string", "string", "decimal(12,2)")


def test_duckdb_names_that_differ_only_in_case_stay_apart(db: Database) -> None:
    """DuckDB's names ignore case: tables "T" and t would be one view (the second silently replacing
    the first) and columns "A" and a one name. Each gets its own, said on stderr, every value read."""
    db.sql(
        'CREATE SCHEMA "S"; CREATE SCHEMA s; CREATE TABLE "S".t (id int); CREATE TABLE s.t (id int);'
        'CREATE TABLE "T" (id int); CREATE TABLE t (id int, "A" int, a text, "x/y~z" int);'
        'INSERT INTO "S".t VALUES (1); INSERT INTO s.t VALUES (2); INSERT INTO "T" VALUES (3);'
        "INSERT INTO t VALUES (4, 5, 'six', 7), (8, NULL, NULL, NULL);"
    )
    result = db.dump("--run-id", "case", "--schema", "S", "--schema", "s", "--schema", "public")
    assert result.code == 0, result.stderr
    code, script, err = describe(result.run_dir, "duckdb")
    assert code == 0
    assert "dumper: not exact in duckdb: public.t.a: is a_2 in DuckDB (its names ignore case)" in err
    con = duckdb.connect()
    con.execute(script)
    views = sorted(con.sql("SELECT schema_name, view_name FROM duckdb_views() WHERE NOT internal").fetchall())
    assert views == [("S", "t"), ("S", "t_2"), ("public", "T"), ("public", "t_2")]
    assert "dumper: not exact in duckdb: s.t: is the view S.t_2 in DuckDB (its names ignore case)" in err
    ids = [con.sql(f"SELECT id FROM {quoted(s)}.{quoted(v)}").fetchall() for s, v in views]
    assert ids == [[(1,)], [(2,)], [(3,)], [(4,), (8,)]]
    rows = con.sql("SELECT * FROM public.t_2 ORDER BY id").fetchall()
    assert rows == [(4, 5, "six", 7), (8, None, None, None)]
    assert [c[0] for c in con.sql("SELECT * FROM public.t_2").description] == ["id", "A", "a_2", "x/y~z"]
