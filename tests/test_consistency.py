"""One snapshot for the whole run: while writers move money between four
tables in committed transactions, a --jobs 4 dump sees an invariant total,
whether tables are read whole or in page-range pieces."""

from __future__ import annotations

import subprocess
import time
from decimal import Decimal

import pytest

from .conftest import Database

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
    for i in range(4):
        db.sql(f"CREATE TABLE acct_{i} (id int PRIMARY KEY, balance numeric NOT NULL, pad text);"
               f"INSERT INTO acct_{i} SELECT g, 1000, repeat('x', 200) "
               f"FROM generate_series(1, {ACCOUNTS}) g;")
    db.sql("CREATE TABLE ledger (id bigserial, src int, dst int, amt int);")
    invariant = Decimal(4 * ACCOUNTS * 1000)
    script = db.tmp / "transfer.sql"
    script.write_text(TRANSFER)
    writers = subprocess.Popen(
        [str(db.cluster.bin / "pgbench"), "-n", "-f", str(script), "-c", "3", "-T", "60", "-h",
         str(db.cluster.socket_dir), "-p", str(db.cluster.port), "-U", "postgres", db.name],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)  # the writers are running before the snapshot is taken
        before = int(db.fetch("SELECT count(*) FROM ledger")[0][0])
        result = db.dump("--jobs", "4", "--batch-rows", "500", *split)
        after = int(db.fetch("SELECT count(*) FROM ledger")[0][0])
    finally:
        writers.terminate()
        writers.communicate(timeout=30)
    assert result.code == 0, result.stderr
    assert after > before > 0, "writers must commit during the dump, or the test proves nothing"
    total = sum(Decimal(row["balance"]) for i in range(4) for row in result.rows("public", f"acct_{i}"))
    assert total == invariant
    # The ledger is consistent with the balances in the same snapshot:
    ledger = result.rows("public", "ledger")
    assert before <= len(ledger) <= after
    moved = {i: 0 for i in range(4)}
    for entry in ledger:
        moved[entry["src"]] -= entry["amt"]
        moved[entry["dst"]] += entry["amt"]
    for i in range(4):
        balance = sum(Decimal(row["balance"]) for row in result.rows("public", f"acct_{i}"))
        assert balance == ACCOUNTS * 1000 + moved[i], f"acct_{i} and ledger disagree"
