"""`--format parquet`: a file per table that pyarrow (and DuckDB) read value for value as the
source holds it, and a backup like any other: verify, restore and drill take it."""

from __future__ import annotations

import math
import uuid
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from .conftest import BUCKET, Database, Moto, Result
from .test_contract import create_every_type
from .test_describe import describe
from .test_s3 import keys, s3_env

# Values a Parquet column's type cannot hold: NULL in the file, their text in the manifest.
OUTSIDE_SQL = """
CREATE TABLE outside (id int PRIMARY KEY, n numeric(5,2), ts timestamp, tz timestamptz, a int[], aa int[][],
                      t text[], f float4[]);
INSERT INTO outside VALUES
  (1, 'NaN', '294276-12-31 23:59:59.999999', '294247-01-10 04:00:54.775807+00', '[0:1]={7,8}', '{1,2}',
   '[2:2]={x}', '{{1.5},{2}}'),
  (2, 1.25, '294247-01-10 04:00:54.775806', '294247-01-10 04:00:54.775806+00', '{{1},{2}}', '{{1,2},{3,NULL}}',
   '{"a b",NULL,"\\\\","null",""}', '{0.1,NaN,-Infinity,1e-45,3.4028235e38,123456,1234567}'),
  (3, NULL, NULL, NULL, '{}', '{}', '{}', '{}');
"""
I32, I64 = (1 << 31) - 1, (1 << 63) - 1


def _comparable(column: str, kind: pa.DataType, written: str) -> str:
    """PostgreSQL's value of `column` as pyarrow gives it (dates, times as their numbers)."""
    c = '"' + column.replace('"', '""') + '"'
    if pa.types.is_date32(kind):
        return (
            f"CASE WHEN {c} = 'infinity' THEN {I32} WHEN {c} = '-infinity' THEN -{I32} ELSE {c} - date '1970-01-01' END"
        )
    if pa.types.is_timestamp(kind):
        return (
            f"CASE WHEN {c} = 'infinity' THEN {I64} WHEN {c} = '-infinity' THEN -{I64} "
            f"ELSE extract(epoch FROM {c}) * 1000000 END"
        )
    if pa.types.is_time64(kind):
        return f"(extract(epoch FROM {c}) * 1000000)::int8"
    if pa.types.is_string(kind) and written == "text":  # the type's text (char(n) as itself: padded)
        return f"{c}::text"
    if pa.types.is_floating(kind):
        return f"{c}::float8"
    return c


def _arrow_values(array: pa.ChunkedArray) -> list[Any]:
    kind = array.type
    if pa.types.is_date32(kind):
        array = array.cast(pa.int32())
    elif pa.types.is_timestamp(kind) or pa.types.is_time64(kind):
        array = array.cast(pa.int64())
    values: list[Any] = array.to_pylist()
    return values


def _same(value: Any) -> Any:
    """NaN equal to NaN; lists element by element."""
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, list):
        return [_same(v) for v in value]
    return value


def assert_equal_to_the_source(db: Database, result: Result, table: str) -> pa.Table:
    """Every value pyarrow reads from the table's file equals the source's (the manifest's `outside`
    values: NULL in the file, the source's text in the manifest), row by row by id."""
    entry = result.entry("public", table)
    data = pq.read_table(result.run_dir / entry["path"])
    assert data.column_names == [c["name"] for c in entry["columns"]]
    assert data.num_rows == entry["rows"]
    for field in data.schema:
        column = next(c for c in entry["columns"] if c["name"] == field.name)
        assert field.metadata == {b"postgresql.type": column["type"].encode()}
    ids = data.column("id").to_pylist()
    outside = {(c, row): text for c, pairs in entry.get("outside", {}).items() for row, text in pairs}
    for field in data.schema:
        name = field.name
        quoted = '"' + name.replace('"', '""') + '"'
        written = next(c["written"] for c in entry["columns"] if c["name"] == name)
        want = dict(db.fetch(f"SELECT id, {_comparable(name, field.type, written)} FROM {table}"))
        texts = dict(db.fetch(f"SELECT id, {quoted}::text FROM {table}"))
        for row, (row_id, got) in enumerate(zip(ids, _arrow_values(data.column(name)), strict=True)):
            if (name, row) in outside:
                assert got is None and outside[name, row] == texts[row_id], f"row {row_id}, column {name!r}"
            else:
                assert _same(got) == _same(want[row_id]), f"row {row_id}, column {name!r}"
    return data


def test_pyarrow_reads_every_value_of_every_type_as_the_source_holds_it(db: Database) -> None:
    create_every_type(db)
    db.sql(OUTSIDE_SQL)
    result = db.dump("--format", "parquet", "--run-id", "pq")
    assert result.code == 0, result.stderr
    assert sorted(result.files()) == [
        "LATEST",
        "pq/manifest.json",
        "pq/public.every_type.parquet",
        "pq/public.outside.parquet",
        "pq/schema.post-data.sql",
        "pq/schema.pre-data.sql",
    ]
    every = assert_equal_to_the_source(db, result, "every_type")
    kinds = {f.name: str(f.type) for f in every.schema}
    assert (kinds["int2"], kinds["int8"], kinds["float4"], kinds["numeric_p"], kinds["numeric"]) == (
        "int16",
        "int64",
        "float",
        "decimal128(12, 2)",
        "string",
    )
    assert (kinds["date"], kinds["ts"], kinds["tstz"], kinds["time"], kinds["bytea"]) == (
        "date32[day]",
        "timestamp[us]",
        "timestamp[us, tz=UTC]",
        "time64[us]",
        "binary",
    )
    assert (kinds["int_arr2"], kinds["text_arr"], kinds["num_arr"], kinds["jsonb"]) == (
        "list<element: list<element: int32>>",
        "list<element: string>",
        "string",
        "string",
    )
    assert assert_equal_to_the_source(db, result, "outside").num_rows == 3
    assert result.entry("public", "outside")["outside"] == {
        "n": [[0, "NaN"]],
        "ts": [[0, "294276-12-31 23:59:59.999999"]],
        "tz": [[0, "294247-01-10 04:00:54.775807+00"]],
        "a": [[0, "[0:1]={7,8}"], [1, "{{1},{2}}"]],
        "aa": [[0, "{1,2}"]],
        "t": [[0, "[2:2]={x}"]],
        "f": [[0, "{{1.5},{2}}"]],
    }
    manifest = result.manifest()
    assert (manifest["format"], manifest["compression"], manifest["as_text"]) == ("parquet", "none", ["json"])
    written = {c["name"]: c["written"] for c in result.entry("public", "every_type")["columns"]}
    assert (written["int4"], written["jsonb"], written["interval"], written["text_arr"]) == (
        "typed",
        "text",
        "text",
        "typed",
    )


def test_duckdb_reads_infinities_bc_and_exact_numbers_from_the_file(db: Database) -> None:
    db.sql(
        "CREATE TABLE d (id int, d date, ts timestamp, tz timestamptz, n numeric(38,10), j jsonb);"
        "INSERT INTO d VALUES (1, 'infinity', '-infinity', 'infinity', 1234567890123456789012345678.0123456789, "
        "'null'), (2, '4714-11-24 BC', '0044-03-15 12:00:00.5 BC', '2024-02-29 12:00:00+00', -0.0000000001, NULL)"
    )
    result = db.dump("--format", "parquet", "--run-id", "duck", "--compression", "zstd")
    assert result.code == 0, result.stderr
    path = result.run_dir / result.entry("public", "d")["path"]
    relation = duckdb.sql(
        f"SELECT id, CAST(d AS VARCHAR), CAST(ts AS VARCHAR), CAST(tz AS VARCHAR), CAST(n AS VARCHAR), j, "
        f"j IS NULL FROM read_parquet('{path}') ORDER BY id"
    )
    assert relation is not None
    got = relation.fetchall()
    assert got == [
        (1, "infinity", "-infinity", "infinity", "1234567890123456789012345678.0123456789", "null", False),
        (2, "4714-11-24 (BC)", "0044-03-15 (BC) 12:00:00.5", "2024-02-29 12:00:00+00", "-0.0000000001", None, True),
    ]
    assert pq.ParquetFile(path).metadata.row_group(0).column(0).compression == "ZSTD"


def _row_texts(db: Database, table: str) -> list[Any]:
    return db.fetch(f"SELECT t::text FROM {table} t ORDER BY 1")


def test_a_parquet_dump_verifies_restores_exactly_and_drills(db: Database, target: Database) -> None:
    create_every_type(db)
    db.sql(
        OUTSIDE_SQL + "CREATE TABLE empty (a int); CREATE TABLE no_columns (); INSERT INTO no_columns DEFAULT VALUES;"
    )
    db.sql("INSERT INTO no_columns DEFAULT VALUES")
    result = db.dump("--format", "parquet", "--compression", "gzip", "--run-id", "back")
    assert result.code == 0, result.stderr
    assert result.entry("public", "no_columns")["rows"] == 2
    restored = target.restore(result.run_dir, "--with-schema")
    assert restored.code == 0, restored.stderr
    for table in ("every_type", "outside", "empty"):
        assert _row_texts(target, table) == _row_texts(db, table), table
    assert target.fetch("SELECT count(*) FROM no_columns")[0][0] == 2
    drilled = db.drill(result.run_dir)
    assert drilled.code == 0, drilled.stderr


def test_a_changed_or_cut_parquet_file_fails_verify(db: Database) -> None:
    db.sql("CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 100)")
    result = db.dump("--format", "parquet", "--run-id", "cut")
    assert result.code == 0, result.stderr
    path = result.run_dir / "public.t.parquet"
    path.write_bytes(path.read_bytes()[:-10])
    out = db.restore(result.run_dir)
    assert out.code == 7
    assert "public.t.parquet): not a Parquet file (no footer: truncated?)" in out.stdout


def test_split_tables_and_worker_processes_write_every_row_once_in_order(db: Database) -> None:
    db.sql(
        "CREATE TABLE wide (id bigint, name text, price numeric(12,2), seen timestamptz, tags text[]);"
        "INSERT INTO wide SELECT g, repeat('é', g % 50), g * 1.25, timestamptz '2024-01-01' + g * interval '1 s', "
        "ARRAY['a' || g, NULL] FROM generate_series(1, 40000) g;"
        "DELETE FROM wide WHERE id BETWEEN 10000 AND 20000;"
        + "".join(f"CREATE TABLE small{i} (id int, v text); INSERT INTO small{i} VALUES ({i}, 'x');" for i in range(5))
    )
    split = db.dump(
        "--format", "parquet", "--jobs", "3", "--processes", "2", "--split-mib", "0.25", "--run-id", "split"
    )
    single = db.dump("--format", "parquet", "--jobs", "1", "--run-id", "single")
    assert split.code == single.code == 0, split.stderr + single.stderr
    data = assert_equal_to_the_source(db, split, "wide")
    assert sorted(data.column("id").to_pylist()) == [i for i in range(1, 40001) if not 10000 <= i <= 20000]
    assert data.equals(pq.read_table(single.run_dir / "public.wide.parquet")), "the rows of one scan, in its order"
    result = split
    for i in range(5):
        assert pq.read_table(result.run_dir / f"public.small{i}.parquet").to_pylist() == [{"id": i, "v": "x"}]


def test_a_parquet_dump_on_s3_in_folders_verifies_and_restores(
    db: Database, target: Database, s3: Any, moto: Moto
) -> None:
    db.sql("CREATE TABLE t (id int PRIMARY KEY, j json, d date)")
    db.sql("INSERT INTO t VALUES (1, 'null', 'infinity'), (2, NULL, NULL)")
    env = s3_env(moto)
    result = db.dump("--format", "parquet", "--layout", "folders", "--run-id", "r1", env=env)
    assert result.code == 0, result.stderr
    assert keys(s3, "nightly/r1/") == [
        "nightly/r1/manifest.json",
        "nightly/r1/public.t/public.t.parquet",
        "nightly/r1/schema.post-data.sql",
        "nightly/r1/schema.pre-data.sql",
    ]
    restored = target.restore(f"s3://{BUCKET}/nightly/r1", "--with-schema", env=env)
    assert restored.code == 0, restored.stderr
    assert target.fetch("SELECT id, j::text, j IS NULL, d::text FROM t ORDER BY id") == [
        (1, "null", False, "infinity"),
        (2, None, True, None),
    ]


@pytest.mark.parametrize(
    "options",
    [(), ("--format", "json"), ("--compression", "gzip"), ("--as-text", "json"), ("--format", "parquet")],
    ids=["jsonl", "json", "gzip", "as-text-json", "parquet"],
)
def test_json_null_comes_back_as_json_null_from_every_format(
    db: Database, target: Database, options: tuple[str, ...]
) -> None:
    db.sql(
        "CREATE TABLE j (id int PRIMARY KEY, a json, b jsonb);"
        "INSERT INTO j VALUES (1, 'null', 'null'), (2, NULL, NULL), (3, '{\"k\": null}', '[null]')"
    )
    result = db.dump(*options, "--run-id", "nulls")
    assert result.code == 0, result.stderr
    restored = target.restore(result.run_dir, "--with-schema")
    assert restored.code == 0, restored.stderr
    query = "SELECT id, a::text, a IS NULL, b::text, b IS NULL FROM j ORDER BY id"
    assert target.fetch(query) == db.fetch(query)
    assert target.fetch(query)[0][1:5] == ("null", False, "null", False)


def test_parquet_options_that_do_not_go_together_are_refused(db: Database) -> None:
    db.sql("CREATE TABLE t (id int)")
    zstd = db.dump("--compression", "zstd")
    assert zstd.code == 2 and "--compression zstd: a Parquet codec; it needs --format parquet" in zstd.stderr
    cast = db.dump("--format", "parquet", "--extension-types", "cast")
    assert cast.code == 2 and "--extension-types cast writes JSON" in cast.stderr
    assert not (db.tmp / "out").exists()


def test_pyarrow_is_asked_for_by_name_when_it_is_missing(db: Database, tmp_path: Path) -> None:
    db.sql("CREATE TABLE t (id int)")
    blocker = tmp_path / "blocked"
    blocker.mkdir()
    (blocker / "pyarrow.py").write_text("raise ImportError('pyarrow is not installed here')\n")
    import subprocess
    import sys

    env = {**db.base_env(), "PYTHONPATH": str(blocker)}
    done = subprocess.run(
        [sys.executable, "-m", "dumper", "run", "--format", "parquet"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 2, done.stderr
    assert "--format parquet needs pyarrow, which is not installed: pip install 'dumper[parquet]'" in done.stderr


def test_describe_gives_duckdb_views_over_the_parquet_files(db: Database) -> None:
    db.sql(OUTSIDE_SQL)
    db.sql(
        'CREATE TABLE "Case" (id int, "A" int, "a" text, u uuid, iv interval);'
        "INSERT INTO \"Case\" VALUES (1, 2, 'x', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '1 mon')"
    )
    result = db.dump("--format", "parquet", "--run-id", "views")
    assert result.code == 0, result.stderr
    code, script, err = describe(result.run_dir, "duckdb")
    assert code == 0
    assert err.splitlines() == [
        "dumper: not exact in duckdb: public.Case.a: is a_2 in DuckDB (its names ignore case)",
        *[
            f"dumper: not exact in duckdb: public.outside.{c}: 1 value(s) the file's type cannot hold are NULL "
            "in the file; their text is in the manifest's `outside`"
            for c in ("n", "ts", "tz")
        ],
        "dumper: not exact in duckdb: public.outside.a: 2 value(s) the file's type cannot hold are NULL in the "
        "file; their text is in the manifest's `outside`",
        *[
            f"dumper: not exact in duckdb: public.outside.{c}: 1 value(s) the file's type cannot hold are NULL "
            "in the file; their text is in the manifest's `outside`"
            for c in ("aa", "t", "f")
        ],
    ]
    con = duckdb.connect()
    con.execute(script)
    assert con.sql('SELECT * FROM public."Case"').fetchall() == [
        (1, 2, "x", uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"), "1 mon")
    ]
    got = con.sql("SELECT id, CAST(n AS VARCHAR), a, aa, len(f), isnan(f[2]) FROM public.outside ORDER BY id")
    assert got.fetchall() == [
        (1, None, None, None, None, None),
        (2, "1.25", None, [[1, 2], [3, None]], 7, True),
        (3, None, [], [], 0, None),
    ]
    for other in ("athena", "spark", "json-schema"):
        code, out, err = describe(result.run_dir, other)
        assert code == 2 and "this dump is Parquet, whose files carry their own types" in err and out == ""
