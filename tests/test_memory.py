"""Bounded memory: peak RSS of `dumper run` does not grow with the row count,
and wide rows are batched by bytes, not only by rows."""

from __future__ import annotations

import subprocess
import sys

import pytest

from devtools.pgcluster import ROOT_DIR

from .conftest import Database


def peak_rss_mb(db: Database, *args: str, env: dict[str, str] | None = None) -> float:
    """Peak RSS of the dumper CLI and its worker processes together (sampled sum
    over the process tree, what a pod's memory limit sees; devtools.peak_rss
    keeps pytest's memory out of it)."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT_DIR), **db.base_env(), **(env or {})}
    report = db.tmp / "peak-rss.txt"
    proc = subprocess.run(
        [sys.executable, "-m", "devtools.peak_rss", str(report), sys.executable, "-m", "dumper", "run", *args],
        env=env,
        cwd=db.tmp,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        check=False,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    return int(report.read_text().split("tree_rss_kb=")[1].split()[0]) / 1024


@pytest.mark.slow
def test_peak_rss_is_flat_from_100k_to_1m_rows(db: Database) -> None:
    db.sql(
        "CREATE TABLE small AS SELECT g AS id, md5(g::text) AS h, g * 1.5 AS n, now() AS at "
        "FROM generate_series(1, 100000) g;"
        "CREATE TABLE large AS SELECT * FROM small, generate_series(1, 10) r;"
    )
    # Both read in pieces by two connections: what later pieces hold is bounded too.
    # Two worker processes for both (by default their number follows the data's size).
    two = ("--split-mib", "1", "--processes", "2")
    small = peak_rss_mb(db, "--include", "public.small", "--run-id", "small", *two)
    large = peak_rss_mb(db, "--include", "public.large", "--run-id", "large", *two)
    whole = peak_rss_mb(db, "--include", "public.large", "--run-id", "whole", "--jobs", "1")
    print(f"peak RSS: small {small:.0f} MB, large {large:.0f} MB, large read whole {whole:.0f} MB")
    assert large < small * 1.25 + 10, f"peak RSS grew with rows: {small:.0f} MB -> {large:.0f} MB"
    assert large < 200, "the issue's bound for the defaults, worker processes included"
    assert whole < small * 1.25 + 10


@pytest.mark.slow
def test_wide_rows_are_batched_by_bytes(db: Database) -> None:
    # 400 rows of ~1 MB: 1000 rows per fetch would hold ~400 MB at once.
    db.sql("CREATE TABLE wide AS SELECT g AS id, repeat(md5(g::text), 32768) AS blob FROM generate_series(1, 400) g;")
    peak = peak_rss_mb(db, "--batch-rows", "1000")
    assert peak < 150, f"wide rows took {peak:.0f} MB"


def test_peak_rss_excludes_the_callers_memory(db: Database) -> None:
    ballast = bytearray(300 * 1024 * 1024)  # make this (pytest) process large
    ballast[::4096] = b"x" * len(ballast[::4096])
    db.sql("CREATE TABLE t (i int); INSERT INTO t VALUES (1);")
    assert peak_rss_mb(db) < 150
    del ballast
