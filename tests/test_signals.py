"""SIGTERM/SIGINT mid-dump: running tables are cancelled, nothing is left
behind, no manifest, LATEST untouched, and the documented exit code."""

from __future__ import annotations

import signal
import time

import pytest

from .conftest import Database


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_mid_table_leaves_nothing(db: Database, sig: signal.Signals, code: int) -> None:
    db.sql("CREATE TABLE big AS SELECT g AS id, md5(g::text) AS h FROM generate_series(1, 3000000) g;"
           "CREATE TABLE small (i int); INSERT INTO small VALUES (1);")
    out = db.tmp / "out"
    out.mkdir()
    (out / "LATEST").write_text("previous\n")
    proc = db.spawn("run", "--jobs", "2")
    assert proc.stdout is not None
    for line in proc.stdout:  # wait until the big table is being written
        if '"event":"started"' in line and "public.big" in line:
            break
    deadline = time.monotonic() + 30
    while not any(p.name.endswith(".partial") for p in out.rglob("*")):
        assert time.monotonic() < deadline, "no partial file appeared"
        time.sleep(0.05)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    assert f"stopped by {sig.name}; no manifest was written" in stderr
    assert sorted(p.name for p in out.rglob("*")) == ["LATEST"]
    assert (out / "LATEST").read_text() == "previous\n"
    # The server side is gone too: no dumper session left behind.
    query = "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'dumper/%'"
    deadline = time.monotonic() + 10
    while db.fetch(query)[0][0] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert db.fetch(query)[0][0] == 0
