"""Worker processes (--processes): rows read and encoded in child processes,
files written by the dumper process. The same bytes as one process, and no
worker outlives the run, however it ends."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from dumper import workers

from .conftest import Database, parse_json, wait_until
from .test_split import TABLES, content, started

BIG = "CREATE TABLE big AS SELECT g AS id, md5(g::text) AS h FROM generate_series(1, 2000000) g;"


def worker_pids(parent: int) -> list[int]:
    """The dumper.workers processes whose parent is `parent`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and b"dumper.workers" in cmdline:
            found.append(int(entry.name))
    return found


def all_workers() -> list[int]:
    """Every dumper.workers process on the machine (none may outlive its run)."""
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
            and b"dumper.workers" in _cmdline(p)]


def _cmdline(entry: Path) -> bytes:
    try:
        return (entry / "cmdline").read_bytes()
    except OSError:
        return b""


def events(stdout: str) -> list[dict[str, object]]:
    return [parse_json(line) for line in stdout.splitlines() if line.startswith("{")]


def stopped_workers(db: Database, *argv: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str],
                                                                                            list[int]]:
    """A run whose worker processes are stopped (SIGSTOP) as soon as they exist:
    the run cannot finish, or write a row, until the test lets them go."""
    proc = db.spawn("run", "--jobs", "2", "--processes", "2", *argv, env=env)
    assert proc.stdout is not None
    for line in proc.stdout:
        if '"event":"worker processes started"' in line:
            break
    else:
        raise AssertionError(f"no worker processes: {proc.communicate()[1]}")
    pids = worker_pids(proc.pid)
    assert len(pids) == 2, "two worker processes"
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    return proc, pids


def no_dumper_sessions(db: Database) -> None:
    query = "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'dumper/%'"
    wait_until(lambda: db.fetch(query)[0][0] == 0, 15)


@pytest.mark.parametrize(("fmt", "compression"), [("jsonl", "none"), ("json", "gzip")])
def test_worker_processes_write_what_one_process_writes(db: Database, fmt: str, compression: str) -> None:
    db.sql(TABLES)
    common = ["--format", fmt, "--compression", compression]
    single = db.dump(*common, "--jobs", "1", "--run-id", "single")
    many = db.dump(*common, "--jobs", "4", "--processes", "2", "--split-mib", "0.25", "--run-id", "many")
    assert single.code == 0, single.stderr
    assert many.code == 0, many.stderr
    started_workers = [e for e in events(many.stdout) if e["event"] == "worker processes started"]
    assert started_workers == [{**started_workers[0], "processes": 2, "connections": 4}]
    assert started(many.stdout, "public.wide")["pieces"] > 4
    for entry in single.manifest()["tables"]:
        name = entry["path"]
        assert content(many.output / "many" / name) == content(single.output / "single" / name), name
    if compression == "none":
        assert [e["sha256"] for e in many.manifest()["tables"]] == [e["sha256"] for e in single.manifest()["tables"]]
    assert not all_workers(), "every worker process exited"


def test_default_is_the_usable_cpus_at_most_jobs(db: Database) -> None:
    db.sql("CREATE TABLE a (i int); INSERT INTO a VALUES (1); CREATE TABLE b (i int); INSERT INTO b VALUES (2);")
    cpus = workers.usable_cpus()
    result = db.dump("--jobs", "2", "--run-id", "default")
    assert result.code == 0, result.stderr
    spawned = [e for e in events(result.stdout) if e["event"] == "worker processes started"]
    assert spawned == ([] if min(cpus, 2) < 2 else [{**spawned[0], "processes": 2, "connections": 2}])
    one = db.dump("--jobs", "2", "--run-id", "one", env={"DUMPER_PROCESSES": "1"})
    assert one.code == 0, one.stderr
    assert not [e for e in events(one.stdout) if e["event"] == "worker processes started"]
    assert one.rows("public", "b") == result.rows("public", "b") == [{"i": 2}]


def test_processes_must_be_a_positive_number(db: Database) -> None:
    result = db.dump("--processes", "0")
    assert result.code == 2
    assert "--processes: '0' must be a whole number >= 1" in result.stderr


def test_a_worker_killed_with_sigkill_fails_the_run_cleanly(db: Database) -> None:
    db.sql(BIG)
    proc, pids = stopped_workers(db)
    os.kill(pids[0], signal.SIGKILL)
    os.kill(pids[1], signal.SIGCONT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 5, stderr
    assert f"worker process {pids[0]} was killed by signal SIGKILL (e.g. the out-of-memory killer)" in stderr
    assert not list((db.tmp / "out").rglob("*")), "no file, no manifest, no LATEST"
    assert not worker_pids(proc.pid) and pids[1] not in all_workers(), "the other worker was killed too"
    no_dumper_sessions(db)


def test_a_stuck_worker_fails_the_run_within_the_stall_bound(db: Database) -> None:
    db.sql(BIG)
    proc, pids = stopped_workers(db, "--stall-timeout", "3")
    os.kill(pids[1], signal.SIGCONT)  # one keeps working; the other stays stopped
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 5, stderr
    assert f"worker process {pids[0]} sent nothing for 3 s, not even its heartbeat" in stderr
    assert not any(pid in all_workers() for pid in pids), "the stopped worker was killed and reaped"
    no_dumper_sessions(db)


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_leaves_no_worker_behind(db: Database, sig: signal.Signals, code: int) -> None:
    db.sql(BIG)
    proc, pids = stopped_workers(db)
    for pid in pids:  # ignored from exec on, even by a worker stopped while still importing
        ignored = int(next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                           if line.startswith("SigIgn:")).split()[1], 16)
        assert ignored & (1 << (sig - 1)), f"worker {pid} would die of {sig.name}"
    for pid in pids:  # as a terminal's Ctrl-C reaches the whole process group
        os.kill(pid, sig)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr + stdout  # the log (stdout) holds an unexpected error's traceback
    assert f"stopped by {sig.name}; no manifest was written" in stderr
    assert not any(pid in all_workers() for pid in pids)
    assert not list((db.tmp / "out").rglob("*"))
    no_dumper_sessions(db)


def test_workers_die_with_a_killed_dumper(db: Database) -> None:
    db.sql(BIG)
    proc, pids = stopped_workers(db)
    proc.kill()
    proc.communicate(timeout=30)
    wait_until(lambda: not any(pid in all_workers() for pid in pids), 15)  # PR_SET_PDEATHSIG
    no_dumper_sessions(db)


def test_workers_get_no_secret_on_their_command_line_or_environment(db: Database) -> None:
    db.sql(BIG)
    proc, pids = stopped_workers(db)
    try:
        for pid in pids:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
            assert argv[1:5] == [b"-P", b"-m", b"dumper.workers", str(proc.pid).encode()]
            assert all(arg.isdigit() for arg in argv[5:]), "socket numbers only"
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            assert not [v for v in environ if v.startswith(b"PGPASSWORD=")], "the parent answers password requests"
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
    finally:
        proc.kill()
    assert next((db.tmp / "out").rglob("public.big.jsonl")).read_bytes().count(b"\n") == 2_000_000
