"""Operating it: the in-process schedule, metrics (Pushgateway, textfile) and
the webhook, each against real servers and the real CLI."""

from __future__ import annotations

import itertools
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import Database, parse_json, wait_until
from .holds import closed_port, frozen
from .http_capture import capture


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def tables(db: Database, rows: int = 1000) -> None:
    db.sql(
        f"CREATE TABLE orders AS SELECT g AS id, md5(g::text) AS h FROM generate_series(1, {rows}) g;"
        "CREATE TABLE users (id int); INSERT INTO users VALUES (1), (2), (3);"
    )


def events_until(proc: subprocess.Popen[str], stop_when: Any, timeout: float = 90) -> list[dict[str, Any]]:
    """Read JSON log events until stop_when(events) is true; then SIGTERM and read the rest."""
    events = events_while(proc, stop_when, timeout)
    return events + stop_now(proc)


def stop_now(proc: subprocess.Popen[str]) -> list[dict[str, Any]]:
    """SIGTERM now; the JSON log events it writes until it exits."""
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=90)
    return [parse_json(line) for line in rest.splitlines() if line.strip()]


def events_while(proc: subprocess.Popen[str], until: Any, timeout: float = 90) -> list[dict[str, Any]]:
    """Read JSON log events until until(events) is true; the process goes on."""
    assert proc.stdout is not None
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while not until(events):
        assert time.monotonic() < deadline, events
        events.append(parse_json(proc.stdout.readline()))
    return events


def named(events: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == name]


def test_schedule_fires_every_second_and_never_overlaps(db: Database) -> None:
    tables(db)
    with db.locked("users"):  # the first run waits for the lock while the ticks go on
        proc = db.spawn("schedule", "--cron", "* * * * * *", "--grace-seconds", "60", "--lock-timeout", "0")
        seen = events_while(proc, lambda ev: len(named(ev, "run skipped: the previous run is still running")) >= 2)
        assert not named(seen, "scheduled run ended"), "the first run is still waiting"
    events = seen + events_until(proc, lambda ev: len(named(seen + ev, "scheduled run ended")) >= 2)
    assert proc.returncode == 0
    ended = named(events, "scheduled run ended")
    assert len(ended) >= 2 and all(e["status"] == "success" for e in ended)
    # Runs never overlapped: between two "snapshot taken" lines there is always an "ended".
    order = [e["event"] for e in events if e["event"] in ("snapshot taken", "scheduled run ended")]
    assert all(a != b for a, b in itertools.pairwise(order)), order
    out = db.tmp / "out"
    runs = sorted(p for p in out.iterdir() if p.is_dir())
    complete = [p for p in runs if (p / "manifest.json").exists()]
    assert len(complete) >= 2 and complete == runs, "every run folder is a complete dump"


def test_schedule_stop_cancels_a_long_run_after_the_grace_period(db: Database) -> None:
    tables(db)
    with db.locked("users"):  # the run waits for its lock: it cannot finish within the grace period
        proc = db.spawn("schedule", "--cron", "0 3 * * *", "--run-now", "--grace-seconds", "1", "--lock-timeout", "0")
        seen = events_while(proc, lambda ev: bool(named(ev, "snapshot taken")))
        wait_until(lambda: db.waiting_for_lock("users"))
        events = seen + stop_now(proc)
    assert proc.returncode == 0
    assert named(events, "stopping: the running dump did not finish in time; cancelling it")
    assert not named(events, "run failed"), "a cancelled run is not a failed one"
    out = db.tmp / "out"
    assert not list(out.rglob("manifest.json")) and not list(out.rglob("*.partial"))


def test_schedule_goes_on_after_a_failed_run(db: Database) -> None:
    tables(db)
    db.sql(
        "ALTER TABLE users ENABLE ROW LEVEL SECURITY; CREATE ROLE limited LOGIN PASSWORD 'pw';"
        f"GRANT CONNECT ON DATABASE {db.name} TO limited; GRANT SELECT ON orders, users TO limited;"
    )
    try:
        proc = db.spawn("schedule", "--cron", "* * * * * *", env={"PGUSER": "limited", "PGPASSWORD": "pw"})
        events = events_until(proc, lambda ev: len(named(ev, "scheduled run ended")) >= 2)
    finally:
        db.sql("DROP OWNED BY limited; DROP ROLE limited;")
    assert proc.returncode == 0, "a failed run does not stop the schedule"
    failed = named(events, "run failed")
    assert len(failed) >= 2 and all(e["exit_code"] == 4 for e in failed)
    assert all(e["status"] == "failed" for e in named(events, "scheduled run ended"))


@pytest.mark.parametrize(
    "args,message",
    [
        (["--cron", "61 * * * *"], "--cron: '61 * * * *' is not a valid cron expression"),
        (["--cron", "* * *"], "--cron: '* * *' has 3 fields"),
        ([], "--cron: `dumper schedule` needs a cron expression"),
        (["--cron", "0 2 * * *", "--timezone", "Mars/Olympus"], "--timezone: unknown time zone 'Mars/Olympus'"),
    ],
)
def test_schedule_config_errors_exit_2(db: Database, args: list[str], message: str) -> None:
    proc = db.spawn("schedule", *args)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 2 and message in stderr


def test_metrics_are_pushed_to_the_pushgateway(db: Database) -> None:
    tables(db)
    with capture(200) as gateway:
        ok = db.dump("--pushgateway-url", gateway.url, "--run-id", "p1")
        db.sql(
            "ALTER TABLE users ENABLE ROW LEVEL SECURITY; CREATE ROLE limited LOGIN PASSWORD 'pw';"
            f"GRANT CONNECT ON DATABASE {db.name} TO limited; GRANT SELECT ON orders, users TO limited;"
        )
        try:
            bad = db.dump("--pushgateway-url", gateway.url, "--run-id", "p2", user="limited", password="pw")
        finally:
            db.sql("DROP OWNED BY limited; DROP ROLE limited;")
    assert ok.code == 0 and bad.code == 4
    first, second = gateway.requests
    assert (first.method, first.path) == ("POST", f"/metrics/job/dumper/database/{db.name}")
    got = samples(first.body.decode())
    label = (("database", db.name),)
    assert got[("dumper_last_run_success", label)] == 1
    assert got[("dumper_last_success_timestamp_seconds", label)] == pytest.approx(time.time(), abs=60)
    assert got[("dumper_table_rows", (("database", db.name), ("schema", "public"), ("table", "orders")))] == 1000
    assert got[("dumper_last_run_rows", label)] == 1003
    failed = samples(second.body.decode())
    assert failed[("dumper_last_run_success", label)] == 0
    assert failed[("dumper_last_run_exit_code", label)] == 4
    assert ("dumper_last_success_timestamp_seconds", label) not in failed, "POST keeps the last success"


def test_metrics_textfile_keeps_the_last_success(db: Database, tmp_path: Path) -> None:
    tables(db)
    prom = tmp_path / "dumper.prom"
    assert db.dump("--metrics-file", str(prom), "--run-id", "a").code == 0
    success = samples(prom.read_text())
    label = (("database", db.name),)
    when = success[("dumper_last_success_timestamp_seconds", label)]
    assert db.dump("--metrics-file", str(prom), "--run-id", "a").code == 2  # run id exists: a failed run
    after = samples(prom.read_text())
    assert after[("dumper_last_run_success", label)] == 0
    assert after[("dumper_last_success_timestamp_seconds", label)] == when
    assert not list(tmp_path.glob(".*.tmp"))


def test_webhook_gets_the_documented_summary(db: Database) -> None:
    tables(db)
    with capture(204) as hook:
        ok = db.dump("--notify-url", hook.url + "/hooks/dumper", "--run-id", "w1")
        failed = db.dump("--notify-url", hook.url, "--run-id", "w1")  # exists: fails with exit 2
        quiet = db.dump("--notify-url", hook.url, "--notify-on", "failure", "--run-id", "w2")
    assert ok.code == 0 and failed.code == 2 and quiet.code == 0
    assert len(hook.requests) == 2, "--notify-on failure stays quiet on success"
    first = hook.requests[0]
    assert first.method == "POST" and first.path == "/hooks/dumper"
    assert first.headers["Content-Type"] == "application/json"
    body = parse_json(first.body)
    assert set(body) == {
        "run_id",
        "status",
        "exit_code",
        "error",
        "started_at",
        "finished_at",
        "duration_seconds",
        "database",
        "location",
        "totals",
    }
    assert (body["run_id"], body["status"], body["exit_code"], body["error"]) == ("w1", "success", 0, None)
    manifest = parse_json((db.tmp / "out" / "w1" / "manifest.json").read_bytes())
    assert body["totals"] == {"tables": 2, "rows": 1003, "bytes": manifest["totals"]["bytes"]}
    assert body["totals"]["bytes"] == sum(
        (db.tmp / "out" / "w1" / t["path"]).stat().st_size for t in manifest["tables"]
    )
    assert body["database"] == {"host": "localhost", "port": db.cluster.port, "dbname": db.name}
    assert body["location"].endswith("/out/w1")
    second = parse_json(hook.requests[1].body)
    assert second["status"] == "failed" and second["exit_code"] == 2 and "already exists" in second["error"]


def test_an_unreachable_webhook_does_not_fail_the_run(db: Database) -> None:
    tables(db)
    with closed_port() as port:
        result = db.dump("--notify-url", f"http://127.0.0.1:{port}/x")
    assert result.code == 0
    assert '"event":"could not publish to the webhook"' in result.stdout


def test_schedule_honours_timezone_and_jitter(db: Database) -> None:
    import datetime as dt

    tables(db)
    proc = db.spawn("schedule", "--cron", "0 3 * * *", "--timezone", "Asia/Tokyo", "--jitter", "300")
    events = events_until(proc, lambda ev: bool(named(ev, "schedule started")))
    assert proc.returncode == 0
    next_run = dt.datetime.fromisoformat(named(events, "schedule started")[0]["next_run"])
    assert next_run.utcoffset() == dt.timedelta(hours=9), "03:00 in Tokyo, not in UTC"
    start = next_run.replace(minute=0, second=0, microsecond=0)
    assert start.hour == 3 and dt.timedelta(0) < next_run - start <= dt.timedelta(seconds=300), next_run


def test_webhook_says_interrupted_when_sigterm_stops_a_run(db: Database) -> None:
    tables(db)
    with capture(204) as hook, db.locked("users"):  # the run is held in its lock wait
        proc = db.spawn("run", "--notify-url", hook.url, "--jobs", "1", "--lock-timeout", "0")
        wait_until(lambda: db.waiting_for_lock("users"))
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    (request,) = hook.requests
    body = parse_json(request.body)
    assert (body["status"], body["exit_code"]) == ("interrupted", 143)
    assert body["location"] is None and body["totals"]["tables"] == 0


class _BrokenTerminal:
    """A stdout that fails on write with an error no code path expects: a bug's stand-in."""

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> int:
        raise RuntimeError("the terminal went away in an unexpected way")

    def flush(self) -> None:
        pass


def test_an_unexpected_error_exits_1_with_its_traceback(db: Database) -> None:
    import contextlib
    import io

    from dumper import cli

    tables(db)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main(["run", "--run-id", "u1", "--log-format", "text"], db.base_env(), stdout=_BrokenTerminal())  # type: ignore[arg-type]
    assert code == 1
    text = err.getvalue()
    assert "unexpected error" in text and "Traceback (most recent call last)" in text
    assert "RuntimeError: the terminal went away in an unexpected way" in text


def test_missed_ticks_coalesce_into_one_run(db: Database) -> None:
    """The process is frozen (SIGSTOP) for 10 s, missing about 3 ticks (every 3 s) that are
    all within --misfire-grace: on waking, one catch-up run starts, not one per missed tick.
    The freeze is the point of the test: the ticks are missed on purpose. Without coalescing,
    every missed time would be handed to the scheduler's job at once, and each after the first
    would be skipped (the previous run is still running) right after the catch-up run ends.
    How long a run takes does not matter: the schedule is stopped as soon as the catch-up run
    has started, and a regular tick that came during it is told apart by when it was skipped."""
    tables(db, 10)
    proc = db.spawn("schedule", "--cron", "*/3 * * * * *", "--misfire-grace", "300", "--grace-seconds", "60")
    events = events_while(proc, lambda ev: len(named(ev, "scheduled run ended")) >= 1)
    with frozen(proc.pid):
        time.sleep(10)  # the missed ticks
    events += events_while(proc, lambda ev: len(named(events + ev, "snapshot taken")) >= 2)
    events += stop_now(proc)  # stop now: no tick starts a run after this
    assert proc.returncode == 0
    (stopped,) = named(events, "schedule stopped")
    assert stopped["runs"] == 2, stopped  # the first run and the one catch-up run
    ended = [i for i, e in enumerate(events) if e["event"] == "scheduled run ended"]
    assert len(ended) == 2, "the catch-up run finished before the process exited"
    after = [e for e in events[ended[1] :] if e["event"] == "run skipped: the previous run is still running"]
    assert not after, "the missed ticks were queued up behind the catch-up run"


def test_schedule_keep_prunes_after_each_run(db: Database) -> None:
    tables(db, 10)
    proc = db.spawn("schedule", "--cron", "* * * * * *", "--keep", "1")
    events = events_until(proc, lambda ev: len(named(ev, "scheduled run ended")) >= 3)
    assert proc.returncode == 0
    ended = [e["run_id"] for e in named(events, "scheduled run ended") if e["status"] == "success"]
    removed = [e["run"] for e in named(events, "removed")]
    assert set(ended[:-1]) <= set(removed), "each run removed the one before it"
    complete = [p.name for p in (db.tmp / "out").iterdir() if (p / "manifest.json").exists()]
    assert complete == [ended[-1]], "one complete run is kept: the newest"


def test_scheduled_runs_publish_their_metrics_and_webhook(db: Database) -> None:
    tables(db, 10)
    prom = db.tmp / "dumper.prom"
    with capture(204) as hook:
        proc = db.spawn(
            "schedule", "--cron", "0 3 * * *", "--run-now", "--metrics-file", str(prom), "--notify-url", hook.url
        )
        events = events_until(proc, lambda ev: bool(named(ev, "scheduled run ended")))
    assert proc.returncode == 0
    (ended,) = named(events, "scheduled run ended")
    (request,) = hook.requests
    body = parse_json(request.body)
    assert (body["run_id"], body["status"], body["totals"]["rows"]) == (ended["run_id"], "success", 13)
    got = samples(prom.read_text())
    assert got[("dumper_last_run_success", (("database", db.name),))] == 1
    assert got[("dumper_last_run_rows", (("database", db.name),))] == 13


def test_a_tick_later_than_the_misfire_grace_is_dropped(db: Database) -> None:
    """Frozen across a tick and then for 3 s more, with --misfire-grace 1: on waking, the
    scheduler drops that tick (it says so) instead of running it late. The ticks come every
    10 s; the freeze ends 3 s after the first tick in it, long before the next one."""
    import datetime as dt

    tables(db, 10)
    proc = db.spawn("schedule", "--cron", "*/10 * * * * *", "--misfire-grace", "1")
    events = events_while(proc, lambda ev: bool(named(ev, "schedule started")))
    with frozen(proc.pid):
        frozen_at = time.time()
        tick = (int(frozen_at) // 10 + 1) * 10  # the first tick after the freeze began (a multiple of 10 s)
        time.sleep(tick + 3 - frozen_at)  # past it by more than the grace; the next is 7 s away
    events += events_while(proc, lambda ev: any("was missed by" in e["event"] for e in ev))
    runs_before = len(named(events, "snapshot taken"))
    events += stop_now(proc)
    assert proc.returncode == 0
    (missed,) = [e for e in events if "was missed by" in e["event"]]
    assert missed["level"] == "warning" and missed["logger"].startswith("apscheduler")
    late = dt.datetime.strptime(missed["event"].rsplit("was missed by ", 1)[1].split(".")[0], "%H:%M:%S")
    assert late.second + 60 * late.minute > 1, "dropped because it was later than the grace"
    (stopped,) = named(events, "schedule stopped")
    assert stopped["runs"] == runs_before, "the missed tick did not start a run"
