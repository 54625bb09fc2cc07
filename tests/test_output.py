"""Output layout, the manifest, LATEST and `dumper verify`."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import re
from pathlib import Path

import pytest

from dumper import cli

from .conftest import Database, parse_json


def _verify(path: Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main(["verify", str(path)], {}, stdout=out)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def sample(db: Database) -> Database:
    db.sql(
        "CREATE TABLE orders (id bigint PRIMARY KEY, amount numeric(12,2), note text);"
        "INSERT INTO orders SELECT g, g * 1.25, 'n' || g FROM generate_series(1, 5000) g;"
        "CREATE TABLE customers (id int, name text); INSERT INTO customers VALUES (1, 'Ada'), (2, 'Bob');"
    )
    return db


def test_manifest_lists_every_file_with_counts_and_checksums(sample: Database) -> None:
    result = sample.dump("--run-id", "r1", "--compression", "gzip")
    assert result.code == 0, result.stderr
    m = result.manifest()
    assert m["manifest_version"] == 1
    assert list(m) == [
        "manifest_version",
        "tool",
        "run_id",
        "started_at",
        "finished_at",
        "database",
        "snapshot_id",
        "format",
        "compression",
        "schemas",
        "tables",
        "totals",
        "schema_files",
        "sequences",
        "extensions",
        "requires",
        "types",
        "layout",
        "as_text",
    ]
    assert (m["layout"], m["as_text"]) == ("flat", [])
    assert m["schemas"] == ["public"]
    assert m["tool"]["name"] == "dumper" and m["run_id"] == "r1"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", m["started_at"])
    assert m["database"] == {
        "host": "localhost",
        "port": sample.cluster.port,
        "dbname": sample.name,
        "user": "postgres",
        "server_version": m["database"]["server_version"],
    }
    assert m["database"]["server_version"].startswith(f"{sample.cluster.major}.")
    assert re.fullmatch(r"[0-9A-F]+-[0-9A-F]+-\d+", m["snapshot_id"])
    assert (m["format"], m["compression"]) == ("jsonl", "gzip")
    assert [t["table"] for t in m["tables"]] == ["customers", "orders"]
    for t in m["tables"]:
        data = (result.run_dir / t["path"]).read_bytes()
        assert t["bytes"] == len(data)
        assert t["sha256"] == hashlib.sha256(data).hexdigest()
        assert t["rows"] == gzip.decompress(data).count(b"\n")
        assert t["path"].endswith(".jsonl.gz")
    assert m["tables"][1]["columns"] == [
        {"name": "id", "type": "bigint", "written": "json", "not_null": True},
        {"name": "amount", "type": "numeric(12,2)", "written": "json"},
        {"name": "note", "type": "text", "written": "json"},
    ]
    assert m["types"] == {
        "bigint": {"kind": "base", "name": "pg_catalog.int8"},
        "integer": {"kind": "base", "name": "pg_catalog.int4"},
        "numeric(12,2)": {"kind": "base", "name": "pg_catalog.numeric", "precision": 12, "scale": 2},
        "text": {"kind": "base", "name": "pg_catalog.text"},
    }
    assert (m["extensions"], m["requires"]) == ([], [])
    assert m["totals"] == {"tables": 2, "rows": 5002, "bytes": sum(t["bytes"] for t in m["tables"])}
    assert (result.output / "LATEST").read_text() == "r1\n"
    assert result.files() == [
        "LATEST",
        "r1/manifest.json",
        "r1/public.customers.jsonl.gz",
        "r1/public.orders.jsonl.gz",
        "r1/schema.post-data.sql",
        "r1/schema.pre-data.sql",
    ]
    assert [f["path"] for f in m["schema_files"]["files"]] == ["schema.pre-data.sql", "schema.post-data.sql"]
    assert "postgres-superuser-local-only" not in (result.run_dir / "manifest.json").read_text()


def test_json_format_is_one_array_per_file(sample: Database) -> None:
    result = sample.dump("--format", "json")
    data = (result.run_dir / "public.customers.json").read_bytes()
    assert data == b'[\n{"id":1,"name":"Ada"},\n{"id":2,"name":"Bob"}\n]\n'
    assert len(parse_json((result.run_dir / "public.orders.json").read_bytes())) == 5000


def test_verify_accepts_a_good_dump_and_names_each_mismatch(sample: Database) -> None:
    result = sample.dump("--run-id", "r1")
    code, out, _ = _verify(result.run_dir)
    assert code == 0 and "OK" in out and "2 tables, 5,002 rows" in out

    orders = result.run_dir / "public.orders.jsonl"
    data = bytearray(orders.read_bytes())
    data[100] ^= 0x01  # one changed bit, same size
    orders.write_bytes(bytes(data))
    (result.run_dir / "public.customers.jsonl").unlink()
    code, out, err = _verify(result.run_dir)
    assert code == 7
    assert "MISMATCH public.orders (public.orders.jsonl): sha256" in out
    assert "MISMATCH public.customers (public.customers.jsonl): file is missing" in out
    assert "2 mismatch(es)" in err


def test_verify_counts_rows(sample: Database) -> None:
    result = sample.dump("--run-id", "r1", "--format", "json")
    manifest_path = result.run_dir / "manifest.json"
    manifest_path.write_text(manifest_path.read_text().replace('"rows": 2,', '"rows": 3,'))
    code, out, _ = _verify(result.run_dir)
    assert code == 7 and "public.customers (public.customers.json): 2 rows, manifest says 3" in out


def test_verify_without_manifest_fails(tmp_path: Path) -> None:
    code, _, err = _verify(tmp_path)
    assert code == 7 and "manifest.json does not exist: not a complete dump" in err


def test_reusing_a_complete_run_id_is_refused(sample: Database) -> None:
    assert sample.dump("--run-id", "same").code == 0
    before = (sample.tmp / "out" / "same" / "manifest.json").read_bytes()
    again = sample.dump("--run-id", "same")
    assert again.code == 2 and "already exists: a run writes only into a folder it creates" in again.stderr
    assert (sample.tmp / "out" / "same" / "manifest.json").read_bytes() == before


def test_default_run_id_is_utc_start_time(sample: Database) -> None:
    import datetime as dt

    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    result = sample.dump()
    after = dt.datetime.now(dt.UTC)
    manifest = result.manifest()
    run_id = manifest["run_id"]
    assert re.fullmatch(r"\d{8}T\d{6}Z", run_id)
    started = dt.datetime.strptime(run_id, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    assert before <= started <= after, "the run id is the start time, in UTC"
    assert manifest["started_at"].startswith(started.strftime("%Y-%m-%dT%H:%M:%S"))


@pytest.mark.parametrize(
    "args,message",
    [
        (["--format", "xml"], "--format: 'xml' is not one of jsonl, json"),
        (["--compression", "brotli"], "--compression: 'brotli' is not one of none, gzip, zstd, snappy"),
        (["--sslmode", "prefer"], "--sslmode: 'prefer' is not one of verify-full, verify-ca, require, disable"),
        (["--jobs", "0"], "--jobs: '0' must be a whole number >= 1"),
        (["--batch-rows", "many"], "--batch-rows: 'many' must be a number"),
        (["--run-id", "../escape"], "--run-id: '../escape' must be letters, digits"),
        (["--auth", "kerberos"], "--auth: 'kerberos' is not one of iam, password"),
        (["--nope"], "unrecognized arguments: --nope"),
        (["--part-size", "4"], "--part-size: '4' must be MiB between 5 and 5120 (S3's part size limits)"),
        (["--part-size", "5121"], "--part-size: '5121' must be MiB between 5 and 5120"),
        (["--grace-seconds", "-1"], "--grace-seconds: '-1' must be a number of seconds >= 0"),
        (["--s3-kms-key-id", "alias/k"], "--s3-kms-key-id: only used with --s3-sse aws:kms"),
        (
            ["--notify-url", "https://hooks.example.com/x", "--notify-url-file", "/nonexistent"],
            "--notify-url and --notify-url-file: give one of them",
        ),
        (["--output", "nosuch://bucket/x"], "--output: 'nosuch://bucket/x': unknown protocol 'nosuch'"),
    ],
)
def test_bad_options_exit_2_with_one_line_and_write_nothing(sample: Database, args: list[str], message: str) -> None:
    result = sample.dump(*args)
    assert result.code == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr
    assert result.files() == []


def test_bad_environment_value_names_the_variable(sample: Database) -> None:
    result = sample.dump(env={"DUMPER_FORMAT": "csv"})
    assert result.code == 2 and "(from DUMPER_FORMAT)" in result.stderr
    assert result.files() == []


def test_terminal_report_is_a_table(sample: Database) -> None:
    result = sample.dump("--log-format", "text")
    assert result.code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["table", "rows", "bytes", "seconds"]
    assert lines[1].split()[:2] == ["public.customers", "2"]
    assert lines[2].split()[:2] == ["public.orders", "5,000"]
    assert lines[3].startswith("total (2 tables)") and "5,002" in lines[3]
    assert "dump complete:" in result.stdout


def test_pod_report_is_json_lines(sample: Database) -> None:
    result = sample.dump()
    events = [parse_json(line) for line in result.stdout.splitlines()]
    dumped = [e for e in events if e["event"] == "table dumped"]
    assert [(e["table"], e["rows"]) for e in dumped] == [("public.customers", 2), ("public.orders", 5000)]
    summary = events[-1]
    assert summary["event"] == "run finished" and summary["status"] == "success"
    assert summary["rows"] == 5002 and summary["tables"] == 2
    assert all(e["table"] == "public.orders" for e in events if e["event"] == "done" and e["rows"] == 5000)


@pytest.mark.parametrize(
    "manifest,message",
    [
        (b"{not json", "manifest.json is not valid JSON"),
        (b'{"manifest_version": 99, "tables": []}', "unsupported manifest_version 99"),
        (b"[]", "manifest.json is not a JSON object"),
    ],
)
def test_verify_refuses_a_corrupt_manifest(sample: Database, manifest: bytes, message: str) -> None:
    result = sample.dump("--run-id", "r1")
    assert result.code == 0, result.stderr
    (result.output / "r1" / "manifest.json").write_bytes(manifest)
    code, _, err = _verify(result.output / "r1")
    assert code == 7 and message in err


def test_verify_names_a_corrupt_gzip_file(sample: Database) -> None:
    result = sample.dump("--run-id", "r1", "--compression", "gzip")
    assert result.code == 0, result.stderr
    path = result.output / "r1" / result.entry("public", "orders")["path"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside the deflate stream
    path.write_bytes(bytes(data))
    code, out, _ = _verify(result.output / "r1")
    assert code == 7
    assert "MISMATCH public.orders (public.orders.jsonl.gz): not a valid gzip file" in out, out


def _main(db: Database, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main(list(argv), db.base_env(), stdout=out)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize(
    "argv,message",
    [
        (["schedule", "--cron", "0 2 * * *", "--jitter", "-1"], "--jitter: '-1' must be a number of seconds >= 0"),
        (
            ["schedule", "--cron", "0 2 * * *", "--misfire-grace", "-5"],
            "--misfire-grace: '-5' must be a number of seconds >= 0",
        ),
        (["schedule", "--cron", "0 2 * * *", "--grace-seconds", "-1"], "--grace-seconds: '-1' must be a number"),
        (
            ["restore", "{run}", "--with-schema", "--truncate"],
            "--with-schema builds the tables in an empty target: --truncate does not go with it",
        ),
        (["restore", "{run}", "--with-schema", "--create-tables"], "--create-tables does not go with it"),
        (["token", "--auth", "password"], "--auth: `dumper token` signs RDS IAM tokens; it needs --auth iam"),
        (["verify", "{run}", "--stall-timeout", "x"], "--stall-timeout: 'x' must be a number"),
    ],
)
def test_bad_options_of_every_command_exit_2_and_change_nothing(
    sample: Database, target: Database, argv: list[str], message: str
) -> None:
    dumped = sample.dump("--run-id", "r1")
    assert dumped.code == 0, dumped.stderr
    before = sorted(dumped.files())
    code, out, err = _main(target, *[a.replace("{run}", str(dumped.run_dir)) for a in argv])
    assert code == 2, err
    assert err.count("\n") == 1 and message in err, err
    assert out == "" and sorted(dumped.files()) == before
    assert target.fetch("SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace")[0][0] == 0


def test_verify_names_a_truncated_file(sample: Database) -> None:
    result = sample.dump("--run-id", "r1")
    path = result.run_dir / "public.orders.jsonl"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    code, out, _ = _verify(result.run_dir)
    assert code == 7
    assert f"MISMATCH public.orders (public.orders.jsonl): {len(data) // 2} bytes, manifest says {len(data)}" in out


def test_version() -> None:
    import subprocess
    import sys

    from dumper import __version__

    from .conftest import ROOT

    proc = subprocess.run(
        [sys.executable, "-m", "dumper", "--version"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
        timeout=60,
        check=False,
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"dumper {__version__}\n", "")
    assert __version__ == "0.1.0"


def test_a_failed_run_ends_with_a_json_run_failed_event(sample: Database) -> None:
    result = sample.dump("--schema", "nope", "--run-id", "f1")
    assert result.code == 2
    events = [parse_json(line) for line in result.stdout.splitlines()]
    failed = events[-1]
    assert failed["event"] == "run failed" and failed["level"] == "error", events
    assert (failed["status"], failed["exit_code"]) == ("failed", 2)
    assert failed["error"] == "--schema: schema 'nope' does not exist in this database"
    assert result.stderr == f"dumper: error: {failed['error']}\n"


def test_the_manifest_describes_every_column_type_for_a_loader(db: Database) -> None:
    """Per column its nullability and declared dimensions; per type its kind and what a client
    needs: precision and scale, lengths, enum labels, composite fields, domain base, array element."""
    db.sql(
        "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');"
        "CREATE TYPE point2 AS (x numeric(8,3), y numeric(8,3));"
        "CREATE TYPE place AS (label varchar(20), at point2, moods mood[]);"
        "CREATE DOMAIN price AS numeric(10,2) NOT NULL CHECK (VALUE >= 0);"
        "CREATE TYPE numrange2 AS RANGE (subtype = numeric);"
        "CREATE TABLE described (id int NOT NULL, m mood, p place, cost price, costs price[], "
        "grid int[][], stamp timestamptz(3), took interval(2), code char(4), flags bit(3), r numrange2, "
        "n numeric);"
        "INSERT INTO described VALUES (1, 'ok', ROW('home', ROW(1.5, 2), '{sad}'), 3.5, '{1}', '{{1,2}}', "
        "now(), '1 day', 'ab', B'101', '[1,2)', 7);"
    )
    result = db.dump("--run-id", "typed")
    assert result.code == 0, result.stderr
    manifest = result.manifest()
    columns = {c["name"]: c for c in result.entry("public", "described")["columns"]}
    assert columns["id"] == {"name": "id", "type": "integer", "written": "json", "not_null": True}
    assert columns["grid"] == {"name": "grid", "type": "integer[]", "written": "json", "dimensions": 2}
    types = manifest["types"]
    assert types["public.mood"] == {"kind": "enum", "name": "public.mood", "labels": ["sad", "ok", "happy"]}
    assert types["public.place"] == {
        "kind": "composite",
        "name": "public.place",
        "fields": [
            {"name": "label", "type": "character varying(20)"},
            {"name": "at", "type": "public.point2"},
            {"name": "moods", "type": "public.mood[]"},
        ],
    }
    assert types["public.point2"]["fields"] == [
        {"name": "x", "type": "numeric(8,3)"},
        {"name": "y", "type": "numeric(8,3)"},
    ]
    assert types["numeric(8,3)"] == {"kind": "base", "name": "pg_catalog.numeric", "precision": 8, "scale": 3}
    assert types["character varying(20)"] == {"kind": "base", "name": "pg_catalog.varchar", "length": 20}
    assert types["public.mood[]"] == {"kind": "array", "name": "public._mood", "element": "public.mood"}
    assert types["public.price"] == {
        "kind": "domain",
        "name": "public.price",
        "base": "numeric(10,2)",
        "not_null": True,
    }
    assert types["public.price[]"] == {"kind": "array", "name": "public._price", "element": "public.price"}
    assert types["numeric(10,2)"]["scale"] == 2
    assert types["timestamp(3) with time zone"] == {"kind": "base", "name": "pg_catalog.timestamptz", "precision": 3}
    assert types["interval(2)"] == {"kind": "base", "name": "pg_catalog.interval", "precision": 2}
    assert types["character(4)"]["length"] == 4 and types["bit(3)"]["length"] == 3
    assert types["public.numrange2"] == {"kind": "range", "name": "public.numrange2", "subtype": "numeric"}
    assert types["numeric"] == {"kind": "base", "name": "pg_catalog.numeric"}
    # Every type a description names is described too.
    named = [t.get(k) for t in types.values() for k in ("element", "base", "subtype")]
    named += [f["type"] for t in types.values() for f in t.get("fields", [])]
    assert {n for n in named if n} <= set(types)
    assert {c["type"] for c in columns.values()} <= set(types)
