"""Retries that heal, against a real server: a terminated backend, a server
restart mid-dump, a server that is not up yet; and guards that fail fast.

A run is held part way through `big` (tests/holds.py) whenever a test needs
it there; the rows written are then checked by id: every row once, in order."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from devtools.cutting_proxy import CuttingProxy

from .conftest import Database, parse_json, wait_until
from .holds import ReplyHold, replies_held, seconds_between, within

# ~11 MB on the wire (about three holds' worth) and ~13 MB on disk: more than a quarter
# of the test server's shared buffers, so a session allowing synchronized scans would use one.
ROWS = 200_000


def big(db: Database, rows: int = ROWS) -> None:
    db.sql(
        f"CREATE TABLE big AS SELECT g AS id, md5(g::text) AS h FROM generate_series(1, {rows}) g;"
        "CREATE TABLE small (i int); INSERT INTO small VALUES (1), (2);"
    )


def ids_in(path: Path) -> list[int]:
    """The ids of a JSON Lines file of `big`, in file order."""
    return [parse_json(line)["id"] for line in path.read_bytes().split(b"\n")[:-1]]


def assert_every_row_once(path: Path, rows: int = ROWS) -> None:
    """The file holds every row of `big` exactly once, in the table's order (ids 1..rows)."""
    ids = ids_in(path)
    assert len(ids) == rows and len(set(ids)) == rows, f"{len(ids)} lines, {len(set(ids))} distinct ids"
    assert ids == list(range(1, rows + 1)), "every row once, in page order"


def wait_for_line(proc: subprocess.Popen[str], *needles: str) -> list[str]:
    """Read stdout until a line holds every needle; returns the lines read."""
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if all(n in line for n in needles):
            return lines
    pytest.fail(f"never saw {needles}: {''.join(lines)} {proc.stderr.read() if proc.stderr else ''}")


def finish(proc: subprocess.Popen[str], seen: list[str]) -> tuple[int, list[dict[str, Any]], str]:
    try:
        stdout, stderr = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        pytest.fail(f"the run did not end: {stdout[-2000:]} {stderr[-2000:]}")
    events = [parse_json(line) for line in [*seen, *stdout.splitlines()] if line.strip()]
    return proc.returncode, events, stderr


def latest_run(db: Database) -> Path:
    out = db.tmp / "out"
    return out / (out / "LATEST").read_text().strip()


def reading(db: Database, table: str = "big") -> list[int]:
    """The backends of this test's database reading `table` for a dumper run."""
    return [
        r[0]
        for r in db.fetch(
            "SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'dumper/%' AND datname = current_database() "
            "AND query LIKE $1",
            f'%FROM ONLY "public"."{table}"%',
        )
    ]


def terminate_reader(db: Database, hold: ReplyHold, where: str = "") -> None:
    """With the run held part way through big, end the backend reading it (the one whose
    query holds `where`, if given); the run goes on when the hold is released."""
    hold.wait()
    pids = [
        pid
        for pid in reading(db)
        if not where or db.fetch("SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND query LIKE $2", pid, f"%{where}%")
    ]
    assert pids, "the held run's reading backend was found"
    assert db.fetch("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = ANY($1::int[])", pids[:1])
    wait_until(lambda: pids[0] not in reading(db))


def test_terminated_backend_is_healed_in_the_same_snapshot(db: Database) -> None:
    big(db)
    with replies_held(db) as hold:
        proc = db.spawn("run", "--jobs", "1", *hold.args)
        seen = wait_for_line(proc, '"event":"started"', "public.big")
        terminate_reader(db, hold)
        hold.release()
        code, events, stderr = finish(proc, seen)
    assert code == 0, stderr
    snapshot = next(e["snapshot_id"] for e in map(parse_json, seen) if e["event"] == "snapshot taken")
    retries = [e for e in events if e["event"] == "connection lost; reading the rest again in the same snapshot"]
    assert len(retries) == 1 and retries[0]["table"] == "public.big"
    run = latest_run(db)
    manifest = parse_json((run / "manifest.json").read_bytes())
    assert manifest["snapshot_id"] == snapshot, "the retry joined the same snapshot"
    assert_every_row_once(run / "public.big.jsonl")
    assert sorted(p.name for p in run.iterdir()) == [
        "manifest.json",
        "public.big.jsonl",
        "public.small.jsonl",
        "schema.post-data.sql",
        "schema.pre-data.sql",
    ]


def test_a_connection_lost_as_a_read_ends_is_healed_in_the_same_snapshot(db: Database) -> None:
    """The connection goes between a table's last rows and the statement that ends its read
    (a server restart at that moment failed a run as an unexpected error, exit 1). The proxy
    cuts the reader's connection when it sends that statement, after its query of `big`, once."""
    if db.cluster.tls:
        pytest.skip("the proxy must see the statement: a server without TLS")
    big(db, 1000)
    ended = b"ROLLBACK TO SAVEPOINT"  # how a read's subtransaction ends (postgres/locks.py)
    read = b'FROM ONLY "public"."big"'  # the reader's query (the first connection locks and sizes it too)
    proxy = CuttingProxy("127.0.0.1", db.cluster.port, cut_when=(read, ended), cuts_at_most=1).start()
    try:
        result = db.dump("--include", "public.big", "--jobs", "1", "--port", str(proxy.port))
    finally:
        proxy.stop()
    assert proxy.cuts == 1, "the read's end was never cut"
    assert result.code == 0, result.stderr
    events = [parse_json(line) for line in result.stdout.splitlines()]
    retries = [e for e in events if e["event"] == "connection lost; reading the rest again in the same snapshot"]
    assert [e["table"] for e in retries] == ["public.big"], [e for e in events if e["level"] != "info"]
    assert [e["event"] for e in events].count("snapshot taken") == 1, "the run's snapshot lived on"
    assert_every_row_once(result.run_dir / "public.big.jsonl", 1000)


def test_a_server_that_is_not_up_yet_is_waited_for(db: Database) -> None:
    db.sql("CREATE TABLE t (i int); INSERT INTO t VALUES (1);")
    db.cluster.pg_ctl("stop", "-m", "fast", "-w")
    try:
        proc = db.spawn("run", "--connect-attempts", "8")
        seen = wait_for_line(proc, '"event":"connect failed, retrying"')  # refused: the server is down
    finally:
        db.cluster.launch()
    code, events, stderr = finish(proc, seen)
    assert code == 0, stderr
    run = latest_run(db)
    assert (run / "public.t.jsonl").read_bytes() == b'{"i":1}\n'
    assert next(e["attempt"] for e in events if e["event"] == "connect failed, retrying") == 2  # the next one


def test_lock_timeout_names_the_table(db: Database) -> None:
    db.sql("CREATE TABLE busy (i int); CREATE TABLE calm (i int);")
    with db.locked("busy"):
        result = db.dump("--lock-timeout", "2", "--stall-timeout", "5")
    assert result.code == 5
    assert "table public.busy: could not lock it within --lock-timeout" in result.stderr
    events = [parse_json(line) for line in result.stdout.splitlines()]
    taken, failed = (next(e for e in events if e["event"] == name) for name in ("snapshot taken", "run failed"))
    # The server ends the wait at --lock-timeout; at worst the client does, --stall-timeout later.
    within(seconds_between(taken, failed), 2, 2 + 5, "the lock wait")
    assert result.files() == []


def test_statement_timeout_fails_the_table(db: Database) -> None:
    """A read that cannot start is ended by --statement-timeout, not by luck: another session
    rebuilds the table's index in an open transaction (ACCESS EXCLUSIVE on the index, SHARE
    on the table: the run's table locks are granted, its query's planning waits for the
    index, and --lock-timeout 0 would let it wait for ever)."""
    big(db, 1000)
    db.sql("CREATE INDEX big_id ON big (id);")
    with db.locked("big_id", by="REINDEX INDEX big_id"):
        proc = db.spawn("run", "--statement-timeout", "1", "--lock-timeout", "0", "--schema-files", "off")
        _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 5, stderr
    assert "table public.big" in stderr and "canceling statement due to statement timeout" in stderr
    assert not list((db.tmp / "out").rglob("*"))


def test_application_name_is_visible_to_dbas(db: Database) -> None:
    big(db)
    with replies_held(db) as hold:
        proc = db.spawn("run", "--jobs", "2", *hold.args)
        seen = wait_for_line(proc, '"event":"started"', "public.big")
        hold.wait()
        names = {
            r[0]
            for r in db.fetch(
                "SELECT application_name FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND backend_type = 'client backend'"
            )
        }  # not autovacuum workers
        hold.release()
        code, _, stderr = finish(proc, seen)
    assert code == 0, stderr
    assert names == {"dumper/0.1.0"}


def test_run_attempts_running_out_ends_exit_5_with_the_last_cause(db: Database) -> None:
    big(db)
    with replies_held(db) as hold:
        proc = db.spawn("run", "--jobs", "1", "--run-attempts", "1", *hold.args)
        seen = wait_for_line(proc, '"event":"started"', "public.big")
        hold.wait()
        db.cluster.restart()  # the run's snapshot is gone with its session
        hold.release()
        code, events, stderr = finish(proc, seen)
    assert code == 5, stderr
    (line,) = stderr.strip().splitlines()
    assert "could not join the run's snapshot" in line, line
    assert not [e for e in events if e["event"] == "snapshot lost; starting the run again with a fresh snapshot"]
    assert not list((db.tmp / "out").rglob("manifest.json")) and not (db.tmp / "out" / "LATEST").exists()


def test_piece_attempts_running_out_ends_exit_5_naming_the_table(db: Database) -> None:
    big(db)
    with replies_held(db) as hold:
        proc = db.spawn("run", "--jobs", "1", "--run-attempts", "1", *hold.args)
        seen = wait_for_line(proc, '"event":"started"', "public.big")
        for attempt in (2, 3):
            terminate_reader(db, hold)
            hold.release(hold_next=True)  # the next attempt is held part way too, as this one was
            seen += wait_for_line(proc, "reading the rest again", f'"attempt":{attempt}')
        terminate_reader(db, hold)
        hold.release()
        code, _, stderr = finish(proc, seen)
    assert code == 5, stderr
    (line,) = stderr.strip().splitlines()
    assert "table public.big: the connection to the server was lost" in line, line
    assert not list((db.tmp / "out").rglob("manifest.json"))


def test_too_many_connections_is_retried_until_a_slot_frees(db: Database) -> None:
    db.sql(
        "CREATE TABLE t (i int); INSERT INTO t VALUES (1);"
        "CREATE ROLE scarce LOGIN PASSWORD 'pw' CONNECTION LIMIT 2;"
        f"GRANT CONNECT ON DATABASE {db.name} TO scarce; GRANT SELECT ON t TO scarce;"
    )
    holder = subprocess.Popen(
        [
            "psql",
            "-X",
            "-q",
            "-h",
            str(db.cluster.socket_dir),
            "-p",
            str(db.cluster.port),
            "-U",
            "scarce",
            "-d",
            db.name,
            "-c",
            "SELECT pg_sleep(600)",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    held_by_psql = "SELECT pid FROM pg_stat_activity WHERE usename = 'scarce' AND application_name = 'psql'"
    try:
        wait_until(lambda: db.fetch(held_by_psql))
        proc = db.spawn("run", "--jobs", "1", "--connect-attempts", "10", env={"PGUSER": "scarce", "PGPASSWORD": "pw"})
        # The first to be refused is pg_dump (schema files) or a reader: each is retried.
        seen = wait_for_line(proc, "retrying", 'too many connections for role \\"scarce\\"')
        db.fetch(f"SELECT pg_terminate_backend(pid) FROM ({held_by_psql}) h")  # the slot frees
        code, events, stderr = finish(proc, seen)
    finally:
        holder.kill()
        holder.wait()
        db.fetch("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'scarce'")
        db.sql("DROP OWNED BY scarce; DROP ROLE scarce;")
    assert code == 0, stderr
    run = latest_run(db)
    manifest = parse_json((run / "manifest.json").read_bytes())
    assert [(t["table"], t["rows"]) for t in manifest["tables"]] == [("t", 1)]
    assert (run / "public.t.jsonl").read_bytes() == b'{"i":1}\n'
    assert next(e for e in events if e["event"] == "run finished")["status"] == "success"


def test_the_runs_locks_keep_ddl_out_until_it_ends(db: Database) -> None:
    """ACCESS SHARE on every table from the start (as pg_dump takes): an ALTER or DROP of a
    table waits until the run ends, even of a table already written."""
    big(db)
    with replies_held(db) as hold:
        proc = db.spawn("run", "--jobs", "2", *hold.args)
        seen = wait_for_line(proc, '"event":"started"', "public.big")
        hold.wait()
        locked = {
            r[0]
            for r in db.fetch(
                "SELECT c.relname FROM pg_locks l JOIN pg_class c ON c.oid = l.relation JOIN pg_stat_activity a "
                "ON a.pid = l.pid WHERE a.application_name LIKE 'dumper/%' AND a.datname = current_database() "
                "AND l.mode = 'AccessShareLock' AND l.granted AND c.relnamespace = 'public'::regnamespace"
            )
        }
        assert locked == {"big", "small"}
        for ddl in ("ALTER TABLE small ADD COLUMN extra int", "DROP TABLE big"):
            with pytest.raises(RuntimeError, match="canceling statement due to lock timeout"):
                db.sql(f"SET lock_timeout = '500ms'; {ddl}")
        hold.release()
        code, _, stderr = finish(proc, seen)
    assert code == 0, stderr
    assert (latest_run(db) / "public.small.jsonl").read_bytes() == b'{"i":1}\n{"i":2}\n'
    db.sql("ALTER TABLE small ADD COLUMN extra int")  # and once it ended, the DDL goes through


def keepalive_timers(port: int, side: str) -> list[int]:
    """Seconds left on the keepalive timer of every idle established TCP socket whose `side`
    ('dport' or 'sport') is `port` (ss -o). A socket with bytes in flight (Send-Q) shows its
    retransmission timer instead (the held connection's server side, whose peer stopped reading)."""
    out = subprocess.run(
        ["ss", "-tnoH", "state", "established", f"( {side} = :{port} )"], capture_output=True, text=True, check=True
    ).stdout
    timers = []
    for line in out.splitlines():
        if line.split()[1] != "0":
            continue
        assert "timer:(keepalive," in line, f"an idle connection without keepalive: {line}"
        timers.append(int(line.split("timer:(keepalive,")[1].split("sec")[0].split("min")[0]))
    return timers


def test_connections_use_tcp_keepalives_on_both_sides(db: Database) -> None:
    big(db)
    with replies_held(db) as hold:
        proc = db.spawn("run", "--jobs", "1", *hold.args)
        seen = wait_for_line(proc, '"event":"started"', "public.big")
        hold.wait()  # the connections are idle now: their keepalive timers run
        client = keepalive_timers(hold.port, "dport")  # the run's sockets (to the hold's port)
        server = keepalive_timers(db.cluster.port, "sport")  # the server's (to the hold's own sockets)
        hold.release()
        code, _, stderr = finish(proc, seen)
    assert code == 0, stderr
    assert len(client) >= 2 and all(0 <= t <= 30 for t in client), client  # TCP_KEEPIDLE 30 s
    assert len(server) >= 1 and all(30 < t <= 60 for t in server), server  # tcp_keepalives_idle 60 s


def test_a_catalog_query_that_waits_is_ended_by_the_stall_timeout(db: Database) -> None:
    """Reading a sequence's position waits behind a lock on it: --lock-timeout 0 would wait
    forever, --stall-timeout ends it (catalog reads have no lock timeout of their own)."""
    db.sql("CREATE TABLE t (id serial); INSERT INTO t DEFAULT VALUES;")
    with db.locked("t_id_seq", by="ALTER SEQUENCE t_id_seq RENAME TO t_id_seq_held"):
        result = db.dump("--lock-timeout", "0", "--stall-timeout", "3")
    assert result.code == 5, result.stderr
    assert "while taking the snapshot and reading the catalog: the database sent nothing for 3 s" in result.stderr
    events = [parse_json(line) for line in result.stdout.splitlines()]
    taken, failed = (next(e for e in events if e["event"] == name) for name in ("snapshot taken", "run failed"))
    within(seconds_between(taken, failed), 3, 2 * 3, "the catalog read")
    assert result.files() == []
