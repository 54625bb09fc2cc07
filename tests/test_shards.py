"""--shards N: N real `dumper run` processes, each with JOB_COMPLETION_INDEX as a Kubernetes
Indexed Job gives it, dump one snapshot together: the dump one process writes, the same
files byte for byte; a lost worker started again, a lost coordinator, concurrent writers."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from dumper.format.layout import SHARDS, written_by_a_run

from .conftest import BUCKET, Database, Moto, parse_json, read_rows, wait_until
from .holds import frozen, replies_held
from .test_s3 import keys, s3_env

TABLES = """
CREATE TABLE big (id bigint PRIMARY KEY, name text, seen timestamptz, doc jsonb, tags text[]);
INSERT INTO big SELECT g, repeat(md5(g::text), 20), timestamptz '2024-01-01' + g * interval '1 s',
       CASE WHEN g % 7 = 0 THEN 'null'::jsonb ELSE jsonb_build_object('g', g) END, ARRAY['t' || g % 5, NULL]
FROM generate_series(1, 30000) g;
CREATE TABLE mid (id int, v numeric); INSERT INTO mid SELECT g, g * 1.5 FROM generate_series(1, 5000) g;
CREATE TABLE "Odd ""name"" ☺" (id int, j json); INSERT INTO "Odd ""name"" ☺" VALUES (1, 'null'), (2, NULL);
CREATE TABLE empty (a int);
""" + "".join(f"CREATE TABLE small{i} (id int, v text); INSERT INTO small{i} VALUES ({i}, 'x');" for i in range(6))


def start_shards(
    db: Database, shards: int, *args: str, env: dict[str, str] | None = None, indexes: range | None = None
) -> dict[int, subprocess.Popen[str]]:
    """The Job's pods: `dumper run --shards N` with JOB_COMPLETION_INDEX, as Kubernetes starts them."""
    return {
        index: db.spawn("run", "--shards", str(shards), *args, env={**(env or {}), "JOB_COMPLETION_INDEX": str(index)})
        for index in (indexes if indexes is not None else range(shards))
    }


def finished(processes: dict[int, subprocess.Popen[str]], timeout: float = 240) -> dict[int, tuple[int, str, str]]:
    return {i: (p.wait(timeout), *p.communicate(timeout=30)) for i, p in processes.items()}


def entries(manifest: dict[str, Any]) -> dict[str, tuple[Any, ...]]:
    return {
        t["path"]: (t["rows"], t["bytes"], t["sha256"], t["json_nulls"], [c["name"] for c in t["columns"]])
        for t in manifest["tables"]
    }


@pytest.mark.parametrize("shards", [2, 3])
def test_n_processes_write_what_one_process_writes(db: Database, shards: int) -> None:
    db.sql(TABLES)
    args = ["--run-id", "job", "--split-mib", "0.5", "--jobs", "2"]
    done = finished(start_shards(db, shards, *args))
    assert {i: code for i, (code, _, _) in done.items()} == dict.fromkeys(range(shards), 0), done
    one = db.dump("--run-id", "one", "--split-mib", "0.5", "--jobs", "2")
    assert one.code == 0, one.stderr
    out = db.tmp / "out"
    sharded = json.loads((out / "job" / "manifest.json").read_text())
    assert entries(sharded) == entries(one.manifest()), "the same files, rows and checksums"
    for path in entries(sharded):
        assert (out / "job" / path).read_bytes() == (out / "one" / path).read_bytes(), path
    assert not (out / "job" / SHARDS).exists(), "the shared state goes with the run's end"
    assert (out / "LATEST").read_text().strip() in ("job", "one")
    events = [parse_json(line) for line in done[1][1].splitlines()]
    assert any(e["event"] == "piece written" for e in events), "index 1 read pieces of its own"
    pieces = [json.loads(line) for line in done[0][1].splitlines()]
    planned = next(e for e in pieces if e["event"] == "plan written")
    assert (planned["attempt"], planned["shards"]) == (1, shards)
    verified = db.spawn("verify", str(out / "job"))
    assert verified.wait(60) == 0, verified.communicate()


def test_a_gzip_json_array_dump_from_shards_holds_the_same_rows(db: Database) -> None:
    db.sql(TABLES)
    args = ["--run-id", "job", "--split-mib", "0.5", "--format", "json", "--compression", "gzip"]
    done = finished(start_shards(db, 2, *args))
    assert [code for code, _, _ in done.values()] == [0, 0], done
    one = db.dump("--run-id", "one", "--split-mib", "0.5", "--format", "json", "--compression", "gzip")
    assert one.code == 0
    sharded = json.loads((db.tmp / "out" / "job" / "manifest.json").read_text())
    assert {p: e[0::3] for p, e in entries(sharded).items()} == {p: e[0::3] for p, e in entries(one.manifest()).items()}
    for table in ("big", 'Odd "name" ☺', "empty", "small3"):
        path = db.tmp / "out" / "job" / next(t["path"] for t in sharded["tables"] if t["table"] == table)
        assert read_rows(path) == one.rows("public", table), table


def test_shards_write_to_s3(db: Database, s3: Any, moto: Moto) -> None:
    db.sql(TABLES)
    aws = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}  # the s3 fixture's test keys
    env = {**s3_env(moto), **aws}
    done = finished(start_shards(db, 3, "--run-id", "job", "--split-mib", "0.5", env=env))
    assert [code for code, _, _ in done.values()] == [0, 0, 0], done
    listed = keys(s3, "nightly/job/")
    assert "nightly/job/manifest.json" in listed
    assert not [k for k in listed if f"/{SHARDS}/" in k], "the shared state goes with the run's end"
    one = db.dump("--run-id", "one", "--split-mib", "0.5", env=env)
    assert one.code == 0
    manifests = [
        json.loads(s3.get_object(Bucket=BUCKET, Key=f"nightly/{run}/manifest.json")["Body"].read())
        for run in ("job", "one")
    ]
    assert entries(manifests[0]) == entries(manifests[1])


class Events:
    """A process's JSON log lines (its stdout), collected in a thread as they come."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.events: list[dict[str, Any]] = []
        self.reader = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self.reader.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.events.append(parse_json(line))

    def saw(self, event: str) -> bool:
        return any(e.get("event") == event for e in self.events)


def test_a_worker_woken_after_the_run_ended_writes_no_shared_state_again(db: Database, s3: Any, moto: Moto) -> None:
    """Index 1 is stopped once its pieces are written, until index 0 has ended the run and removed
    the shared state: woken, index 1 ends without writing any of it again (no late heartbeat)."""
    db.sql(TABLES)
    env = {**s3_env(moto), **{k: v for k, v in os.environ.items() if k.startswith("AWS_")}}
    processes = start_shards(db, 2, "--run-id", "job", "--split-mib", "0.5", env=env)
    follower = Events(processes[1])
    wait_until(lambda: follower.saw("this shard's pieces are written"), 120)
    with frozen(processes[1].pid):
        code, _, err = finished({0: processes[0]}, timeout=120)[0]
        assert code == 0, err
        assert "nightly/job/manifest.json" in keys(s3, "nightly/job/")
    assert processes[1].wait(60) == 0
    follower.reader.join(30)
    assert not [k for k in keys(s3, "nightly/job/") if f"/{SHARDS}/" in k], "the shared state goes with the run's end"


def test_a_worker_started_again_with_its_pieces_recorded_writes_nothing(db: Database) -> None:
    """Index 1 is killed once its pieces are written, while index 0 is stopped; started again, it has
    nothing left to read: it writes nothing into the shared state, waits, and the run completes."""
    db.sql(TABLES)
    args = ["--run-id", "job", "--split-mib", "0.5"]
    processes = start_shards(db, 2, *args)
    follower = Events(processes[1])
    wait_until(lambda: follower.saw("this shard's pieces are written"), 120)
    alive = db.tmp / "out" / "job" / SHARDS / "attempt-1" / "alive-1"
    with frozen(processes[0].pid):
        processes[1].kill()
        processes[1].wait(30)
        before = alive.read_bytes(), alive.stat().st_mtime_ns
        again = start_shards(db, 2, *args, indexes=range(1, 2))[1]
        retried = Events(again)
        wait_until(lambda: retried.saw("this shard's pieces are written"), 120)
        assert (alive.read_bytes(), alive.stat().st_mtime_ns) == before, "no heartbeat without pieces to read"
    code, _, err = finished({0: processes[0]})[0]
    assert code == 0, err
    assert again.wait(60) == 0
    out = db.tmp / "out" / "job"
    assert not (out / SHARDS).exists(), "the shared state goes with the run's end"
    manifest = json.loads((out / "manifest.json").read_text())
    big = next(t for t in manifest["tables"] if t["table"] == "big")
    ids = [json.loads(line)["id"] for line in (out / big["path"]).read_text().splitlines()]
    assert sorted(ids) == list(range(1, 30001)), "every row once"


def test_concurrent_writers_see_one_snapshot_across_shards(db: Database) -> None:
    """pgbench's transactions move money between four tables; every snapshot balances them.
    Read by different processes while pgbench runs, the dump still balances."""
    bench = str(db.cluster.bin / "pgbench")
    where = ["-h", str(db.cluster.socket_dir), "-p", str(db.cluster.port), "-U", "postgres", db.name]
    subprocess.run([bench, "-i", "-q", "-s", "1", *where], check=True, capture_output=True)
    writers = subprocess.Popen([bench, "-n", "-c", "2", "-T", "600", *where], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_until(lambda: db.fetch("SELECT count(*) FROM pgbench_history")[0][0] > 100, 120)
        done = finished(start_shards(db, 2, "--run-id", "job", "--split-mib", "0.5"))
        assert [code for code, _, _ in done.values()] == [0, 0], done
        moved = db.fetch("SELECT count(*) FROM pgbench_history")[0][0]
    finally:
        writers.terminate()
        writers.wait(30)
    out = db.tmp / "out" / "job"
    manifest = json.loads((out / "manifest.json").read_text())

    def rows(table: str) -> list[Any]:
        path = out / next(t["path"] for t in manifest["tables"] if t["table"] == table)
        return [json.loads(line) for line in path.read_text().splitlines()]

    history = rows("pgbench_history")
    assert 100 < len(history) < moved, "the dump's snapshot is one taken while pgbench wrote"
    total = sum(r["delta"] for r in history)
    assert sum(r["abalance"] for r in rows("pgbench_accounts")) == total
    assert sum(r["tbalance"] for r in rows("pgbench_tellers")) == total
    assert sum(r["bbalance"] for r in rows("pgbench_branches")) == total


def test_a_worker_killed_mid_piece_and_started_again_completes_the_run(db: Database) -> None:
    db.sql(TABLES)
    args = ["--run-id", "job", "--split-mib", "0.5"]
    lone = ["--jobs", "1", "--processes", "1"]  # index 1 reads on one connection: the one held
    with replies_held(db, after=1 << 20) as hold:
        processes = start_shards(db, 2, *args, indexes=range(0, 1))
        processes.update(start_shards(db, 2, *args, *lone, *hold.args, indexes=range(1, 2)))
        hold.wait()  # index 1 is part way through a piece of its own
        processes[1].kill()
        processes[1].wait(30)
        hold.release()
    again = start_shards(db, 2, *args, *lone, indexes=range(1, 2))  # the Job's retry of index 1
    done = finished({0: processes[0], 1: again[1]})
    assert [code for code, _, _ in done.values()] == [0, 0], done
    out = db.tmp / "out" / "job"
    manifest = json.loads((out / "manifest.json").read_text())
    big = next(t for t in manifest["tables"] if t["table"] == "big")
    ids = [json.loads(line)["id"] for line in (out / big["path"]).read_text().splitlines()]
    assert sorted(ids) == list(range(1, 30001)), "every row once"
    one = db.dump("--run-id", "one", "--split-mib", "0.5")
    assert entries(manifest) == entries(one.manifest())


def test_a_lost_coordinator_ends_the_attempt_and_a_new_one_completes(db: Database) -> None:
    db.sql(TABLES)
    args = ["--run-id", "job", "--split-mib", "0.5", "--stall-timeout", "3"]
    out = db.tmp / "out"
    processes = start_shards(db, 3, *args)
    wait_until(lambda: (out / "job" / SHARDS / "attempt-1" / "plan.json").exists(), 120)
    with frozen(processes[0].pid):  # index 0 stops: its heartbeat stops with it
        done = finished({i: processes[i] for i in (1, 2)}, timeout=120)
        processes[0].kill()
    for code, _, err in done.values():
        assert code == 5, err
        assert "shard 0 (the coordinator) wrote no heartbeat for 3 s (--stall-timeout)" in err
    assert not (out / "job" / "manifest.json").exists() and not (out / "LATEST").exists()
    # The Job's retries: index 0 begins attempt 2, the others follow it.
    done = finished(start_shards(db, 3, *args))
    assert [code for code, _, _ in done.values()] == [0, 0, 0], done
    planned = next(e for e in map(parse_json, done[0][1].splitlines()) if e["event"] == "plan written")
    assert planned["attempt"] == 2
    assert (out / "LATEST").read_text().strip() == "job"
    one = db.dump("--run-id", "one", "--split-mib", "0.5")
    assert entries(json.loads((out / "job" / "manifest.json").read_text())) == entries(one.manifest())


def test_a_silent_worker_fails_the_coordinator_within_the_bound(db: Database) -> None:
    db.sql(TABLES)
    args = ["--run-id", "job", "--split-mib", "0.5", "--stall-timeout", "3"]
    processes = start_shards(db, 2, *args)
    wait_until(lambda: (db.tmp / "out" / "job" / SHARDS / "attempt-1" / "alive-1").exists(), 120)
    with frozen(processes[1].pid):
        done = finished({0: processes[0]}, timeout=120)
    code, _, err = done[0]
    assert code == 5, err
    assert "shard 1 wrote no piece and no heartbeat for 3 s (--stall-timeout)" in err
    assert not (db.tmp / "out" / "job" / "manifest.json").exists()


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--shards", "2"], {}, "--shards 2: every process must write the same run: give --run-id"),
        (
            ["--shards", "2", "--run-id", "r"],
            {"JOB_COMPLETION_INDEX": "2"},
            "--shard-index 2 (or JOB_COMPLETION_INDEX)",
        ),
        (["--shards", "2", "--run-id", "r", "--format", "parquet"], {}, "--shards with --format parquet"),
    ],
)
def test_sharding_options_that_cannot_work_are_refused(
    tmp_path: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    import io

    from dumper import cli

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main(
            ["run", *args, "--output", str(tmp_path / "out")], {"DUMPER_USER": "u", **env}, stdout=io.StringIO()
        )
    assert code == 2 and message in err.getvalue(), err.getvalue()
    assert not (tmp_path / "out").exists()


def test_a_failed_sharded_runs_shared_state_is_a_runs_leftover() -> None:
    """prune removes a killed run's folder only when everything in it is a run's: .shards is."""
    for path in (".shards/alive-0", ".shards/attempt-2/plan.json", ".shards/attempt-2/parts/3.1.part"):
        assert written_by_a_run(path), path


def test_a_process_started_for_another_number_of_shards_is_refused(db: Database) -> None:
    db.sql(TABLES)
    coordinator = start_shards(db, 2, "--run-id", "job", "--stall-timeout", "3", indexes=range(0, 1))
    other = start_shards(db, 3, "--run-id", "job", "--format", "json", indexes=range(1, 2))
    code, _, err = finished(other)[1]
    assert code == 2 and "--shards 3: index 0 planned the run for 2 processes" in err, err
    code, _, err = finished(coordinator)[0]
    assert code == 5 and "shard 1 wrote no piece and no heartbeat for 3 s" in err, err
