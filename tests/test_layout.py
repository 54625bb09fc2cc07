"""--layout folders: each table file in a folder of its own (a prefix per table, what Athena,
Glue and Spark read a table from); verify, restore, drill, prune and describe understand it."""

from __future__ import annotations

import contextlib
import io
import stat
from pathlib import Path
from typing import Any

from dumper import cli
from dumper.format.layout import is_table_path, written_by_a_run

from .conftest import BUCKET, Database, Moto
from .test_prune import prune, removed, runs_on_disk
from .test_s3 import keys, s3_env

TABLES_SQL = (
    'CREATE TABLE "T" (id int PRIMARY KEY); CREATE TABLE t (id int PRIMARY KEY, parent int REFERENCES "T");'
    'CREATE TABLE "odd/na.me ☺" (id int, body text);'
    'INSERT INTO "T" SELECT generate_series(1, 500); INSERT INTO t SELECT g, g FROM generate_series(1, 500) g;'
    "INSERT INTO \"odd/na.me ☺\" VALUES (1, 'x'), (2, NULL);"
)


def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main(list(args), env or {}, stdout=out)
    return code, out.getvalue(), err.getvalue()


def test_a_folder_per_table_holds_its_file_and_the_dump_comes_back(db: Database, target: Database) -> None:
    db.sql(TABLES_SQL)
    result = db.dump("--run-id", "f1", "--layout", "folders", "--jobs", "2", "--compression", "gzip")
    assert result.code == 0, result.stderr
    manifest = result.manifest()
    assert manifest["layout"] == "folders"
    paths = sorted(t["path"] for t in manifest["tables"])
    assert paths == [
        "public.T/public.T.jsonl.gz",
        "public.odd%2Fna%2Eme%20%E2%98%BA/public.odd%2Fna%2Eme%20%E2%98%BA.jsonl.gz",
        "public~1.t/public~1.t.jsonl.gz",  # differs from "T" only in case: its own name and folder
    ]
    assert result.files() == sorted(
        [f"f1/{p}" for p in paths] + ["LATEST", "f1/manifest.json", "f1/schema.post-data.sql", "f1/schema.pre-data.sql"]
    )
    for path in paths:
        folder = result.run_dir / path.split("/")[0]
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, "private from the start, like the run folder"
    code, out, err = run_cli("verify", str(result.run_dir))
    assert code == 0 and "3 tables, 1,002 rows match the manifest" in out, err
    (result.run_dir / paths[0]).write_bytes(b"")
    code, out, _ = run_cli("verify", str(result.run_dir))
    assert code == 7 and f"MISMATCH public.T ({paths[0]})" in out
    good = db.dump("--run-id", "f2", "--layout", "folders")
    assert good.code == 0, good.stderr
    loaded = target.restore(good.run_dir, "--with-schema")
    assert loaded.code == 0, loaded.stderr
    for query in ('SELECT * FROM "T" ORDER BY id', "SELECT * FROM t ORDER BY id", 'SELECT * FROM "odd/na.me ☺"'):
        assert target.fetch(query) == db.fetch(query)
    drilled = db.drill(good.run_dir)
    assert drilled.code == 0, drilled.stderr + drilled.stdout


def test_a_failed_run_with_folders_leaves_nothing(db: Database) -> None:
    """A value that fails while the tables are read (its type's cast to json divides by zero), after
    every table's folder was made and a file committed: the run folder goes, folders and all."""
    db.sql(
        "CREATE TYPE boom AS ENUM ('ok', 'bad');"
        "CREATE FUNCTION boom_json(boom) RETURNS json LANGUAGE sql AS "
        "$$ SELECT pg_catalog.to_json(1 / (CASE WHEN $1 = 'bad' THEN 0 ELSE 1 END)) $$;"
        "CREATE CAST (boom AS json) WITH FUNCTION boom_json(boom);"
        "CREATE TABLE fine (id int); INSERT INTO fine VALUES (1);"
        "CREATE TABLE fails (b boom); INSERT INTO fails SELECT 'ok' FROM generate_series(1, 999);"
        "INSERT INTO fails VALUES ('bad');"
    )
    result = db.dump("--run-id", "x", "--layout", "folders", "--extension-types", "cast", "--jobs", "1")
    assert result.code == 5, result.stderr
    assert "division by zero" in result.stderr
    assert not (result.output / "x").exists(), "no folder of the failed run is left"


def test_folders_on_s3_are_prefixes(db: Database, s3: Any, moto: Moto) -> None:
    db.sql(TABLES_SQL)
    result = db.dump("--run-id", "r1", "--layout", "folders", env=s3_env(moto))
    assert result.code == 0, result.stderr
    assert "nightly/r1/public.T/public.T.jsonl" in keys(s3, "nightly/r1/")
    code, out, err = run_cli("verify", f"s3://{BUCKET}/nightly/r1", "--s3-endpoint-url", moto.endpoint)
    assert code == 0 and "3 tables" in out, err


def test_prune_knows_a_killed_runs_table_folders(db: Database) -> None:
    db.sql("CREATE TABLE t (id int); INSERT INTO t VALUES (1);")
    out = db.tmp / "out"
    for name, extra in (("k0", None), ("k1", "notes.txt")):  # killed runs' leftovers; k1 has a file of someone's
        folder = out / name / "public.t"
        folder.mkdir(parents=True)
        (out / name / "schema.pre-data.sql").write_text("--")
        (folder / ".public.t.jsonl.ab12-7-0.partial").write_text("{}")
        if extra:
            (folder / extra).write_text("keep me")
    for run_id in ("r1", "r2"):
        assert db.dump("--run-id", run_id, "--layout", "folders").code == 0
    code, events, err = prune(db, "--output", str(out), "--keep", "1")
    assert code == 0, err
    assert removed(events) == ["k0", "r1"]
    assert runs_on_disk(out) == ["k1", "r2"]


def test_table_paths_are_a_name_or_a_name_in_a_folder(tmp_path: Path) -> None:
    assert is_table_path("public.t.jsonl") and is_table_path("public.t/public.t.jsonl")
    for bad in ("../x.jsonl", "a/b/c.jsonl", "/abs.jsonl", ".hidden/x.jsonl", "a/.x.jsonl", "a//x.jsonl", 3):
        assert not is_table_path(bad), bad
    assert written_by_a_run("public.t/public.t.jsonl.gz") and written_by_a_run("public.t/.x.jsonl.1-2-3.partial")
    assert not written_by_a_run("public.t/notes.txt") and not written_by_a_run("a/b/public.t.jsonl")
