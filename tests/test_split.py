"""One large table read in page ranges by several connections of one snapshot
(--jobs N --split-mib M): the file is byte for byte what a single scan writes."""

from __future__ import annotations

import gzip
from typing import Any

import pytest

from .conftest import Database, parse_json, wait_until
from .holds import replies_held
from .test_resilience import assert_every_row_once, big, finish, latest_run, terminate_reader, wait_for_line

TABLES = """
CREATE TABLE wide (id bigint, name text, price numeric(12,2), seen timestamptz, tags text[], doc jsonb);
INSERT INTO wide SELECT g, 'name ' || md5(g::text) || repeat('é', g % 50), (g * 1.25)::numeric(12,2),
       timestamptz '2024-01-01 00:00:00+00' + g * interval '1 minute',
       ARRAY['a' || g, NULL], jsonb_build_object('g', g, 'nested', jsonb_build_array(g, 'x'))
FROM generate_series(1, 40000) g;
DELETE FROM wide WHERE id BETWEEN 10000 AND 20000;  -- empty pages: pieces with no rows
UPDATE wide SET name = 'updated' WHERE id % 97 = 0;  -- moved rows, HOT chains
CREATE TABLE tiny (i int); INSERT INTO tiny VALUES (1), (2);
CREATE TABLE "Empty Table" (i int);
"""


def started(result: str | list[dict[str, Any]], table: str) -> dict[str, Any]:
    """The "started" event of `table`, from a run's stdout or its events."""
    events = [parse_json(line) for line in result.splitlines()] if isinstance(result, str) else result
    return next(e for e in events if e["event"] == "started" and e.get("table") == table)


def content(path: Any) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if path.name.endswith(".gz") else data


@pytest.mark.parametrize(
    ("fmt", "compression"), [("jsonl", "none"), ("json", "none"), ("jsonl", "gzip"), ("json", "gzip")]
)
def test_split_table_file_is_identical_to_a_single_scan(db: Database, fmt: str, compression: str) -> None:
    db.sql(TABLES)
    common = ["--format", fmt, "--compression", compression]
    single = db.dump(*common, "--jobs", "1", "--run-id", "single")
    split = db.dump(*common, "--jobs", "3", "--split-mib", "0.25", "--run-id", "split")
    assert single.code == 0, single.stderr
    assert split.code == 0, split.stderr
    pages = int(db.fetch("SELECT pg_relation_size('wide') / 8192")[0][0])
    assert started(split.stdout, "public.wide")["pieces"] == -(-pages // 32), "wide was read in 32-page pieces"
    assert "pieces" not in started(single.stdout, "public.wide")
    one, many = single.output / "single", split.output / "split"
    for entry in single.manifest()["tables"]:
        name = entry["path"]
        assert content(many / name) == content(one / name), f"{name} differs when split"
    entries = {e["table"]: e for e in split.manifest()["tables"]}
    assert entries["wide"]["rows"] == 40000 - 10001
    if compression == "none":  # gzip bytes depend on how the stream was cut into batches
        assert [e["sha256"] for e in split.manifest()["tables"]] == [e["sha256"] for e in single.manifest()["tables"]]
    ids = [row["id"] for row in split.rows("public", "wide")]
    assert sorted(ids) == [*range(1, 10000), *range(20001, 40001)]


def test_split_is_off_for_one_job_and_for_partitioned_tables(db: Database) -> None:
    db.sql(
        "CREATE TABLE plain AS SELECT g AS id, md5(g::text) AS h FROM generate_series(1, 20000) g;"
        "CREATE TABLE parted (id int, h text) PARTITION BY RANGE (id);"
        "CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM (0) TO (10000);"
        "CREATE TABLE parted_2 PARTITION OF parted FOR VALUES FROM (10000) TO (20001);"
        "INSERT INTO parted SELECT id, h FROM plain;"
    )
    split = db.dump("--jobs", "2", "--split-mib", "0.1")
    assert split.code == 0, split.stderr
    assert started(split.stdout, "public.plain")["pieces"] > 1
    assert "pieces" not in started(split.stdout, "public.parted")
    assert sorted(r["id"] for r in split.rows("public", "parted")) == list(range(1, 20001))


def test_lost_connection_in_one_piece_rereads_only_the_rest_of_it(db: Database) -> None:
    big(db, 400_000)  # pieces of 8 MiB, each past the hold's bytes
    with replies_held(db) as hold:
        proc = db.spawn("run", "--jobs", "2", "--split-mib", "8", "--batch-rows", "200", *hold.args)
        seen = wait_for_line(proc, '"event":"started"', "public.big")
        wait_until(lambda: hold.holding >= 2)  # both pieces are part way
        terminate_reader(db, hold, where="ctid OPERATOR(pg_catalog.>=)")  # the piece that is not the head
        hold.release()
        code, events, stderr = finish(proc, seen)
    assert code == 0, stderr
    assert started(events, "public.big")["pieces"] > 1
    assert [e["event"] for e in events].count("connection lost; reading the rest again in the same snapshot") == 1
    assert_every_row_once(latest_run(db) / "public.big.jsonl", 400_000)


def test_pieces_are_read_by_page_range_not_by_full_scans(db: Database) -> None:
    """A piece that scanned the whole table would make a split dump quadratic."""
    db.sql(TABLES)

    def seq_scans() -> int:
        return int(db.fetch("SELECT seq_scan FROM pg_stat_user_tables WHERE relname = 'wide'")[0][0])

    before = seq_scans()
    assert db.dump("--jobs", "3", "--split-mib", "0.25", "--run-id", "split").code == 0
    assert db.dump("--jobs", "1", "--run-id", "single").code == 0
    wait_until(lambda: seq_scans() > before)  # statistics reach the view when a backend exits
    assert seq_scans() == before + 1, "only the single-scan run read the table with a sequential scan"
