"""`dumper drill` against the real server: a scratch database is created,
the dump restored into it with its schema, dumped again and compared; the
scratch database and temporary files are gone on every way out."""

from __future__ import annotations

import hashlib
import json
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dumper.ops.drill import MARKER

from .conftest import BUCKET, Database, Moto, Result, parse_json, wait_until
from .http_capture import capture
from .test_s3 import _user_with_policy, s3_env
from .test_schema_files import RICH_DATA, RICH_SQL

# A check that sleeps, in a drill's scratch database only: the drill's restore waits in it for as long as a test likes.
SLOW_SQL = """
CREATE FUNCTION slowly(x int) RETURNS boolean LANGUAGE plpgsql AS
  $$BEGIN
    IF pg_catalog.current_database() LIKE 'dumper_drill_%' THEN PERFORM pg_catalog.pg_sleep(3600); END IF;
    RETURN true;
  END$$;
CREATE TABLE slow (x int CHECK (public.slowly(x)));
INSERT INTO slow VALUES (1);
"""


def scratch_databases(db: Database) -> list[str]:
    """The drill scratch databases of this test (their names hold its database's: its run ids do)."""
    return [
        r[0]
        for r in db.fetch(
            "SELECT datname FROM pg_database WHERE shobj_description(oid, 'pg_database') = $1 "
            "AND strpos(datname, $2) > 0",
            MARKER,
            db.name,
        )
    ]


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The drill's temporary folder goes here, to be seen (and seen gone)."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    yield folder


def add_to_pre_data(dumped: Result, sql: str) -> None:
    """Statements appended to the dump's pre-data (a trigger there fires during the load), with the
    manifest's size and sha256 of the file made to match: the dump still verifies."""
    pre = dumped.run_dir / "schema.pre-data.sql"
    pre.write_text(pre.read_text() + "\n" + sql)
    manifest_path = dumped.run_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    data = pre.read_bytes()
    manifest["schema_files"]["files"][0].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    manifest_path.write_text(json.dumps(manifest))


def good_dump(db: Database, *args: str) -> Result:
    """A dump of the rich schema; its run id names the test's database, and so does the
    default scratch database of a drill of it (dumper_drill_<run id>)."""
    db.sql(RICH_SQL + RICH_DATA)
    result = db.dump("--run-id", f"nightly_{db.name}", *args)
    assert result.code == 0, result.stderr
    return result


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_a_good_dump_passes_and_leaves_nothing(db: Database, private_tmp: Path, compression: str) -> None:
    dumped = good_dump(db, "--compression", compression)
    metrics = db.tmp / "drill.prom"
    result = db.drill(dumped.run_dir, "--log-format", "text", "--metrics-file", str(metrics))
    assert result.code == 0, result.stderr
    assert "public.people" in result.stdout and "drill passed in" in result.stdout
    assert f"every table of {dumped.run_dir} came back exactly" in result.stdout
    assert scratch_databases(db) == []
    assert list(private_tmp.iterdir()) == []
    text = metrics.read_text()
    assert f'dumper_drill_last_run_success{{database="{db.name}"}} 1.0' in text
    assert "dumper_drill_last_run_mismatched_tables" in text


def test_rows_that_do_not_come_back_fail_the_drill_naming_the_table(db: Database, private_tmp: Path) -> None:
    dumped = good_dump(db)
    # A pre-data that changes rows on their way in (a trigger there fires during the load).
    add_to_pre_data(
        dumped,
        "CREATE FUNCTION public.mangle() RETURNS trigger LANGUAGE plpgsql AS "
        "$$BEGIN NEW.name := NEW.name || '!'; RETURN NEW; END$$;\n"
        "CREATE TRIGGER mangled BEFORE INSERT ON public.pets FOR EACH ROW "
        "EXECUTE FUNCTION public.mangle();\n",
    )
    metrics = db.tmp / "drill.prom"
    with capture(204) as hook:
        result = db.drill(dumped.run_dir, "--metrics-file", str(metrics), "--notify-url", hook.url)
    assert result.code == 7, result.stderr
    (request,) = hook.requests
    body = parse_json(request.body)
    assert (body["kind"], body["status"], body["exit_code"]) == ("drill", "failed", 7)
    assert body["mismatches"] == [m for m in body["mismatches"] if m.startswith("table public.pets: 5 rows in the")]
    assert len(body["mismatches"]) == 1 and body["location"] == str(dumped.run_dir)
    assert "1 table(s) did not come back exactly" in result.stderr
    assert (
        "table public.pets: 5 rows in the dump, 5 restored; a row of the dump that did not come back: "
        '\'{"id":1,"owner_id":1,"name":"pet 1"}\'; a restored row that is not in the dump: '
        '\'{"id":1,"owner_id":1,"name":"pet 1!"}\''
    ) in result.stderr
    assert "public.people" not in result.stderr.split("did not come back exactly")[1]
    assert scratch_databases(db) == []
    assert list(private_tmp.iterdir()) == []
    assert f'dumper_drill_last_run_mismatched_tables{{database="{db.name}"}} 1.0' in metrics.read_text()
    assert f'dumper_drill_last_run_exit_code{{database="{db.name}"}} 7.0' in metrics.read_text()


def test_rows_the_server_refuses_fail_the_drill_naming_the_table(db: Database, private_tmp: Path) -> None:
    dumped = good_dump(db)
    # A file that passes verify (the manifest re-hashed) but holds a value its column cannot take.
    path = dumped.run_dir / dumped.entry("public", "pets")["path"]
    path.write_bytes(path.read_bytes().replace(b'"owner_id":2,', b'"owner_id":"two",'))
    manifest_path = dumped.run_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    entry = next(t for t in manifest["tables"] if t["table"] == "pets")
    entry.update(bytes=path.stat().st_size, sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    manifest_path.write_text(json.dumps(manifest))
    result = db.drill(dumped.run_dir)
    assert result.code == 7, result.stderr
    assert (
        f"the dump {dumped.run_dir} did not come back: table public.pets: InvalidTextRepresentationError"
        in result.stderr
    )
    assert "(the restore failed)" in result.stderr
    assert scratch_databases(db) == []
    assert list(private_tmp.iterdir()) == []


def test_a_dump_without_schema_files_cannot_be_drilled(db: Database) -> None:
    dumped = good_dump(db, "--schema-files", "off")
    result = db.drill(dumped.run_dir)
    assert result.code == 7, "it cannot build an empty database by itself: it does not come back"
    assert "this dump has no schema files (--schema-files off): a drill builds the scratch database" in result.stderr
    assert scratch_databases(db) == []


def test_a_role_without_createdb_is_told(db: Database) -> None:
    dumped = good_dump(db)
    db.cluster.psql("CREATE ROLE no_createdb LOGIN PASSWORD 'pw'")
    try:
        result = db.drill(dumped.run_dir, user="no_createdb", password="pw")
    finally:
        db.cluster.psql("DROP ROLE no_createdb")
    assert result.code == 4
    assert "needs CREATEDB (ALTER ROLE no_createdb CREATEDB)" in result.stderr


def sleeping_in_scratch(db: Database) -> bool:
    return bool(
        db.fetch(
            "SELECT count(*) FROM pg_stat_activity WHERE datname LIKE 'dumper_drill_%' "
            "AND strpos(datname, $1) > 0 AND wait_event = 'PgSleep'",
            db.name,
        )[0][0]
    )


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_mid_drill_leaves_no_database(db: Database, tmp_path: Path, sig: signal.Signals, code: int) -> None:
    db.sql(SLOW_SQL)
    dumped = good_dump(db)
    scratch_tmp = tmp_path / "scratch-tmp"
    scratch_tmp.mkdir()
    proc = db.spawn("drill", str(dumped.run_dir), env={"TMPDIR": str(scratch_tmp)})
    wait_until(lambda: sleeping_in_scratch(db), 60)  # restoring public.slow, held in its check
    assert scratch_databases(db) == [f"dumper_drill_nightly_{db.name}"], "the default name: dumper_drill_<run id>"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert f"stopped by {sig.name}; the scratch database and the temporary files were removed" in err
    assert scratch_databases(db) == []
    assert list(scratch_tmp.iterdir()) == []


def test_a_killed_drills_database_is_removed_by_the_next_drill(db: Database, private_tmp: Path) -> None:
    db.sql(SLOW_SQL)
    dumped = good_dump(db)
    killed = f"dumper_drill_killed_{db.name}"
    proc = db.spawn("drill", str(dumped.run_dir), "--scratch-dbname", killed, env={"TMPDIR": str(private_tmp)})
    wait_until(lambda: sleeping_in_scratch(db), 60)
    proc.kill()  # SIGKILL: no clean-up ran
    proc.communicate(timeout=60)
    assert scratch_databases(db) == [killed]
    # The server ends the dead client's session (TCP keepalive would, later); the database stays.
    db.fetch("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", killed)
    wait_until(lambda: not db.fetch("SELECT 1 FROM pg_stat_activity WHERE datname = $1", killed))
    db.sql("DROP TABLE slow; DROP FUNCTION slowly(int);")
    again = good_dump_again(db)
    result = db.drill(again.run_dir)
    assert result.code == 0, result.stderr
    assert f'"event":"removed the scratch database a killed drill left","database":"{killed}"' in result.stdout
    assert scratch_databases(db) == []


def good_dump_again(db: Database) -> Result:
    result = db.dump("--run-id", f"later_{db.name}")
    assert result.code == 0, result.stderr
    return result


def test_the_newest_run_on_s3_drills_with_the_shipped_drill_policy(
    db: Database, s3: Any, moto: Moto, private_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """deploy/iam/drill-policy.json (read the bucket, nothing else), moto enforcing it;
    SOURCE is the output folder: its LATEST names the run."""
    from moto.core import enable_iam_authentication

    db.sql(RICH_SQL + RICH_DATA)
    assert db.dump("--run-id", f"older_{db.name}", "--compression", "gzip", env=s3_env(moto)).code == 0
    db.sql("INSERT INTO pets (owner_id, name) VALUES (2, 'newest')")
    assert db.dump("--run-id", f"newest_{db.name}", "--compression", "gzip", env=s3_env(moto)).code == 0
    for var, value in _user_with_policy(moto, "driller", "drill-policy.json").items():
        monkeypatch.setenv(var, value)
    with enable_iam_authentication():
        result = db.drill(f"s3://{BUCKET}/nightly", "--s3-endpoint-url", moto.endpoint, "--log-format", "text")
    assert result.code == 0, result.stderr
    report = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines() if line.startswith("public.")}
    assert report["public.pets"] == ["6", "same"], "the newest run's rows: 5 and the one added"
    assert f"every table of s3://{BUCKET}/nightly/newest_{db.name} came back exactly" in result.stdout
    assert scratch_databases(db) == []
    assert list(private_tmp.iterdir()) == []


def test_a_drill_pushes_to_its_own_pushgateway_job(db: Database) -> None:
    dumped = good_dump(db)
    with capture(200) as gateway:
        result = db.drill(dumped.run_dir, "--pushgateway-url", gateway.url)
    assert result.code == 0, result.stderr
    (request,) = gateway.requests
    assert (request.method, request.path) == ("POST", f"/metrics/job/dumper-drill/database/{db.name}")
    assert f'dumper_drill_last_run_success{{database="{db.name}"}} 1.0' in request.body.decode()
    assert "dumper_last_run_success" not in request.body.decode().replace("dumper_drill_last_run_success", "")


def test_a_scratch_name_of_a_database_that_is_not_a_drills_is_refused(db: Database) -> None:
    dumped = good_dump(db)
    result = db.drill(dumped.run_dir, "--scratch-dbname", db.name)
    assert result.code == 2, result.stderr
    assert f"--scratch-dbname: database {db.name!r} exists and is not a drill's scratch database" in result.stderr
    assert db.fetch("SELECT count(*) FROM people")[0][0] == 5, "the database is as it was"


def test_columns_in_another_order_and_rows_in_another_order_come_back(db: Database) -> None:
    """pg_dump recreates an inheritance child with its inherited columns first: the restored
    table lists them in another order than the dumped one. Every value is the same by name."""
    db.sql(
        "CREATE TABLE parent (a int); CREATE TABLE child (b text) INHERITS (parent);"
        "ALTER TABLE parent ADD COLUMN c int;"  # the child: a, b, c; recreated: a, c, b
        "INSERT INTO child VALUES (1, 'x', 3), (2, 'y', 4);"
    )
    order = "SELECT attname FROM pg_attribute WHERE attrelid = 'child'::regclass AND attnum > 0 ORDER BY attnum"
    assert [r[0] for r in db.fetch(order)] == ["a", "b", "c"]
    dumped = db.dump("--run-id", f"n_{db.name}")
    result = db.drill(dumped.run_dir)
    assert result.code == 0, result.stderr


def test_sameness_is_by_column_name_and_as_a_multiset_of_rows() -> None:
    from dumper.format.sameness import difference

    dump = [
        b'{"a":1,"b":"x","n":123456789012345678901234567890.1}',
        b'{"a":2,"b":"y","n":0.1}',
        b'{"a":2,"b":"y","n":0.1}',
    ]
    columns = ["a", "b", "n"]

    def same(restored: list[bytes]) -> str | None:
        return difference(lambda: iter(dump), lambda: iter(restored), columns)

    assert (
        same(
            [
                b'{"n":0.1,"a":2,"b":"y"}',
                b'{"b":"x","a":1,"n":123456789012345678901234567890.1}',
                b'{"a":2,"b":"y","n":0.1}',
            ]
        )
        is None
    ), "other column and row order: the same"
    assert '3 rows in the dump, 2 restored; a row of the dump that did not come back: \'{"a":2,"b":"y","n":0.1}\'' in (
        same(dump[:2]) or ""
    )
    changed = same([dump[0], dump[1], b'{"a":2,"b":"y","n":0.10}'])  # the same number, other digits: changed
    assert changed and 'a restored row that is not in the dump: \'{"a":2,"b":"y","n":0.10}\'' in changed
    assert "not ['a', 'b', 'n']" not in (same([b'{"a":1}']) or "") and "the restored table has the columns ['a']" in (
        same([b'{"a":1}']) or ""
    )


def test_a_dump_whose_schema_file_does_not_match_its_columns_does_not_come_back(db: Database) -> None:
    dumped = good_dump(db)
    manifest_path = dumped.run_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    pets = next(t for t in manifest["tables"] if t["table"] == "pets")
    pets["columns"][2]["name"] = "nickname"  # the schema file makes "name"
    manifest_path.write_text(json.dumps(manifest))
    result = db.drill(dumped.run_dir)
    assert result.code == 7, result.stderr
    assert (
        "did not come back: the target tables do not match the dump: table public.pets: has no column "
        "'nickname'" in result.stderr
    )
    assert scratch_databases(db) == []


def test_json_nulls_that_come_back_as_sql_null_fail_the_drill(db: Database, private_tmp: Path) -> None:
    """The file writes JSON null and SQL NULL alike: the drill compares the manifest's JSON nulls
    too. A pre-data trigger that turns JSON null into SQL NULL on the way in is caught."""
    db.sql(
        "CREATE TABLE docs (id int PRIMARY KEY, body jsonb);"
        "INSERT INTO docs VALUES (1, 'null'), (2, NULL), (3, '{\"a\": null}'), (4, 'null');"
    )
    dumped = db.dump("--run-id", f"nightly_{db.name}")
    assert dumped.code == 0, dumped.stderr
    assert dumped.entry("public", "docs")["json_nulls"] == {"body": [[0, 1], [3, 1]]}
    passed = db.drill(dumped.run_dir)
    assert passed.code == 0, passed.stderr
    add_to_pre_data(
        dumped,
        "CREATE FUNCTION public.drop_json_null() RETURNS trigger LANGUAGE plpgsql AS "
        "$$BEGIN IF NEW.body = 'null'::jsonb THEN NEW.body := NULL; END IF; RETURN NEW; END$$;\n"
        "CREATE TRIGGER nulled BEFORE INSERT ON public.docs FOR EACH ROW EXECUTE FUNCTION public.drop_json_null();\n",
    )
    failed = db.drill(dumped.run_dir)
    assert failed.code == 7, failed.stderr
    assert (
        "table public.docs: 4 rows in the dump, 4 restored; a row of the dump that did not come back: "
        """'{"id":1,"body":null,"JSON null in":["body"]}'; a restored row that is not in the dump: """
        """'{"id":1,"body":null,"JSON null in":[]}'"""
    ) in failed.stderr
    assert scratch_databases(db) == []
