"""Dumping from a hot standby (a read replica): the run knows it reads one, says
what can cancel it, names a cancel by WAL replay as a conflict with recovery
with its fix, and completes when hot_standby_feedback is on.

The standby streams from the test cluster (pg_basebackup -R). The primary is
made busy by the test itself (UPDATE + VACUUM of rows the dump's snapshot
still sees) while the run is held inside the table (tests/holds.py), never by luck.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from devtools.pgcluster import Cluster

from .conftest import Database, parse_json, wait_until
from .holds import ReplyHold, replies_held
from .test_resilience import assert_every_row_once, big, finish, wait_for_line


@pytest.fixture
def standby(db: Database) -> Iterator[Cluster]:
    replica = db.cluster.standby(max_standby_streaming_delay="1s", wal_receiver_status_interval="1s")
    try:
        yield replica
    finally:
        replica.stop()


def on(replica: Cluster) -> dict[str, str]:
    return {"PGPORT": str(replica.port)}


def replay_caught_up(db: Database, replica: Cluster) -> None:
    # The insert position: with synchronous_commit = off the write position can lag the last commit.
    target = db.cluster.psql("SELECT pg_current_wal_insert_lsn()").strip()
    wait_until(lambda: replica.psql(f"SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn").strip() == "t")


def dumper_sessions(replica: Cluster, dbname: str) -> list[Any]:
    return replica.psql(
        f"SELECT pid FROM pg_stat_activity WHERE datname = '{dbname}' AND application_name LIKE 'dumper/%'", dbname
    ).split()


def make_the_primary_busy(db: Database) -> None:
    """Change and vacuum away row versions that the dump's snapshot still reads."""
    db.sql("UPDATE big SET h = h || 'x' WHERE id % 10 = 0; VACUUM big;")


def test_a_quiet_primary_gives_a_complete_dump_and_a_log_that_names_the_standby(db: Database, standby: Cluster) -> None:
    big(db, 100_000)
    replay_caught_up(db, standby)
    result = db.dump("--jobs", "2", env=on(standby))
    assert result.code == 0, result.stderr
    events = [parse_json(line) for line in result.stdout.splitlines()]
    (taken,) = [e for e in events if e["event"] == "snapshot taken"]
    assert taken["standby"] is True and taken["hot_standby_feedback"] == "off"
    assert taken["max_standby_streaming_delay"] == "1s" and taken["max_standby_archive_delay"] == "30s"
    assert 0 <= float(taken["replay_lag_s"]) < 60
    (warning,) = [e for e in events if e["level"] == "warning" and "sslmode" not in e["event"]]
    assert (
        "hot_standby_feedback = off" in warning["event"]
        and "max_standby_streaming_delay = 1s" in warning["event"]
        and "DB parameter group" in warning["event"]
    )
    assert events.index(warning) < next(i for i, e in enumerate(events) if e["event"] == "started")
    assert {t["table"]: t["rows"] for t in result.manifest()["tables"]} == {"big": 100_000, "small": 2}


def test_a_primary_dump_says_it_is_not_a_standby(db: Database) -> None:
    big(db, 10)
    result = db.dump()
    assert result.code == 0, result.stderr
    (taken,) = [parse_json(line) for line in result.stdout.splitlines() if '"snapshot taken"' in line]
    assert taken["standby"] is False


def test_check_reports_the_standby_and_its_risk(db: Database, standby: Cluster) -> None:
    import sys

    from devtools.pgcluster import ROOT_DIR

    big(db, 10)
    proc = subprocess.run(
        [sys.executable, "-m", "dumper", "check"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT_DIR), **db.base_env(), **on(standby)},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "standby: a hot standby (replay lag" in proc.stdout
    assert "hot_standby_feedback = off, max_standby_streaming_delay = 1s" in proc.stdout
    assert "warning: reading a standby with hot_standby_feedback = off" in proc.stdout


def cancelled_by_replay(db: Database, replica: Cluster, hold: ReplyHold) -> None:
    """With the run held part way through the table, the primary vacuums rows its snapshot
    needs; replay on the standby then ends the run's sessions (after 1 s). The run is let go,
    and its next attempt held again."""
    hold.wait()
    make_the_primary_busy(db)
    # The snapshot holder idles in its transaction: replay terminates it.
    wait_until(lambda: len(dumper_sessions(replica, db.name)) < 2)
    hold.release(hold_next=True)


def test_a_busy_primary_without_feedback_ends_exit_5_naming_the_conflict_and_its_fix(
    db: Database, standby: Cluster
) -> None:
    big(db)
    replay_caught_up(db, standby)
    with replies_held(db, port=standby.port) as hold:
        proc = db.spawn("run", "--jobs", "1", "--run-attempts", "2", *hold.args)
        seen = wait_for_line(proc, '"event":"started"', "public.big")
        cancelled_by_replay(db, standby, hold)
        seen += wait_for_line(proc, '"event":"started"', "public.big")  # the second attempt, fresh snapshot
        cancelled_by_replay(db, standby, hold)
        hold.release()
        code, events, stderr = finish(proc, seen)
    assert code == 5, stderr
    (line,) = stderr.strip().splitlines()  # one line: no traceback, no bare library text
    assert line.startswith("dumper: error: the standby cancelled the dump: conflict with recovery ("), line
    assert "hot_standby_feedback = on" in line and "or dump from the primary" in line
    assert "server restarted" not in line
    retried = [e for e in events if e["event"] == "snapshot lost; starting the run again with a fresh snapshot"]
    assert len(retried) == 1 and "conflict with recovery" in retried[0]["error"]
    assert not list((db.tmp / "out").rglob("manifest.json")) and not (db.tmp / "out" / "LATEST").exists()


def test_the_same_busy_primary_with_feedback_gives_a_complete_verified_dump(db: Database, standby: Cluster) -> None:
    big(db)
    standby.psql("ALTER SYSTEM SET hot_standby_feedback = on; SELECT pg_reload_conf();")
    wait_until(lambda: standby.psql("SHOW hot_standby_feedback").strip() == "on")
    replay_caught_up(db, standby)
    with replies_held(db, port=standby.port) as hold:
        proc = db.spawn("run", "--jobs", "1", *hold.args)
        seen = wait_for_line(proc, '"event":"started"', "public.big")
        hold.wait()
        assert len(dumper_sessions(standby, db.name)) == 2
        # The primary knows the standby's oldest snapshot before it vacuums.
        oldest = standby.psql(
            "SELECT min(backend_xmin::text::bigint) FROM pg_stat_activity WHERE application_name LIKE 'dumper/%'",
            db.name,
        ).strip()
        wait_until(
            lambda: (
                db.cluster.psql(
                    f"SELECT coalesce(bool_and(backend_xmin::text::bigint <= {oldest}), false) FROM pg_stat_replication"
                ).strip()
                == "t"
            )
        )
        make_the_primary_busy(db)
        replay_caught_up(db, standby)
        assert len(dumper_sessions(standby, db.name)) == 2, "replay ended no session of the run"
        hold.release()
        code, events, stderr = finish(proc, seen)
    assert code == 0, stderr
    assert not [e for e in events if e["level"] == "warning" and "sslmode" not in e["event"]], (
        "feedback on: nothing can cancel the run"
    )
    out = db.tmp / "out"
    run = out / (out / "LATEST").read_text().strip()
    assert_every_row_once(run / "public.big.jsonl")
    from dumper import cli

    assert cli.main(["verify", str(run)], {}) == 0
