"""Huge catalogs and the server's lock table; tables rewritten after the snapshot.

PostgreSQL keeps a transaction's locks until it ends, in one shared table of
max_locks_per_transaction x (max_connections + max_prepared_transactions)
slots: 6,400 with RDS's defaults on a small instance. pg_dump locks every
table it dumps, so 10,000 tables fail it with "out of shared memory". A run
plans its locks against that table (postgres/locks.py): up front while they
fit, else each table only while it is read, in a subtransaction.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.pgcluster import Cluster
from dumper import cli

from .conftest import Database, Result, parse_json, read_rows, wait_until
from .holds import replies_held
from .test_resilience import ROWS, big

SCHEMAS, PER_SCHEMA = 20, 500  # 10,000 tables: more than RDS's default lock table holds
SMALL_LOCK_TABLE = {"max_locks_per_transaction": "64", "max_connections": "100"}


def _events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def assert_restarted(stdout: str, because: str, *or_because: str) -> None:
    """The run started again with a fresh snapshot, its log naming `because` (or one of `or_because`)."""
    restarts = [e.get("error", "") for e in _events(stdout) if e["event"].startswith("snapshot lost")]
    assert any(reason in error for error in restarts for reason in (because, *or_because)), stdout[-3000:]


@pytest.fixture(scope="module")
def tenants(cluster: Cluster) -> Iterator[Cluster]:
    """A server with RDS's small lock table and 10,000 tables of one row in 20 schemas
    (schema t<i>, table n<j>, its row's id i * 1000 + j), made 500 a transaction."""
    big = Cluster(major=cluster.major, settings=SMALL_LOCK_TABLE).start()
    try:
        big.psql("CREATE DATABASE tenants")
        for i in range(SCHEMAS):
            big.psql(
                f"CREATE SCHEMA t{i};"
                f"DO $$ BEGIN FOR j IN 0..{PER_SCHEMA - 1} LOOP "
                f"EXECUTE format('CREATE TABLE t{i}.%I AS SELECT %s::int AS id', 'n' || j, {i * 1000} + j); "
                "END LOOP; END $$;",
                "tenants",
            )
        yield big
    finally:
        big.stop()


def _all_tenants() -> list[str]:
    return [arg for i in range(SCHEMAS) for arg in ("--schema", f"t{i}")]


def test_ten_thousand_tables_dump_on_rds_default_lock_table(tenants: Cluster, tmp_path: Path) -> None:
    db = Database(tenants, "tenants", tmp_path)
    assert tenants.psql("SHOW max_locks_per_transaction", "tenants").strip() == "64"

    result = db.dump("--jobs", "2", *_all_tenants())
    assert result.code == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    events = _events(result.stdout)
    plan = next(e for e in events if e["event"].startswith("table locks: "))
    assert plan["mode"] == "while-read" and plan["lock_table"] == 6400
    assert "the run locks 10,000 tables" in plan["event"]
    assert "each table is locked only while it is read" in plan["event"]

    manifest = result.manifest()
    assert len(manifest["tables"]) == SCHEMAS * PER_SCHEMA
    ids = sorted(row["id"] for entry in manifest["tables"] for row in read_rows(result.run_dir / entry["path"]))
    assert ids == sorted(i * 1000 + j for i in range(SCHEMAS) for j in range(PER_SCHEMA))
    out = io.StringIO()
    assert cli.main(["verify", str(result.run_dir)], {}, stdout=out) == 0, out.getvalue()

    # the schema files hold every table, written by pg_dump in parts that each fit the lock table
    pre = (result.run_dir / "schema.pre-data.sql").read_text()
    assert pre.count("CREATE TABLE ") == SCHEMAS * PER_SCHEMA
    assert "CREATE TABLE t19.n499 " in pre and "CREATE SCHEMA t0;" in pre
    written = next(e for e in events if e["event"] == "schema files written")
    assert written["parts"] >= 3


def test_upfront_locks_that_do_not_fit_are_refused_before_anything_is_read(tenants: Cluster, tmp_path: Path) -> None:
    db = Database(tenants, "tenants", tmp_path)
    result = db.dump("--table-locks", "upfront", *_all_tenants())
    assert result.code == 2, result.stderr[-2000:]
    assert "would lock 10,000 tables at once" in result.stderr
    assert "max_locks_per_transaction 64" in result.stderr and "--table-locks auto" in result.stderr
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.jsonl*"))


NEW_ROWS = "INSERT INTO b SELECT g, 'new' FROM generate_series(100, 102) g"
OLD_IDS, NEW_IDS = [1, 2, 3, 4, 5], [100, 101, 102]
REWRITES = {  # committed after the run's snapshot: the statement, and the ids b then holds
    "truncate": (f"TRUNCATE b; {NEW_ROWS}", NEW_IDS),
    "rewriting alter": (f"ALTER TABLE b ALTER COLUMN id TYPE bigint; {NEW_ROWS}", OLD_IDS + NEW_IDS),
    "dropped and made again": (
        f"DROP TABLE b; CREATE TABLE b (id int PRIMARY KEY, v text); {NEW_ROWS}",
        NEW_IDS,
    ),
    "cluster": (f"CLUSTER b USING b_pkey; {NEW_ROWS}", OLD_IDS + NEW_IDS),
}


@pytest.mark.parametrize("locks", ["upfront", "while-read"])
@pytest.mark.parametrize("rewrite", list(REWRITES))
def test_a_table_rewritten_after_the_snapshot_is_read_again_from_a_fresh_one(
    db: Database, rewrite: str, locks: str
) -> None:
    """TRUNCATE and the rewriting commands are not MVCC-safe: a snapshot taken before them
    sees the rewritten table empty. Committed between the run's snapshot and its lock, the
    run notices and starts again; the dump holds the table as it is now, never empty."""
    db.sql(
        "CREATE TABLE a (id int PRIMARY KEY); INSERT INTO a SELECT generate_series(1, 3);"
        "CREATE TABLE b (id int PRIMARY KEY, v text); INSERT INTO b SELECT g, 'old' FROM generate_series(1, 5) g;"
    )
    with db.locked("b") as lock:
        run = db.spawn("run", "--table-locks", locks, "--jobs", "1", "--lock-timeout", "0")
        wait_until(lambda: db.waiting_for_lock("b"), 120)  # the run has its snapshot and waits for b
        statement, expected = REWRITES[rewrite]
        lock.commit(statement)
    out, err = run.communicate(timeout=300)
    assert run.returncode == 0, err[-3000:]
    # Locked while read, the schema files' pg_dump may be what waited for b: a b dropped meanwhile
    # fails its catalog lookups (pg_dump reads the catalog as it is now), which starts the run again too.
    raced = ("cache lookup failed for ",) if rewrite == "dropped and made again" and locks == "while-read" else ()
    assert_restarted(out, "table public.b was rewritten or replaced after the run's snapshot", *raced)
    result = Result(run.returncode, out, err, db.tmp / "out")
    assert sorted(r["id"] for r in result.rows("public", "b")) == expected
    assert sorted(r["id"] for r in result.rows("public", "a")) == [1, 2, 3]


@pytest.mark.parametrize("locks", ["upfront", "while-read"])
def test_a_table_vacuum_full_rewrote_after_the_snapshot_is_read_again(db: Database, locks: str) -> None:
    """VACUUM FULL runs outside a transaction: it is placed by queueing it behind a held lock
    before the run starts, so it rewrites b after the run's snapshot and before the run's lock.
    (The holder's lock is ACCESS SHARE: VACUUM looks the table up under that mode first.)"""
    db.sql(
        "CREATE TABLE a (id int PRIMARY KEY); INSERT INTO a SELECT generate_series(1, 3);"
        "CREATE TABLE b (id int PRIMARY KEY, v text); INSERT INTO b SELECT g, 'old' FROM generate_series(1, 5) g;"
        "DELETE FROM b WHERE id = 5;"  # a dead row: VACUUM FULL writes a new file without it
    )
    before = db.fetch("SELECT pg_relation_filenode('b')")[0][0]
    with db.locked("b", mode="ACCESS SHARE") as lock:
        vacuum = db.spawn_psql("VACUUM FULL b")
        wait_until(lambda: db.waiting_for_lock("b") == 1, 60)
        run = db.spawn("run", "--table-locks", locks, "--jobs", "1", "--lock-timeout", "0")
        wait_until(lambda: db.waiting_for_lock("b") >= 2, 120)  # the run has its snapshot and waits behind VACUUM
        lock.commit()
    assert vacuum.wait(timeout=60) == 0
    assert db.fetch("SELECT pg_relation_filenode('b')")[0][0] != before
    out, err = run.communicate(timeout=300)
    assert run.returncode == 0, err[-3000:]
    assert_restarted(out, "table public.b was rewritten or replaced after the run's snapshot")
    result = Result(run.returncode, out, err, db.tmp / "out")
    assert sorted(r["id"] for r in result.rows("public", "b")) == [1, 2, 3, 4]
    assert sorted(r["id"] for r in result.rows("public", "a")) == [1, 2, 3]


def test_ddl_queued_behind_the_runs_lock_goes_first_and_the_run_starts_again(db: Database) -> None:
    """Up front, the run holds every table from the start; an ALTER TABLE asked for
    afterwards waits for the run's end, and a plain read of that table would wait behind
    it: a deadlock through the client, which PostgreSQL cannot see (pg_dump's workers fail
    on it). The run is held part way through `big` while the ALTER queues on `b`."""
    big(db)
    db.sql("CREATE TABLE b (id int PRIMARY KEY); INSERT INTO b SELECT generate_series(1, 3);")
    with replies_held(db) as hold:
        run = db.spawn(
            "run",
            "--jobs",
            "1",
            "--table-locks",
            "upfront",
            "--schema-files",
            "off",
            "--lock-timeout",
            "0",
            *hold.args,
        )
        hold.wait()  # every table locked, big read part way, b not yet
        alter = db.spawn_psql("ALTER TABLE b ADD COLUMN z int DEFAULT 7")
        wait_until(lambda: db.waiting_for_lock("b"), 60)
        hold.release()
        out, err = run.communicate(timeout=300)
    assert run.returncode == 0, err[-3000:]
    assert alter.wait(timeout=60) == 0
    assert_restarted(out, "table public.b: another session asked for an ACCESS EXCLUSIVE lock on it")
    result = Result(run.returncode, out, err, db.tmp / "out")
    assert result.rows("public", "b") == [{"id": 1, "z": 7}, {"id": 2, "z": 7}, {"id": 3, "z": 7}]
    assert sorted(r["id"] for r in result.rows("public", "big")) == list(range(1, ROWS + 1))


ALIKE = 25  # small tables of one row type: read by one query each group (dump/groups.py)


@pytest.mark.parametrize("fmt", ["jsonl", "json"])
def test_small_tables_alike_are_read_together_each_into_its_own_file(db: Database, fmt: str) -> None:
    """Table s.t<i> holds i rows (s.t0 none); one array has bounds other than 1. Every
    table's file holds exactly its own rows, as to_json writes them, in scan order."""
    db.sql(
        "CREATE SCHEMA s;"
        f"DO $$ BEGIN FOR i IN 0..{ALIKE - 1} LOOP "
        "EXECUTE format('CREATE TABLE s.%I (id int PRIMARY KEY, v text, a int[])', 't' || i); "
        "EXECUTE format('INSERT INTO s.%I SELECT g, %L || g, ARRAY[g, %s] FROM generate_series(1, %s) g', "
        "'t' || i, 't' || i || '-', i, i); "
        "END LOOP; END $$;"
        "UPDATE s.t7 SET a = '[0:1]={7,8}' WHERE id = 3;"
    )
    result = db.dump("--schema", "s", "--jobs", "2", "--format", fmt)
    assert result.code == 0, result.stderr[-3000:]
    for i in range(ALIKE):
        expected = [parse_json(row[0]) for row in db.fetch(f"SELECT to_json(t) FROM ONLY s.t{i} t")]
        rows = result.rows("s", f"t{i}")
        if i == 7:  # to_json drops the bounds; the dump writes the array's text form instead
            bounded = next(r for r in rows if r["id"] == 3)
            assert bounded["a"] == "[0:1]={7,8}"
            bounded["a"] = next(e for e in expected if e["id"] == 3)["a"]
        assert rows == expected, f"s.t{i}"
        assert result.entry("s", f"t{i}")["rows"] == i
    events = _events(result.stdout)
    done = {e["table"] for e in events if e["event"] == "done"}
    assert done >= {f"s.t{i}" for i in range(ALIKE)}
    started = {e.get("table") for e in events if e["event"] == "started"}
    assert not started & done, "read in groups: a table says only done"
    out = io.StringIO()
    assert cli.main(["verify", str(result.run_dir)], {}, stdout=out) == 0, out.getvalue()


@pytest.mark.parametrize("locks", ["upfront", "while-read"])
def test_a_table_rewritten_in_a_group_of_small_tables_is_read_again(db: Database, locks: str) -> None:
    """b, c and d read alike (one query); b is truncated between the run's snapshot and its
    lock: the run starts again, and each file holds its table as it is now."""
    db.sql(
        "CREATE TABLE b (id int PRIMARY KEY, v text); INSERT INTO b SELECT g, 'old' FROM generate_series(1, 5) g;"
        "CREATE TABLE c (id int PRIMARY KEY, v text); INSERT INTO c SELECT g, 'c' FROM generate_series(1, 2) g;"
        "CREATE TABLE d (id int PRIMARY KEY, v text);"
    )
    with db.locked("b") as lock:
        run = db.spawn("run", "--table-locks", locks, "--jobs", "1", "--lock-timeout", "0")
        wait_until(lambda: db.waiting_for_lock("b"), 120)
        lock.commit(f"TRUNCATE b; {NEW_ROWS}")
    out, err = run.communicate(timeout=300)
    assert run.returncode == 0, err[-3000:]
    assert_restarted(out, "table public.b was rewritten or replaced after the run's snapshot")
    result = Result(run.returncode, out, err, db.tmp / "out")
    assert sorted(r["id"] for r in result.rows("public", "b")) == NEW_IDS
    assert result.rows("public", "c") == [{"id": 1, "v": "c"}, {"id": 2, "v": "c"}]
    assert result.rows("public", "d") == []
