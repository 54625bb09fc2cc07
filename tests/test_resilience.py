"""Retries that heal, against a real server: a terminated backend, a server
restart mid-dump, a server that is not up yet; and guards that fail fast."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from .conftest import Database, parse_json, wait_until

ROWS = 1_500_000


def big(db: Database, rows: int = ROWS) -> None:
    db.sql(f"CREATE TABLE big AS SELECT g AS id, md5(g::text) AS h FROM generate_series(1, {rows}) g;"
           "CREATE TABLE small (i int); INSERT INTO small VALUES (1), (2);")


def wait_for_line(proc: subprocess.Popen[str], *needles: str) -> list[str]:
    """Read stdout until a line holds every needle; returns the lines read."""
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if all(n in line for n in needles):
            return lines
    pytest.fail(f"never saw {needles}: {''.join(lines)} {proc.stderr.read() if proc.stderr else ''}")


def finish(proc: subprocess.Popen[str], seen: list[str]) -> tuple[int, list[dict[str, object]], str]:
    stdout, stderr = proc.communicate(timeout=240)
    events = [parse_json(line) for line in [*seen, *stdout.splitlines()] if line.strip()]
    return proc.returncode, events, stderr


def latest_run(db: Database) -> Path:
    out = db.tmp / "out"
    return out / (out / "LATEST").read_text().strip()


def count_rows(path: Path) -> int:
    return path.read_bytes().count(b"\n")


def test_terminated_backend_is_healed_in_the_same_snapshot(db: Database) -> None:
    big(db)
    proc = db.spawn("run", "--jobs", "1")
    seen = wait_for_line(proc, '"event":"started"', "public.big")
    time.sleep(0.3)
    snapshot = next(e["snapshot_id"] for e in map(parse_json, seen) if e["event"] == "snapshot taken")
    killed = db.fetch("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE application_name LIKE 'dumper/%' AND query LIKE '%FROM ONLY \"public\".\"big\"%'")
    assert killed
    code, events, stderr = finish(proc, seen)
    assert code == 0, stderr
    retries = [e for e in events if e["event"] == "connection lost; reading the rest again in the same snapshot"]
    assert len(retries) == 1 and retries[0]["table"] == "public.big"
    run = latest_run(db)
    manifest = parse_json((run / "manifest.json").read_bytes())
    assert manifest["snapshot_id"] == snapshot, "the retry joined the same snapshot"
    assert count_rows(run / "public.big.jsonl") == ROWS
    assert sorted(p.name for p in run.iterdir()) == ["manifest.json", "public.big.jsonl", "public.small.jsonl",
                                                     "schema.post-data.sql", "schema.pre-data.sql"]


def test_a_server_that_is_not_up_yet_is_waited_for(db: Database) -> None:
    db.sql("CREATE TABLE t (i int); INSERT INTO t VALUES (1);")
    db.cluster.pg_ctl("stop", "-m", "fast", "-w")
    starter = threading.Timer(2.0, db.cluster.launch)
    starter.start()
    try:
        result = db.dump("--connect-attempts", "8")
    finally:
        starter.join()
    assert result.code == 0, result.stdout[-2500:]
    assert '"event":"connect failed, retrying"' in result.stdout
    assert result.rows("public", "t") == [{"i": 1}]


def test_lock_timeout_names_the_table(db: Database) -> None:
    db.sql("CREATE TABLE busy (i int); CREATE TABLE calm (i int);")
    holder = subprocess.Popen(
        ["psql", "-X", "-q", "-h", str(db.cluster.socket_dir), "-p", str(db.cluster.port), "-U", "postgres",
         "-d", db.name, "-c", "BEGIN; LOCK TABLE busy IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(30);"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not db.fetch("SELECT 1 FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                           "WHERE c.relname = 'busy' AND l.mode = 'AccessExclusiveLock' AND l.granted"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        started = time.monotonic()
        result = db.dump("--lock-timeout", "1")
        took = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait()
    assert result.code == 5
    assert "table public.busy: could not lock it within --lock-timeout" in result.stderr
    assert took < 20
    assert result.files() == []


def test_statement_timeout_fails_the_table(db: Database) -> None:
    big(db, 300_000)
    result = db.dump("--statement-timeout", "0.001", "--batch-rows", "100000")
    assert result.code == 5
    assert "canceling statement due to statement timeout" in result.stderr
    assert result.files() == []


def test_application_name_is_visible_to_dbas(db: Database) -> None:
    big(db)
    proc = db.spawn("run", "--jobs", "2")
    seen = wait_for_line(proc, '"event":"started"', "public.big")
    names = {r[0] for r in db.fetch("SELECT application_name FROM pg_stat_activity "
                                    "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                                    "AND backend_type = 'client backend'")}  # not autovacuum workers
    code, _, stderr = finish(proc, seen)
    assert code == 0, stderr
    assert names == {"dumper/0.1.0"}


def _freeze_and(proc: subprocess.Popen[str], db: Database, action: str) -> None:
    """With the client frozen mid-table, end its reading backend (or restart the server)."""
    wait_until(lambda: reading(db))
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        if action == "restart":
            db.cluster.restart()
        else:
            assert db.fetch("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = ANY($1::int[])",
                            reading(db))
    finally:
        os.kill(proc.pid, signal.SIGCONT)


def reading(db: Database) -> list[int]:
    return [r[0] for r in db.fetch("SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'dumper/%' "
                                   "AND query LIKE '%FROM ONLY \"public\".\"big\"%'")]


def test_run_attempts_running_out_ends_exit_5_with_the_last_cause(db: Database) -> None:
    big(db)
    proc = db.spawn("run", "--jobs", "1", "--run-attempts", "1")
    seen = wait_for_line(proc, '"event":"started"', "public.big")
    _freeze_and(proc, db, "restart")
    code, events, stderr = finish(proc, seen)
    assert code == 5, stderr
    (line,) = stderr.strip().splitlines()
    assert "could not join the run's snapshot" in line, line
    assert not [e for e in events if e["event"] == "snapshot lost; starting the run again with a fresh snapshot"]
    assert not list((db.tmp / "out").rglob("manifest.json")) and not (db.tmp / "out" / "LATEST").exists()


def test_piece_attempts_running_out_ends_exit_5_naming_the_table(db: Database) -> None:
    big(db)
    proc = db.spawn("run", "--jobs", "1", "--run-attempts", "1")
    seen = wait_for_line(proc, '"event":"started"', "public.big")
    for attempt in (2, 3):
        _freeze_and(proc, db, "terminate")
        seen += wait_for_line(proc, "reading the rest again", f'"attempt":{attempt}')
    _freeze_and(proc, db, "terminate")
    code, _, stderr = finish(proc, seen)
    assert code == 5, stderr
    (line,) = stderr.strip().splitlines()
    assert "table public.big: the connection to the server was lost" in line, line
    assert not list((db.tmp / "out").rglob("manifest.json"))


def test_too_many_connections_is_retried_until_a_slot_frees(db: Database) -> None:
    db.sql("CREATE TABLE t (i int); INSERT INTO t VALUES (1);"
           "CREATE ROLE scarce LOGIN PASSWORD 'pw' CONNECTION LIMIT 2;"
           f"GRANT CONNECT ON DATABASE {db.name} TO scarce; GRANT SELECT ON t TO scarce;")
    holder = subprocess.Popen(
        ["psql", "-X", "-q", "-h", str(db.cluster.socket_dir), "-p", str(db.cluster.port), "-U", "scarce",
         "-d", db.name, "-c", "SELECT pg_sleep(600)"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: db.fetch("SELECT 1 FROM pg_stat_activity WHERE usename = 'scarce'"))
        proc = db.spawn("run", "--jobs", "1", "--connect-attempts", "10",
                        env={"PGUSER": "scarce", "PGPASSWORD": "pw"})
        # The first to be refused is pg_dump (schema files) or a reader: each is retried.
        seen = wait_for_line(proc, "retrying", 'too many connections for role \\"scarce\\"')
        db.fetch("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'scarce'")
        code, events, stderr = finish(proc, seen)
    finally:
        holder.kill()
        holder.wait()
        db.fetch("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'scarce'")
        db.sql("DROP OWNED BY scarce; DROP ROLE scarce;")
    assert code == 0, stderr
    assert [e for e in events if e["event"] == "run finished" or e["event"] == "done"]
