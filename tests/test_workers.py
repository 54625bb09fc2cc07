"""Worker processes (--processes): rows read and encoded in child processes,
files written by the dumper process. The same bytes as one process, and no
worker outlives the run, however it ends."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dumper.dump import cpus

from .conftest import MAJORS, Database, parse_json, wait_until
from .holds import ReplyHold, replies_held
from .test_resilience import assert_every_row_once
from .test_split import TABLES, content, started

# Two tables, one for each worker, each past the hold's bytes (tests/holds.py): neither can finish while held.
BIG = (
    "CREATE TABLE big AS SELECT g AS id, md5(g::text) AS h FROM generate_series(1, 200000) g;"
    "CREATE TABLE big2 AS SELECT * FROM big;"
)


def worker_pids(parent: int) -> list[int]:
    """The dumper.dump.workers processes whose parent is `parent`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and b"dumper.dump.workers" in cmdline:
            found.append(int(entry.name))
    return found


def alive(pids: list[int]) -> list[int]:
    """Those of `pids` that are still dumper.dump.workers processes (none may outlive its run)."""
    return [pid for pid in pids if b"dumper.dump.workers" in _cmdline(pid)]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def events(stdout: str) -> list[dict[str, Any]]:
    return [parse_json(line) for line in stdout.splitlines() if line.startswith("{")]


@contextlib.contextmanager
def stopped_workers(db: Database, *argv: str) -> Iterator[tuple[subprocess.Popen[str], list[int], ReplyHold]]:
    """A run whose worker processes are stopped (SIGSTOP) as soon as they exist, its
    connections held part way through its tables once they get there: the run cannot
    finish until the test lets both go (SIGCONT, hold.release())."""
    with replies_held(db) as hold:
        proc = db.spawn("run", "--jobs", "2", "--processes", "2", "--split-mib", "0", *hold.args, *argv)
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
        yield proc, pids, hold


def no_dumper_sessions(db: Database) -> None:
    query = (
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'dumper/%' AND datname = current_database()"
    )
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
    assert not worker_pids(os.getpid()), "every worker process (a child of this, in-process, run) exited"


TWO = "CREATE TABLE a (i int); INSERT INTO a VALUES (1); CREATE TABLE b (i int); INSERT INTO b VALUES (2);"
# Tables worth two worker processes by default (cpus.PROCESS_BYTES of them on disk for each).
WORTH_TWO = (
    TWO + "CREATE TABLE wide AS SELECT g, pg_catalog.repeat('x', 400) AS pad "
    f"FROM pg_catalog.generate_series(1, {2 * cpus.PROCESS_BYTES // 440}) g;"
)


def spawned_processes(
    db: Database, *argv: str, prefix: tuple[str, ...] = (), env: dict[str, str] | None = None
) -> int | None:
    """How many worker processes a run started (None: it read in its own process)."""
    run_id = f"r{len(db.spawned)}"
    proc = db.spawn("run", "--run-id", run_id, *argv, prefix=prefix, env=env)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert (db.tmp / "out" / run_id / "public.b.jsonl").read_bytes() == b'{"i":2}\n'
    started_workers = [e for e in events(stdout) if e["event"] == "worker processes started"]
    return int(started_workers[0]["processes"]) if started_workers else None


def test_default_is_the_usable_cpus_at_most_jobs_and_the_data(db: Database) -> None:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs to give a run two")
    db.sql(WORTH_TWO)
    assert spawned_processes(db, "--jobs", "2", prefix=("taskset", "-c", "0,1")) == 2
    assert spawned_processes(db, "--jobs", "4", prefix=("taskset", "-c", "0,1")) == 2, "at most the CPUs"
    assert spawned_processes(db, "--jobs", "2", prefix=("taskset", "-c", "0")) is None, "one CPU: no workers"
    assert spawned_processes(db, "--jobs", "1", prefix=("taskset", "-c", "0,1")) is None, "at most --jobs"
    assert spawned_processes(db, "--jobs", "2", prefix=("taskset", "-c", "0,1"), env={"DUMPER_PROCESSES": "1"}) is None
    small = ("--include", "public.a", "--include", "public.b")
    assert spawned_processes(db, "--jobs", "2", *small, prefix=("taskset", "-c", "0,1")) is None, "small tables"


@contextlib.contextmanager
def cpu_quota(cpus: float) -> Iterator[tuple[str, ...]]:
    """A new cgroup with a CPU quota of `cpus` (what a pod's limits.cpu sets); yields the
    command prefix that runs a program inside it. v1's cpu controller or v2's cpu.max."""
    name = f"dumper-test-{uuid.uuid4().hex[:8]}"
    period = 100_000
    v1, v2 = Path("/sys/fs/cgroup/cpu") / name, Path("/sys/fs/cgroup") / name
    group = None
    with contextlib.suppress(OSError):
        if Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").exists():
            v1.mkdir()
            group = v1
            (v1 / "cpu.cfs_period_us").write_text(str(period))
            (v1 / "cpu.cfs_quota_us").write_text(str(int(cpus * period)))
        elif "cpu" in Path("/sys/fs/cgroup/cgroup.controllers").read_text().split():
            v2.mkdir()
            group = v2
            (v2 / "cpu.max").write_text(f"{int(cpus * period)} {period}")
    if group is None:
        pytest.skip("needs a cgroup with a CPU quota it can make (root, a cgroup v1 cpu controller or v2 cpu.max)")
    try:
        yield ("sh", "-c", f'echo $$ > {group / "cgroup.procs"} && exec "$@"', "sh")
    finally:
        wait_until(lambda: not (group / "cgroup.procs").read_text().strip())
        group.rmdir()


@pytest.mark.parametrize("quota,expected", [(1.0, None), (1.5, 2)], ids=["one-cpu", "one-and-a-half"])
def test_a_cgroup_cpu_limit_caps_the_default(db: Database, quota: float, expected: int | None) -> None:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs for the limit to be the smaller")
    db.sql(WORTH_TWO)
    with cpu_quota(quota) as inside:
        assert spawned_processes(db, "--jobs", "2", prefix=inside) == expected


def test_processes_must_be_a_positive_number(db: Database) -> None:
    result = db.dump("--processes", "0")
    assert result.code == 2
    assert result.stderr.count("\n") == 1 and "--processes: '0' must be a whole number >= 1" in result.stderr
    assert result.files() == []


def test_a_worker_killed_with_sigkill_fails_the_run_cleanly(db: Database) -> None:
    db.sql(BIG)
    with stopped_workers(db) as (proc, pids, _):
        os.kill(pids[0], signal.SIGKILL)
        os.kill(pids[1], signal.SIGCONT)
        stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 5, (stderr, [line for line in stdout.splitlines() if '"level":"error"' in line])
    assert f"worker process {pids[0]} was killed by signal SIGKILL (e.g. the out-of-memory killer)" in stderr
    assert not list((db.tmp / "out").rglob("*")), "no file, no manifest, no LATEST"
    assert not worker_pids(proc.pid) and not alive(pids[1:]), "the other worker was killed too"
    no_dumper_sessions(db)


def test_a_stuck_worker_fails_the_run_within_the_stall_bound(db: Database) -> None:
    db.sql(BIG)
    with stopped_workers(db, "--stall-timeout", "3") as (proc, pids, hold):
        hold.release()
        os.kill(pids[1], signal.SIGCONT)  # one keeps working; the other stays stopped
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 5, stderr
    assert f"worker process {pids[0]} sent nothing for 3 s, not even its heartbeat" in stderr
    assert not alive(pids), "the stopped worker was killed and reaped"
    no_dumper_sessions(db)


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_leaves_no_worker_behind(db: Database, sig: signal.Signals, code: int) -> None:
    db.sql(BIG)
    with stopped_workers(db) as (proc, pids, _):
        for pid in pids:  # ignored from exec on, even by a worker stopped while still importing
            ignored = int(
                next(
                    line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("SigIgn:")
                ).split()[1],
                16,
            )
            assert ignored & (1 << (sig - 1)), f"worker {pid} would die of {sig.name}"
        for pid in pids:  # as a terminal's Ctrl-C reaches the whole process group
            os.kill(pid, sig)
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr + stdout  # the log (stdout) holds an unexpected error's traceback
    assert f"stopped by {sig.name}; no manifest was written" in stderr
    assert not alive(pids)
    assert not list((db.tmp / "out").rglob("*"))
    no_dumper_sessions(db)


def test_workers_die_with_a_killed_dumper(db: Database) -> None:
    db.sql(BIG)
    with stopped_workers(db) as (proc, pids, _):
        proc.kill()
        proc.communicate(timeout=30)
        wait_until(lambda: not alive(pids), 15)  # PR_SET_PDEATHSIG
    no_dumper_sessions(db)


def test_workers_get_no_secret_on_their_command_line_or_environment(db: Database) -> None:
    db.sql(BIG)
    with stopped_workers(db) as (proc, pids, hold):
        for pid in pids:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
            assert argv[1:5] == [b"-P", b"-m", b"dumper.dump.workers", str(proc.pid).encode()]
            assert all(arg.isdigit() for arg in argv[5:]), "socket numbers only"
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            assert not [v for v in environ if v.startswith(b"PGPASSWORD=")], "the parent answers password requests"
        hold.release()
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
        _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    for table in ("big", "big2"):
        assert_every_row_once(next((db.tmp / "out").rglob(f"public.{table}.jsonl")))


@pytest.mark.slow
def test_a_silent_worker_fails_the_run_after_60_s_even_with_no_stall_timeout(db: Database) -> None:
    """--stall-timeout 0 waits forever for the database, never for a worker process: one that sends
    nothing, not even its heartbeat, for 60 s fails the run. Client-side: one server major is enough."""
    if db.cluster.major != MAJORS[0]:
        pytest.skip("the dumper's own bound on its workers: the same against every server major")
    db.sql(BIG)
    with stopped_workers(db, "--stall-timeout", "0") as (proc, pids, hold):
        hold.release()
        os.kill(pids[1], signal.SIGCONT)  # one keeps working; the other stays stopped
        _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 5, stderr
    assert f"worker process {pids[0]} sent nothing for 60 s, not even its heartbeat" in stderr
    assert not alive(pids)


def test_a_worker_process_loads_only_what_reading_and_encoding_need() -> None:
    """What `python -P -m dumper.dump.workers` has loaded once its module is imported:
    no AWS SDK, object store, HTTP client, scheduler or terminal library, and none of the
    dumper's storage, restore or operations (import-linter checks the imports it names;
    this checks what is really loaded, package __init__ files and lazy imports included)."""
    probe = "import sys, dumper.dump.workers; print('\\n'.join(sorted(sys.modules)))"
    loaded = subprocess.run(
        [sys.executable, "-P", "-c", probe], capture_output=True, text=True, check=True, cwd="/"
    ).stdout.split()
    never = ("boto3", "botocore", "aioboto3", "aiobotocore", "fsspec", "s3fs", "aiohttp", "rich", "apscheduler")
    assert not [m for m in loaded if m.split(".")[0] in never]
    assert not [m for m in loaded if m.startswith(("dumper.storage", "dumper.restore", "dumper.ops", "dumper.cli"))]
    assert {"dumper.dump.reader", "dumper.format.encode", "asyncpg", "msgspec"} <= set(loaded)
