"""SIGTERM/SIGINT mid-dump: running tables are cancelled, nothing is left
behind, no manifest, LATEST untouched, and the documented exit code."""

from __future__ import annotations

import signal

import pytest

from .conftest import Database, wait_until
from .holds import replies_held

# About three times the hold's bytes on the wire: the run stops inside it.
BIG = "CREATE TABLE big AS SELECT g AS id, md5(g::text) AS h FROM generate_series(1, 200000) g;"


def dumper_sessions(db: Database) -> int:
    return int(
        db.fetch(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'dumper/%' "
            "AND datname = current_database()"
        )[0][0]
    )


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_mid_table_leaves_nothing(db: Database, sig: signal.Signals, code: int) -> None:
    db.sql(BIG + "CREATE TABLE small (i int); INSERT INTO small VALUES (1);")
    out = db.tmp / "out"
    out.mkdir()
    (out / "LATEST").write_text("previous\n")
    with replies_held(db) as hold:
        proc = db.spawn("run", "--jobs", "2", *hold.args)
        hold.wait()  # big is being read, and stays so until the end of the block
        wait_until(
            lambda: any(p.name.startswith(".public.big.") and p.name.endswith(".partial") for p in out.rglob("*"))
        )
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    assert f"stopped by {sig.name}; no manifest was written" in stderr
    assert sorted(p.name for p in out.rglob("*")) == ["LATEST"]
    assert (out / "LATEST").read_text() == "previous\n"
    # The server side is gone too: no dumper session left behind.
    wait_until(lambda: dumper_sessions(db) == 0, 15)
