"""`dumper restore` against the real server: dump -> restore into an empty copy
of the schema -> dump again gives the same bytes, for every built-in type and
for a schema with identity, generated and partitioned tables, triggers, a
self-reference and a foreign-key cycle; refusals that change nothing."""

from __future__ import annotations

import contextlib
import gzip
import io
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from dumper import cli

from .conftest import BUCKET, Database, Moto, Result, parse_json
from .holds import within
from .test_contract import create_every_type

SCHEMA_SQL = """
CREATE TABLE teams (id int PRIMARY KEY, name text NOT NULL, owner_id int);
CREATE TABLE users (
    id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    team_id int NOT NULL REFERENCES teams,
    manager_id int REFERENCES users,
    email text NOT NULL UNIQUE,
    domain text GENERATED ALWAYS AS (split_part(email, '@', 2)) STORED);
ALTER TABLE teams ADD CONSTRAINT teams_owner FOREIGN KEY (owner_id) REFERENCES users;
CREATE TABLE orders (id bigserial, user_id int NOT NULL REFERENCES users, placed date NOT NULL,
                     total numeric(10,2), PRIMARY KEY (id, placed)) PARTITION BY RANGE (placed);
CREATE TABLE orders_2025 PARTITION OF orders FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE orders_2026 PARTITION OF orders FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
CREATE TABLE order_lines (order_id bigint NOT NULL, placed date NOT NULL, line int NOT NULL, sku text,
                          PRIMARY KEY (order_id, placed, line),
                          FOREIGN KEY (order_id, placed) REFERENCES orders (id, placed));
-- Children of categories come before their parents on disk, across batches of the load (~6 MB).
CREATE TABLE categories (id int PRIMARY KEY, parent_id int REFERENCES categories, label text);
CREATE TABLE load_log (n int);
CREATE FUNCTION count_line() RETURNS trigger LANGUAGE plpgsql AS
    $$BEGIN INSERT INTO public.load_log VALUES (NEW.line); RETURN NEW; END$$;
CREATE TRIGGER counted AFTER INSERT ON order_lines FOR EACH ROW EXECUTE FUNCTION count_line();
"""

DATA_SQL = """
INSERT INTO teams VALUES (1, 'core', NULL), (2, 'ops', NULL);
INSERT INTO users (team_id, manager_id, email) VALUES (1, NULL, 'a@x.io'), (1, 1, 'b@x.io'), (2, 1, 'c@y.io');
UPDATE teams SET owner_id = 1 WHERE id = 1; UPDATE teams SET owner_id = 3 WHERE id = 2;
INSERT INTO orders (user_id, placed, total)
    SELECT 1 + g % 3, DATE '2025-06-01' + g, g * 1.25 FROM generate_series(1, 400) g;
INSERT INTO order_lines SELECT o.id, o.placed, l, 'sku-' || l FROM orders o, generate_series(1, 3) l;
INSERT INTO categories SELECT g, NULL, repeat('c', 2000) FROM generate_series(1, 3000) g;
UPDATE categories SET parent_id = id + 1 WHERE id < 3000;
"""

TABLES = ("categories", "order_lines", "orders", "teams", "users")


def file_bytes(result: Result, table: str) -> bytes:
    path = result.run_dir / result.entry("public", table)["path"]
    data = path.read_bytes()
    return gzip.decompress(data) if path.name.endswith(".gz") else data


def count(db: Database, table: str) -> int:
    return int(db.fetch(f"SELECT count(*) FROM {table}")[0][0])


@contextlib.contextmanager
def writer(db: Database) -> Iterator[str]:
    """A login role with only pg_write_all_data (and CONNECT), dropped afterwards."""
    role = "w_" + uuid.uuid4().hex[:8]
    db.cluster.psql(f"CREATE ROLE {role} LOGIN PASSWORD 'pw'; GRANT pg_write_all_data TO {role};")
    try:
        yield role
    finally:
        db.sql(f"DROP OWNED BY {role}")
        db.cluster.psql(f"DROP ROLE {role}")


@pytest.mark.parametrize("fmt,compression", [("jsonl", "none"), ("json", "gzip")])
def test_every_type_round_trips_exactly(db: Database, target: Database, fmt: str, compression: str) -> None:
    create_every_type(db)
    first = db.dump("--format", fmt, "--compression", compression, "--run-id", "src")
    assert first.code == 0, first.stderr
    create_every_type(target, rows=False)

    loaded = target.restore(first.run_dir)
    assert loaded.code == 0, loaded.stderr
    again = target.dump("--format", fmt, "--compression", compression, "--run-id", "again")
    assert again.code == 0, again.stderr
    assert file_bytes(again, "every_type") == file_bytes(first, "every_type")
    assert "public.every_type" in loaded.stdout and "restore complete" not in loaded.stdout  # JSON lines
    events = [parse_json(line) for line in loaded.stdout.splitlines()]
    assert {
        "event": "table restored",
        "table": "public.every_type",
        "rows": first.entry("public", "every_type")["rows"],
    }.items() <= next(e for e in events if e["event"] == "table restored").items()


def test_a_realistic_schema_round_trips_with_its_cycle_and_triggers(db: Database, target: Database) -> None:
    db.sql(SCHEMA_SQL + DATA_SQL)
    first = db.dump("--run-id", "src", "--exclude", "public.load_log")
    assert first.code == 0, first.stderr
    target.sql(SCHEMA_SQL)

    loaded = target.restore(first.run_dir, "--jobs", "3")
    assert loaded.code == 0, loaded.stderr + loaded.stdout
    again = target.dump("--run-id", "again", "--exclude", "public.load_log")
    for table in TABLES:
        assert file_bytes(again, table) == file_bytes(first, table), table
    # Identity (GENERATED ALWAYS) values kept, generated columns computed by the target.
    users = "SELECT id, domain FROM users ORDER BY id"
    assert target.fetch(users) == db.fetch(users)
    assert count(target, "orders_2026") == count(db, "orders_2026") > 0
    # Triggers fire as the restoring role, except in the cycle loaded with session_replication_role = replica.
    assert count(target, "load_log") == count(db, "order_lines") == 1200
    assert "foreign-key cycle" in loaded.stdout and "public.teams, public.users" in loaded.stdout


def test_a_role_with_only_write_rights_is_told_what_the_cycle_needs(db: Database, target: Database) -> None:
    db.sql(SCHEMA_SQL + DATA_SQL)
    first = db.dump("--run-id", "src", "--exclude", "public.load_log")
    target.sql(SCHEMA_SQL)
    with writer(target) as role:
        refused = target.restore(first.run_dir, user=role, password="pw")
        assert refused.code == 4, refused.stderr
        assert "public.teams <-> public.users" in refused.stderr
        assert f"GRANT SET ON PARAMETER session_replication_role TO {role}" in refused.stderr
        assert all(count(target, t) == 0 for t in TABLES), "nothing was changed"

        # With the cycle's keys DEFERRABLE, the cycle loads in one transaction, checked at COMMIT.
        target.sql(
            "ALTER TABLE teams ALTER CONSTRAINT teams_owner DEFERRABLE;"
            "ALTER TABLE users ALTER CONSTRAINT users_team_id_fkey DEFERRABLE;"
            "ALTER TABLE users ALTER CONSTRAINT users_manager_id_fkey DEFERRABLE;"
        )
        loaded = target.restore(first.run_dir, user=role, password="pw")
    assert loaded.code == 0, loaded.stderr
    again = target.dump("--run-id", "again", "--exclude", "public.load_log")
    for table in TABLES:
        assert file_bytes(again, table) == file_bytes(first, table), table
    assert count(target, "load_log") == 1200


def test_a_self_reference_across_batches_loads_in_one_statement(db: Database, target: Database) -> None:
    """Row 1 references row 2, ..., across ~6 MB: checked per batch, the first batch would fail."""
    db.sql(SCHEMA_SQL + DATA_SQL)
    first = db.dump("--run-id", "src", "--include", "public.categories")
    target.sql(SCHEMA_SQL)
    loaded = target.restore(first.run_dir, env={"DUMPER_LOG_FORMAT": "text"})
    assert loaded.code == 0, loaded.stderr
    assert count(target, "categories") == 3000
    report = loaded.stdout.splitlines()  # text mode: the table, then where it went
    assert report[0].split() == ["table", "rows", "seconds"] and report[1].split()[:2] == ["public.categories", "3,000"]
    assert report[-1] == f"restore complete: {target.cluster.host}:{target.cluster.port}/{target.name}"
    assert target.fetch("SELECT parent_id FROM categories WHERE id = 1")[0][0] == 2


def test_a_tampered_file_is_refused_before_anything_is_loaded(db: Database, target: Database) -> None:
    db.sql("CREATE TABLE a (id int); INSERT INTO a VALUES (1), (2); CREATE TABLE b (id int); INSERT INTO b VALUES (3);")
    first = db.dump("--run-id", "src")
    target.sql("CREATE TABLE a (id int); CREATE TABLE b (id int);")
    path = first.run_dir / "public.b.jsonl"
    path.write_bytes(path.read_bytes().replace(b"3", b"4"))
    refused = target.restore(first.run_dir)
    assert refused.code == 7, refused.stderr
    assert "public.b (public.b.jsonl): sha256" in refused.stdout and "nothing was loaded" in refused.stderr
    assert count(target, "a") == count(target, "b") == 0


def test_tables_that_hold_rows_are_refused_unless_truncate(db: Database, target: Database) -> None:
    db.sql(SCHEMA_SQL + DATA_SQL)
    first = db.dump("--run-id", "src", "--exclude", "public.load_log")
    target.sql(SCHEMA_SQL + DATA_SQL + "DELETE FROM order_lines; DELETE FROM load_log;")
    refused = target.restore(first.run_dir)
    assert refused.code == 2, refused.stderr
    for table in ("categories", "orders", "teams", "users"):
        assert f"public.{table}" in refused.stderr
    assert "public.order_lines" not in refused.stderr and "nothing was changed" in refused.stderr
    assert count(target, "orders") == 400 and count(target, "order_lines") == 0

    loaded = target.restore(first.run_dir, "--truncate")
    assert loaded.code == 0, loaded.stderr
    again = target.dump("--run-id", "again", "--exclude", "public.load_log")
    for table in TABLES:
        assert file_bytes(again, table) == file_bytes(first, table), table


def test_a_table_the_role_cannot_read_is_judged_by_its_pages(db: Database, target: Database) -> None:
    db.sql("CREATE TABLE t (id int); INSERT INTO t VALUES (1);")
    first = db.dump("--run-id", "src")
    target.sql("CREATE TABLE t (id int); INSERT INTO t VALUES (6);")
    with writer(target) as role:
        refused = target.restore(first.run_dir, user=role, password="pw")
    assert refused.code == 2, refused.stderr
    assert "public.t (has pages; this role cannot read it" in refused.stderr


def test_create_tables_builds_plain_tables_and_names_a_missing_type(db: Database, target: Database) -> None:
    db.sql(
        "CREATE SCHEMA app; CREATE TABLE app.plain (id int PRIMARY KEY, v numeric(12,2), tags text[], "
        "at timestamptz); INSERT INTO app.plain VALUES (1, 2.50, '{a,b}', '2024-01-01 00:00:00+00');"
        "CREATE TYPE mood AS ENUM ('ok'); CREATE TABLE public.feel (m mood); INSERT INTO public.feel VALUES ('ok');"
    )
    first = db.dump("--run-id", "src", "--schema", "app", "--schema", "public")
    assert first.code == 0, first.stderr

    refused = target.restore(first.run_dir, "--create-tables")
    assert refused.code == 2, refused.stderr
    assert "type public.mood of column public.feel.m" in refused.stderr
    assert target.fetch("SELECT count(*) FROM pg_namespace WHERE nspname = 'app'")[0][0] == 0

    without = target.restore(first.run_dir, "--include", "app.*")
    assert without.code == 2 and "--create-tables" in without.stderr

    loaded = target.restore(first.run_dir, "--create-tables", "--include", "app.*")
    assert loaded.code == 0, loaded.stderr
    assert target.fetch(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = 'app.plain'::regclass AND attnum > 0 ORDER BY attnum"
    ) == [("integer",), ("numeric(12,2)",), ("text[]",), ("timestamp with time zone",)]
    assert target.fetch("SELECT v::text, tags FROM app.plain") == [("2.50", ["a", "b"])]


def test_a_column_that_differs_is_named(db: Database, target: Database) -> None:
    db.sql("CREATE TABLE t (id int, note text); INSERT INTO t VALUES (1, 'x');")
    first = db.dump("--run-id", "src")
    target.sql("CREATE TABLE t (id bigint)")
    refused = target.restore(first.run_dir)
    assert refused.code == 2
    assert "table public.t: column 'id' is bigint, the dump's is integer" in refused.stderr
    assert "table public.t: has no column 'note' (text)" in refused.stderr


def test_a_failed_table_is_left_as_it_was_or_everything_is(db: Database, target: Database) -> None:
    db.sql("CREATE TABLE a (id int); INSERT INTO a VALUES (1); CREATE TABLE b (id int); INSERT INTO b VALUES (-1);")
    first = db.dump("--run-id", "src")
    target.sql("CREATE TABLE a (id int); CREATE TABLE b (id int CHECK (id > 0));")
    each = target.restore(first.run_dir, "--jobs", "1")
    assert each.code == 5 and "table public.b: CheckViolationError (constraint b_id_check)" in each.stderr
    assert (count(target, "a"), count(target, "b")) == (1, 0)

    target.sql("TRUNCATE a")
    together = target.restore(first.run_dir, "--single-transaction")
    assert together.code == 5, together.stderr
    assert (count(target, "a"), count(target, "b")) == (0, 0)


def test_restore_from_s3(db: Database, target: Database, s3: Any, moto: Moto) -> None:
    db.sql(SCHEMA_SQL + DATA_SQL)
    env = {"DUMPER_OUTPUT": f"s3://{BUCKET}/nightly", "DUMPER_S3_ENDPOINT_URL": moto.endpoint}
    first = db.dump("--run-id", "src", "--compression", "gzip", "--exclude", "public.load_log", env=env)
    assert first.code == 0, first.stderr
    local = db.dump("--run-id", "local", "--exclude", "public.load_log")
    target.sql(SCHEMA_SQL)
    loaded = target.restore(f"s3://{BUCKET}/nightly/src", "--s3-endpoint-url", moto.endpoint)
    assert loaded.code == 0, loaded.stderr
    again = target.dump("--run-id", "again", "--exclude", "public.load_log")
    for table in TABLES:
        assert file_bytes(again, table) == file_bytes(local, table), table


def test_a_missing_manifest_is_not_a_dump(target: Database, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    refused = target.restore(tmp_path / "empty")
    assert refused.code == 7 and "manifest.json does not exist: not a complete dump" in refused.stderr


# --- the pure parts: load order and reading files back ---------------------------


def test_load_order_puts_parents_first_and_groups_cycles() -> None:
    from dumper.restore.loadplan import ForeignKey, plan

    keys = [
        ForeignKey("s.child", "s.parent", False, "k1"),
        ForeignKey("s.parent", "s.grand", False, "k2"),
        ForeignKey("s.a", "s.b", False, "k3"),
        ForeignKey("s.b", "s.a", False, "k4"),
        ForeignKey("s.c", "s.d", True, "k5"),
        ForeignKey("s.d", "s.c", True, "k6"),
        ForeignKey("s.tree", "s.tree", False, "k7"),
        ForeignKey("s.child", "other.t", False, "k8"),
    ]
    units = plan(["s.a", "s.b", "s.c", "s.child", "s.d", "s.grand", "s.parent", "s.tree"], keys)
    by_table = {t: i for i, u in enumerate(units) for t in u.tables}
    assert units[by_table["s.a"]].tables == ("s.a", "s.b") and units[by_table["s.a"]].method == "replica"
    assert units[by_table["s.c"]].tables == ("s.c", "s.d") and units[by_table["s.c"]].method == "deferred"
    assert units[by_table["s.tree"]].method == "one_statement"
    assert units[by_table["s.child"]].after == {by_table["s.parent"]}
    assert units[by_table["s.parent"]].after == {by_table["s.grand"]}
    assert by_table["s.grand"] < by_table["s.parent"] < by_table["s.child"]
    assert units[by_table["s.grand"]].method == "plain" and len(units) == 6


def test_a_long_chain_of_keys_needs_no_recursion() -> None:
    from dumper.restore.loadplan import ForeignKey, plan

    names = [f"s.t{i:05d}" for i in range(5000)]
    units = plan(names, [ForeignKey(names[i], names[i + 1], False, "k") for i in range(4999)])
    assert [u.tables[0] for u in units] == names[::-1]


@pytest.mark.parametrize("fmt", ["jsonl", "json"])
def test_files_read_back_as_the_rows_they_hold(fmt: str) -> None:
    from dumper.format.encode import Framer, RowEncoder
    from dumper.format.readback import RowBatches

    rows = [b'{"a":%d,"s":"x,}\\"]"}' % i for i in range(1000)]
    framer = Framer(fmt)
    body = RowEncoder(["a", "s"], fmt == "json").encode([(i, 'x,}"]') for i in range(1000)])
    data = framer.header() + framer.separator(len(rows)) + body + framer.footer()
    pieces = [data[i : i + 7] for i in range(0, len(data), 7)]  # rows cut anywhere
    reader = RowBatches(pieces, "none", fmt, "t", batch_bytes=500)
    got = [row for batch in reader for row in batch]
    assert got == rows
    import hashlib

    reader.check(1000, len(data), hashlib.sha256(data).hexdigest())
    with pytest.raises(Exception, match="changed since it was verified"):
        reader.check(1000, len(data), "0" * 64)


def test_a_truncated_file_is_not_read_as_complete() -> None:
    from dumper.core.errors import VerifyError
    from dumper.format.readback import RowBatches

    with pytest.raises(VerifyError, match="does not end with a newline"):
        list(RowBatches([b'{"a":1}\n{"a":'], "none", "jsonl", "t"))
    with pytest.raises(VerifyError, match=r"does not end with '\]'"):
        list(RowBatches([b'[\n{"a":1},\n{"a":2}\n'], "none", "json", "t"))


def test_a_row_splits_into_its_raw_values() -> None:
    from dumper.format.readback import holds_nul, join_object, split_object

    row = b'{"a":1,"j":{"e": "\\u0000", "n":[1,{"b":"},"}]},"t":"q\\\\u0000","z":null}'
    members = split_object(row)
    assert [(name, value) for _, name, value in members] == [
        ("a", b"1"),
        ("j", b'{"e": "\\u0000", "n":[1,{"b":"},"}]}'),
        ("t", b'"q\\\\u0000"'),
        ("z", b"null"),
    ]
    assert [holds_nul(value) for _, _, value in members] == [False, True, False, False]
    assert join_object(members) == row


def test_a_held_lock_ends_the_restore_at_the_lock_or_statement_timeout(db: Database, target: Database) -> None:
    db.sql("CREATE TABLE t (id int); INSERT INTO t VALUES (1);")
    first = db.dump("--run-id", "src")
    target.sql("CREATE TABLE t (id int);")
    with target.locked("t", "SHARE"):  # the checks may read it; the INSERT waits
        locked = target.restore(first.run_dir, "--lock-timeout", "1")
        timed = target.restore(first.run_dir, "--lock-timeout", "0", "--statement-timeout", "1")
    assert locked.code == 5 and "table public.t: could not lock it within --lock-timeout" in locked.stderr
    assert timed.code == 5 and "canceling statement due to statement timeout" in timed.stderr
    assert count(target, "t") == 0


def test_a_stalled_server_ends_the_restore(db: Database, target: Database) -> None:
    """The restore's backend is SIGSTOPped while it waits for a lock: the server
    can no longer end the wait, the client's bound (lock + stall timeout) does."""
    import os
    import signal

    from .conftest import wait_until

    db.sql("CREATE TABLE t (id int); INSERT INTO t VALUES (1);")
    first = db.dump("--run-id", "src")
    target.sql("CREATE TABLE t (id int);")
    waiting = (
        "SELECT l.pid FROM pg_locks l JOIN pg_class c ON c.oid = l.relation WHERE c.relname = 't' AND NOT l.granted"
    )
    with target.locked("t", "SHARE"):
        proc = target.spawn("restore", str(first.run_dir), "--lock-timeout", "5", "--stall-timeout", "2")
        stopped: list[int] = []
        try:
            wait_until(lambda: target.fetch(waiting))
            stopped = [r[0] for r in target.fetch(waiting)]
            for pid in stopped:
                os.kill(pid, signal.SIGSTOP)
            _, err = proc.communicate(timeout=60)
        finally:
            for pid in stopped:
                os.kill(pid, signal.SIGCONT)
            proc.kill()
    assert proc.returncode == 5, err
    assert "table public.t: the database sent nothing for 7 s (--stall-timeout)" in err
    assert count(target, "t") == 0


def test_sigterm_leaves_the_waiting_table_as_it_was(db: Database, target: Database) -> None:
    import signal

    from .conftest import wait_until

    db.sql("CREATE TABLE a (id int); INSERT INTO a VALUES (1); CREATE TABLE b (id int); INSERT INTO b VALUES (2);")
    first = db.dump("--run-id", "src")
    target.sql("CREATE TABLE a (id int); CREATE TABLE b (id int);")
    with target.locked("b", "SHARE"):
        proc = target.spawn(
            "restore", str(first.run_dir), "--jobs", "1", "--include", "public.b", "--lock-timeout", "0"
        )
        try:
            wait_until(lambda: target.waiting_for_lock("b"))
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
    assert proc.returncode == 143, err
    assert "stopped by SIGTERM; tables committed before it stay loaded" in err
    assert count(target, "b") == 0


def test_hostile_names_and_tables_without_columns_round_trip(db: Database, target: Database) -> None:
    ddl = (
        'CREATE SCHEMA "we""ird sch.ema"; '
        'CREATE TABLE "we""ird sch.ema"."Tab;le ""x"" ☺" ("Col ""a""" int, "sp ace,col" text, "ünï" jsonb);'
        'CREATE TABLE "we""ird sch.ema".empty_cols ();'
        'CREATE TABLE "we""ird sch.ema".only_generated (g int GENERATED ALWAYS AS (1) STORED);'
    )
    db.sql(
        ddl + 'INSERT INTO "we""ird sch.ema"."Tab;le ""x"" ☺" VALUES (1, \'a"b\', \'{"k": "v"}\'), '
        "(NULL, NULL, NULL);"
        'INSERT INTO "we""ird sch.ema".empty_cols SELECT FROM generate_series(1, 3);'
        'INSERT INTO "we""ird sch.ema".only_generated SELECT FROM generate_series(1, 2);'
    )
    first = db.dump("--run-id", "src", "--schema", 'we"ird sch.ema')
    assert first.code == 0, first.stderr
    target.sql(ddl)
    loaded = target.restore(first.run_dir)
    assert loaded.code == 0, loaded.stderr
    again = target.dump("--run-id", "again", "--schema", 'we"ird sch.ema')
    for entry in first.manifest()["tables"]:
        assert (again.run_dir / entry["path"]).read_bytes() == (first.run_dir / entry["path"]).read_bytes()
    assert count(target, '"we""ird sch.ema".empty_cols') == 3
    assert count(target, '"we""ird sch.ema".only_generated') == 2


def test_a_role_without_insert_is_told_what_to_grant(db: Database, target: Database) -> None:
    db.sql("CREATE TABLE t (id int); INSERT INTO t VALUES (1);")
    first = db.dump("--run-id", "src")
    target.sql("CREATE TABLE t (id int);")
    role = "n_" + uuid.uuid4().hex[:8]
    target.cluster.psql(f"CREATE ROLE {role} LOGIN PASSWORD 'pw';")
    try:
        refused = target.restore(first.run_dir, user=role, password="pw")
    finally:
        target.sql(f"DROP OWNED BY {role}")
        target.cluster.psql(f"DROP ROLE {role}")
    assert refused.code == 4, refused.stderr
    assert "table public.t: permission denied" in refused.stderr
    assert "GRANT pg_write_all_data TO <user>" in refused.stderr and "GRANT INSERT ON public.t" in refused.stderr


def test_an_s3_source_that_stops_sending_ends_the_restore(db: Database, target: Database, s3: Any, moto: Moto) -> None:
    import time

    from devtools.cutting_proxy import CuttingProxy

    db.sql("CREATE TABLE big AS SELECT g AS id, md5(g::text) AS h FROM generate_series(1, 100000) g;")
    env = {"DUMPER_OUTPUT": f"s3://{BUCKET}/nightly", "DUMPER_S3_ENDPOINT_URL": moto.endpoint}
    first = db.dump("--run-id", "src", env=env)
    assert first.code == 0, first.stderr
    target.sql("CREATE TABLE big (id int, h text);")
    host, port = moto.endpoint.removeprefix("http://").split(":")
    proxy = CuttingProxy(host, int(port), stall_replies_after=256 << 10).start()
    try:
        refused = target.restore(
            f"s3://{BUCKET}/nightly/src", "--s3-endpoint-url", f"http://127.0.0.1:{proxy.port}", "--stall-timeout", "2"
        )
        took = time.monotonic() - proxy.held_at
        err = io.StringIO()
        with contextlib.redirect_stderr(err):  # verify reads the same way: the storage failed, not a file
            verified = cli.main(
                [
                    "verify",
                    f"s3://{BUCKET}/nightly/src",
                    "--s3-endpoint-url",
                    f"http://127.0.0.1:{proxy.port}",
                    "--stall-timeout",
                    "2",
                ],
                target.base_env(),
                stdout=io.StringIO(),
            )
    finally:
        proxy.stop()
    assert verified == 6 and "the object store sent nothing for the --stall-timeout" in err.getvalue()
    assert refused.code == 6, refused.stderr
    within(took, 2, 2 * 2, "the stalled download")  # from the moment the download was held
    assert (
        "cannot read s3://dumps/nightly/src/public.big.jsonl: the object store sent nothing for the "
        "--stall-timeout" in refused.stderr
    )
    assert count(target, "big") == 0


def test_truncate_checks_the_truncate_privilege_before_anything_changes(db: Database, target: Database) -> None:
    db.sql("CREATE TABLE a (id int); INSERT INTO a VALUES (1); CREATE TABLE b (id int); INSERT INTO b VALUES (2);")
    first = db.dump("--run-id", "src")
    target.sql("CREATE TABLE a (id int); INSERT INTO a VALUES (7); CREATE TABLE b (id int); INSERT INTO b VALUES (8);")
    with writer(target) as role:  # pg_write_all_data: INSERT, UPDATE, DELETE; not TRUNCATE
        refused = target.restore(first.run_dir, "--truncate", user=role, password="pw")
        assert refused.code == 4, refused.stderr
        (line,) = refused.stderr.strip().splitlines()
        assert f"--truncate: {role} may not empty public.a (TRUNCATE), public.b (TRUNCATE)" in line
        assert "GRANT TRUNCATE ON <table>" in line and "nothing was changed" in line
        assert target.fetch("SELECT (SELECT id FROM a), (SELECT id FROM b)")[0] == (7, 8)
        target.sql(f"GRANT TRUNCATE ON a, b TO {role}")
        loaded = target.restore(first.run_dir, "--truncate", user=role, password="pw")
    assert loaded.code == 0, loaded.stderr
    assert target.fetch("SELECT (SELECT id FROM a), (SELECT id FROM b)")[0] == (1, 2)


def test_arrays_keep_their_lower_bounds(db: Database, target: Database) -> None:
    ddl = "CREATE TABLE arr (id int, f float8[], i int[][], t text[], n numeric[]);"
    db.sql(
        ddl + "INSERT INTO arr VALUES (1, '[0:1]={1.1,2.2}', '[1:1][-1:0]={{1,2}}', '[5:5]={x}', '{1.5}'),"
        "(2, '{3.3}', '{{1}}', '{}', '[2:3]={NaN,1e-30}');"
    )
    first = db.dump("--run-id", "src")
    assert [r["f"] for r in first.rows("public", "arr")] == ["[0:1]={1.1,2.2}", [Decimal("3.3")]]
    target.sql(ddl)
    assert target.restore(first.run_dir).code == 0
    rows = "SELECT id, f::text, i::text, t::text, n::text FROM arr ORDER BY id"
    assert target.fetch(rows) == db.fetch(rows)


JSON_NULLS_SQL = """
CREATE DOMAIN doc AS jsonb;
CREATE TABLE jn (id int PRIMARY KEY, j json, b jsonb, d doc, note text);
"""
# JSON null, SQL NULL and values in every json column, over two restore batches; `note` holds the
# text 'null' (neither). Short rows fill gaps of earlier pages: the file is not in id order.
JSON_NULLS_DATA = """
INSERT INTO jn SELECT g,
  (CASE g % 4 WHEN 0 THEN 'null' WHEN 2 THEN ' null ' WHEN 3 THEN '{"a": null}' END)::json,
  (CASE g % 3 WHEN 0 THEN 'null' WHEN 2 THEN '[null]' END)::jsonb,
  CASE WHEN g % 5 = 0 OR g BETWEEN 100 AND 120 THEN 'null'::doc END,
  CASE WHEN g % 7 = 0 THEN 'null' ELSE repeat('x', 200) END
FROM generate_series(1, 30000) g;
"""
# Whitespace around a json value is not kept by a restore (JSON null or not): btrim.
JSON_NULLS_ROWS = (
    "SELECT id, j IS NULL, btrim(j::text), b IS NULL, b::text, d IS NULL, d::text, note FROM jn ORDER BY id"
)


def json_null_rows(result: Result, column: str) -> set[int]:
    """The ids of the rows the manifest lists as JSON null in `column` of jn."""
    runs = result.entry("public", "jn")["json_nulls"].get(column, [])
    ids = [row["id"] for row in result.rows("public", "jn")]
    return {ids[row] for first, count in runs for row in range(first, first + count)}


@pytest.mark.parametrize("fmt,compression", [("jsonl", "none"), ("json", "gzip")])
def test_json_null_and_sql_null_come_back_apart(db: Database, target: Database, fmt: str, compression: str) -> None:
    """The file writes both as `null` (to_json does); the manifest lists the JSON nulls, the
    restore gives them back. Read in pieces by worker processes, so the rows cross pieces."""
    db.sql(JSON_NULLS_SQL + JSON_NULLS_DATA)
    first = db.dump(
        *("--format", fmt, "--compression", compression, "--run-id", "src"),
        *("--jobs", "2", "--processes", "2", "--split-mib", "0.5"),
    )
    assert first.code == 0, first.stderr
    assert json_null_rows(first, "j") == {g for g in range(1, 30001) if g % 4 in (0, 2)}
    assert json_null_rows(first, "b") == {g for g in range(1, 30001) if g % 3 == 0}
    assert json_null_rows(first, "d") == {g for g in range(1, 30001) if g % 5 == 0 or 100 <= g <= 120}
    assert "note" not in first.entry("public", "jn")["json_nulls"]
    target.sql(JSON_NULLS_SQL)
    loaded = target.restore(first.run_dir)
    assert loaded.code == 0, loaded.stderr
    assert target.fetch(JSON_NULLS_ROWS) == db.fetch(JSON_NULLS_ROWS)
    assert target.fetch("SELECT count(*) FROM jn WHERE j::text = 'null' OR b = 'null'")[0][0] > 0


def test_json_nulls_come_back_in_one_statement_loads_and_beside_nul_escapes(db: Database, target: Database) -> None:
    """A table that references itself is loaded in one statement; a batch with a \\u0000
    escape is loaded around it: JSON nulls come back through both."""
    ddl = (
        "CREATE TABLE tree (id int PRIMARY KEY, parent_id int REFERENCES tree, j json);"
        "CREATE TABLE nul (id int, j json, b jsonb);"
    )
    db.sql(
        ddl + "INSERT INTO tree SELECT g, CASE WHEN g < 50 THEN g + 1 END, "
        "(CASE g % 3 WHEN 0 THEN 'null' WHEN 2 THEN '{\"k\": null}' END)::json FROM generate_series(1, 50) g;"
        "INSERT INTO nul VALUES (1, '{\"k\": \"\\u0000\"}', 'null'), (2, 'null', NULL), (3, NULL, 'null'),"
        " (4, '\"\\u0000\"', '{}'), (5, NULL, NULL);"
    )
    first = db.dump("--run-id", "src")
    assert first.code == 0, first.stderr
    target.sql(ddl)
    loaded = target.restore(first.run_dir)
    assert loaded.code == 0, loaded.stderr
    for query in (
        "SELECT id, parent_id, j IS NULL, j::text FROM tree ORDER BY id",
        "SELECT id, j IS NULL, j::text, b IS NULL, b::text FROM nul ORDER BY id",
    ):
        assert target.fetch(query) == db.fetch(query)
    assert target.fetch("SELECT count(*) FROM tree WHERE j::text = 'null'")[0][0] == 16


AS_TEXT_SQL = (
    "CREATE DOMAIN doc AS jsonb;"
    "CREATE TABLE exact (id int PRIMARY KEY, parent_id int REFERENCES exact, n numeric, n2 numeric(38,2), "
    "ns numeric[], j json, b jsonb, d doc, ja jsonb[]);"
)
AS_TEXT_DATA = (
    "INSERT INTO exact VALUES "
    "(1, NULL, 1234567890123456789012345678901234567890.0123456789, 123456789012345678901234567890123456.78, "
    '\'{1.10,NaN,12345678901234567890.5}\', \'{"b": 1,  "b": 0.1000000000000000055511151231257827,\n "c": 1e400}\', '
    "'{\"x\": 0.1000000000000000055511151231257827}', '[1, null]', ARRAY['{\"a\": 1.0}'::jsonb, NULL]),"
    "(2, 1, 'NaN', -0.01, '[0:1]={1,2}', 'null', 'null', 'null', NULL),"
    "(3, 2, '-Infinity', NULL, NULL, NULL, NULL, NULL, NULL),"
    "(4, 3, -0.000000000000000000000000000001, 0, '{}', '\"\\u0000 \\\\u0000\"', '\"s\"', '{}', '{}');"
)
AS_TEXT_ROWS = (
    "SELECT id, parent_id, n::text, n2::text, ns::text, j IS NULL, j::text, b IS NULL, b::text, d IS NULL, d::text, "
    "ja::text FROM exact ORDER BY id"
)


@pytest.mark.parametrize("fmt", ["jsonl", "json"])
def test_as_text_writes_numeric_and_json_as_strings_and_restores_them_exactly(
    db: Database, target: Database, fmt: str
) -> None:
    """--as-text numeric,json: every numeric a JSON string of its text, json/jsonb their exact text (so
    JSON null is "null", SQL NULL null); the manifest says so, restore and drill give the values back."""
    db.sql(AS_TEXT_SQL + AS_TEXT_DATA)
    first = db.dump("--run-id", "src", "--format", fmt, "--as-text", "numeric", env={"DUMPER_AS_TEXT": "json"})
    assert first.code == 0, first.stderr
    assert first.manifest()["as_text"] == ["numeric"]  # a flag replaces the environment's list
    both = db.dump("--run-id", "both", "--format", fmt, env={"DUMPER_AS_TEXT": "json,numeric"})
    assert both.code == 0, both.stderr
    manifest = both.manifest()
    assert manifest["as_text"] == ["json", "numeric"]
    entry = both.entry("public", "exact")
    assert {c["name"]: c["written"] for c in entry["columns"]} == {
        "id": "json",
        "parent_id": "json",
        "n": "text",
        "n2": "text",
        "ns": "text",
        "j": "text",
        "b": "text",
        "d": "text",
        "ja": "json",  # arrays of json keep to_json's form: a string element could not be told from a text
    }
    assert entry.get("json_nulls", {}) == {}  # JSON null is the string "null" now
    rows = {r["id"]: r for r in both.rows("public", "exact")}
    assert rows[1]["n"] == "1234567890123456789012345678901234567890.0123456789"
    assert rows[1]["ns"] == ["1.10", "NaN", "12345678901234567890.5"]
    assert rows[1]["j"] == '{"b": 1,  "b": 0.1000000000000000055511151231257827,\n "c": 1e400}'
    assert (rows[2]["j"], rows[3]["j"], rows[2]["ns"]) == ("null", None, "[0:1]={1,2}")
    target.sql(AS_TEXT_SQL)
    loaded = target.restore(both.run_dir)
    assert loaded.code == 0, loaded.stderr
    assert target.fetch(AS_TEXT_ROWS) == db.fetch(AS_TEXT_ROWS)
    drilled = db.drill(both.run_dir)
    assert drilled.code == 0, drilled.stderr + drilled.stdout
