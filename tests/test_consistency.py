"""One snapshot for the whole run: while writers move money between four
tables in committed transactions, a --jobs 4 dump sees an invariant total,
whether tables are read whole or in page-range pieces."""

from __future__ import annotations

import subprocess
from decimal import Decimal

import pytest

from .conftest import Database, Result, wait_until

ACCOUNTS = 50_000
TRANSFER = """
\\set src random(0, 3)
\\set dst random(0, 3)
\\set a random(1, 50000)
\\set b random(1, 50000)
\\set amt random(1, 1000)
BEGIN;
UPDATE acct_:src SET balance = balance - :amt WHERE id = :a;
UPDATE acct_:dst SET balance = balance + :amt WHERE id = :b;
INSERT INTO ledger (src, dst, amt) VALUES (:src, :dst, :amt);
COMMIT;
"""


@pytest.mark.parametrize("split", [[], ["--split-mib", "1"]], ids=["tables", "split-pieces"])
def test_jobs_4_dump_sees_one_consistent_snapshot(db: Database, split: list[str]) -> None:
    """The writers commit while the run is held after its snapshot (it waits for its lock on
    `gate`): the dump must show none of what they did after the snapshot."""
    for i in range(4):
        db.sql(
            f"CREATE TABLE acct_{i} (id int PRIMARY KEY, balance numeric NOT NULL, pad text);"
            f"INSERT INTO acct_{i} SELECT g, 1000, repeat('x', 200) "
            f"FROM generate_series(1, {ACCOUNTS}) g;"
        )
    db.sql("CREATE TABLE ledger (id bigserial, src int, dst int, amt int); CREATE TABLE gate (i int);")
    invariant = Decimal(4 * ACCOUNTS * 1000)
    script = db.tmp / "transfer.sql"
    script.write_text(TRANSFER)
    writers = subprocess.Popen(
        [
            str(db.cluster.bin / "pgbench"),
            "-n",
            "-f",
            str(script),
            "-c",
            "3",
            "-T",
            "600",
            "-h",
            str(db.cluster.socket_dir),
            "-p",
            str(db.cluster.port),
            "-U",
            "postgres",
            db.name,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    ledger_rows = "SELECT count(*) FROM ledger"
    try:
        wait_until(lambda: db.fetch(ledger_rows)[0][0] > 0)  # the writers are running before the snapshot
        with db.locked("gate"):
            proc = db.spawn("run", "--jobs", "4", "--batch-rows", "500", "--lock-timeout", "0", *split)
            wait_until(lambda: db.waiting_for_lock("gate"))  # the snapshot is taken: the run holds it
            at_snapshot = int(db.fetch(ledger_rows)[0][0])  # at least what the snapshot sees
            wait_until(lambda: db.fetch(ledger_rows)[0][0] > at_snapshot)  # writers committed after it
        stdout, stderr = proc.communicate(timeout=240)
        after = int(db.fetch(ledger_rows)[0][0])
    finally:
        writers.terminate()
        writers.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    result = Result(proc.returncode, stdout, stderr, db.tmp / "out")
    total = sum(Decimal(row["balance"]) for i in range(4) for row in result.rows("public", f"acct_{i}"))
    assert total == invariant
    # The ledger is consistent with the balances in the same snapshot, and older than what came after it:
    ledger = result.rows("public", "ledger")
    assert 0 < len(ledger) <= at_snapshot < after
    moved = {i: 0 for i in range(4)}
    for entry in ledger:
        moved[entry["src"]] -= entry["amt"]
        moved[entry["dst"]] += entry["amt"]
    for i in range(4):
        balance = sum(Decimal(row["balance"]) for row in result.rows("public", f"acct_{i}"))
        assert balance == ACCOUNTS * 1000 + moved[i], f"acct_{i} and ledger disagree"
