"""`make bench`: dumper against PostgreSQL's own JSON (to_json + \\copy), same run.

Starts its own PostgreSQL, builds reproducible tables, then runs the methods
alternating (A B C ... A B C ...) and reports medians: wall seconds, rows/s,
output MB/s, client CPU (worker processes included), database server CPU,
peak client RSS (the largest single process) and the peak RSS of the client's
whole process tree (a sampled sum), plus the ratios dumper/baseline: rows/s,
server CPU, and the client's CPU per row against the baseline's server CPU per
row. Rows/s and CPU per row are also given as medians of round-by-round
("paired") ratios, which drift less with the machine's speed. `g` is every
setting at its default; `p1`, `p2`, `p4` are the scaling table (the same four
connections in 1, 2 or 4 processes). Server CPU is the postmaster's reaped-children CPU
(cutime+cstime in /proc/<pid>/stat) across a method's run: exactly the CPU of
the backends that served it, read after they have exited (autovacuum is off).
`q1`/`q2`: the same rows as Parquet, against `b`/`g` (JSON Lines). `k1`-`k3`: the same dump from
1, 2 or 3 processes of one sharded run (--shards), against one.
`t0`/`t1`: 3,000 tiny tables (schema tenants), pg_dump -Fd -j 2 -Z 0 against
a run with --jobs 2: the cost per table. Restores (r*) load the mixed table into an empty copy in another database,
against psql's `\\copy ... FROM` of the same rows as CSV (r0, r1); and into a fresh database with its schema,
`dumper restore --with-schema` (r3; r4 with two converter processes) against `pg_restore -j 2` of a
`pg_dump -Fd` (r2).

    python -m bench.run [--rows 2000000] [--narrow-rows 5000000] [--repeat 3] [--only a,b]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devtools.pgcluster import SUPERUSER, SUPERUSER_PASSWORD, Cluster

ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")

MIXED_SQL = """
SELECT setseed(0.5);
CREATE TABLE {name} (
    id bigint PRIMARY KEY, uid uuid, title text, code varchar(32), qty integer,
    score double precision, price numeric(12,2), active boolean, created_at timestamptz,
    day date, attrs jsonb, tags text[], digest bytea);
INSERT INTO {name}
SELECT g,
  CASE WHEN g % 20 <> 0 THEN md5(g::text)::uuid END,
  CASE WHEN g % 20 <> 1 THEN substr(repeat(md5(g::text) || ' lorem ipsum ', 4), 1, 30 + g % 51) END,
  CASE WHEN g % 20 <> 2 THEN 'C-' || (g % 100000) END,
  CASE WHEN g % 20 <> 3 THEN (g * 7) % 10000 END,
  CASE WHEN g % 20 <> 4 THEN random() * 1000 END,
  CASE WHEN g % 20 <> 5 THEN round((random() * 10000)::numeric, 2) END,
  CASE WHEN g % 20 <> 6 THEN g % 2 = 0 END,
  CASE WHEN g % 20 <> 7 THEN timestamptz '2020-01-01 00:00:00+00' + g * interval '17 seconds' END,
  CASE WHEN g % 20 <> 8 THEN date '2020-01-01' + g % 2000 END,
  CASE WHEN g % 20 <> 9 THEN jsonb_build_object('k', g % 10, 'flag', g % 3 = 0) END,
  CASE WHEN g % 20 <> 10 THEN ARRAY['t' || g % 7, 't' || g % 11] END,
  CASE WHEN g % 20 <> 11 THEN decode(md5(g::text), 'hex') END
FROM generate_series(1, {rows}) g;
VACUUM ANALYZE {name};
"""

# A schema-per-tenant catalog: many tiny tables (10 rows each), for the per-table cost.
TENANTS_SQL = """
CREATE SCHEMA tenants;
DO $$ BEGIN
  FOR i IN 1..{tables} LOOP
    EXECUTE format('CREATE TABLE tenants.%I (id int PRIMARY KEY, name text, at timestamptz)', 't' || i);
    EXECUTE format('INSERT INTO tenants.%I SELECT g, md5(g::text), now() FROM generate_series(1, 10) g', 't' || i);
  END LOOP;
END $$;
VACUUM ANALYZE;
"""

NARROW_SQL = """
CREATE TABLE {name} (id bigint, n int);
INSERT INTO {name} SELECT g, (g * 31) % 1000003 FROM generate_series(1, {rows}) g;
VACUUM ANALYZE {name};
"""


@dataclass
class Sample:
    wall: float
    client_cpu: float
    server_cpu: float
    peak_rss_mb: float
    out_bytes: int
    tree_rss_mb: float = 0.0  # sampled sum over the process tree (worker processes included)


def postmaster_children_cpu(cluster: Cluster) -> float:
    pid = int((cluster.data / "postmaster.pid").read_text().split()[0])
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / TICK  # cutime, cstime


def wait_for_backends_gone(cluster: Cluster, dbname: str) -> None:
    for _ in range(200):
        n = cluster.psql(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
            dbname,
        ).strip()
        if n == "0":
            return
        time.sleep(0.05)


def measure(cluster: Cluster, dbname: str, cmd: list[str], env: dict[str, str], out: Path) -> Sample:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    wait_for_backends_gone(cluster, dbname)
    cpu0 = postmaster_children_cpu(cluster)
    report = out.parent / (out.name + ".rss")
    start = time.perf_counter()
    # devtools.peak_rss forks the client itself, so this process's memory is not counted.
    proc = subprocess.run(
        [sys.executable, "-m", "devtools.peak_rss", str(report), *cmd],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        check=False,
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed: {proc.stderr.decode()}")
    fields = dict(item.split("=") for item in report.read_text().split())
    wait_for_backends_gone(cluster, dbname)
    server = postmaster_children_cpu(cluster) - cpu0
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file() and p.name.endswith(("l", "n", "z")))
    return Sample(
        wall, float(fields["cpu_s"]), server, int(fields["peak_rss_kb"]) / 1024, size, int(fields["tree_rss_kb"]) / 1024
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--narrow-rows", type=int, default=5_000_000)
    ap.add_argument("--tenant-tables", type=int, default=3000, help="tiny tables of the t* rows (schema tenants)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", default="", help="comma-separated method names to run")
    ap.add_argument("--result", default=str(ROOT / "bench" / "results" / "latest.json"))
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="dumper-bench-"))
    cluster = Cluster()
    cluster.start()
    try:
        cluster.psql("ALTER SYSTEM SET autovacuum = off; SELECT pg_reload_conf();")
        cluster.psql("CREATE DATABASE bench;")
        print(f"building tables: mixed {args.rows:,} rows, narrow {args.narrow_rows:,} rows ...", flush=True)
        cluster.psql(MIXED_SQL.format(name="mixed", rows=args.rows), "bench")
        cluster.psql(MIXED_SQL.format(name="mixed2", rows=args.rows // 2), "bench")
        cluster.psql(
            "CREATE TABLE mixed_b AS SELECT * FROM mixed WHERE id > "
            + str(args.rows // 2)
            + "; DELETE FROM mixed2; INSERT INTO mixed2 SELECT * FROM mixed WHERE id <= "
            + str(args.rows // 2)
            + "; VACUUM ANALYZE mixed2, mixed_b;",
            "bench",
        )
        cluster.psql(NARROW_SQL.format(name="narrow", rows=args.narrow_rows), "bench")
        cluster.psql(NARROW_SQL.format(name="narrow_small", rows=args.narrow_rows // 10), "bench")
        cluster.psql(TENANTS_SQL.format(tables=args.tenant_tables), "bench")

        env = {
            **os.environ,
            **cluster.env("bench", SUPERUSER, SUPERUSER_PASSWORD),
            "DUMPER_LOG_FORMAT": "json",
            "PGSSLMODE": "verify-full",
            "PYTHONPATH": str(ROOT),
        }
        dumper = [str(Path(sys.executable).parent / "dumper"), "run"]

        def psql_copy(table: str) -> Callable[[Path], list[str]]:
            return lambda out: [
                "psql",
                "-X",
                "-q",
                "-h",
                "localhost",
                "-p",
                str(cluster.port),
                "-U",
                SUPERUSER,
                "bench",
                "-c",
                f"\\copy (SELECT to_json(t) FROM {table} t) TO '{out}/{table}.jsonl' "
                "WITH (FORMAT csv, QUOTE E'\\x01', DELIMITER E'\\x02')",
            ]

        def dump(*extra: str) -> Callable[[Path], list[str]]:
            return lambda out: [*dumper, "--output", str(out), "--run-id", "r", *extra]

        def shards(n: int, *extra: str) -> Callable[[Path], list[str]]:
            """N processes of one sharded run, started together (a shell waits for all of them)."""
            one = " ".join(shlex.quote(a) for a in [*dumper, "--run-id", "r", "--shards", str(n), *extra])

            def command(out: Path) -> list[str]:
                starts = " ".join(
                    f"JOB_COMPLETION_INDEX={i} {one} --output {shlex.quote(str(out))} & p{i}=$!;" for i in range(n)
                )
                waits = " && ".join(f"wait $p{i}" for i in range(n))
                return ["sh", "-c", f"{starts} {waits}"]

            return command

        moto = start_moto()
        if moto:
            env.update(
                {
                    "AWS_ACCESS_KEY_ID": "bench",
                    "AWS_SECRET_ACCESS_KEY": "bench",
                    "AWS_DEFAULT_REGION": "us-east-1",
                    "AWS_EC2_METADATA_DISABLED": "true",
                }
            )

        def dump_s3(endpoint: str, *extra: str) -> Callable[[Path], list[str]]:
            # A fresh bucket per run: the benchmark's output folder name is unique per method.
            def command(out: Path) -> list[str]:
                bucket = f"bench-{out.name.replace('_', '-')}-{time.monotonic_ns()}"[:63]
                boto3_client(endpoint).create_bucket(Bucket=bucket)
                return [
                    *dumper,
                    "--output",
                    f"s3://{bucket}/dumps",
                    "--run-id",
                    "r",
                    "--s3-endpoint-url",
                    endpoint,
                    *extra,
                ]

            return command

        restores = restore_methods(cluster, env, work, dumper, args.rows)
        source = work / "source"

        half = args.rows // 2
        per_pod = ("--jobs", "2", "--processes", "1")
        one = ("--jobs", "1")  # one connection, one table: the "single job"
        methods: dict[str, tuple[Callable[[Path], list[str]], int]] = {
            "a_baseline_to_json_copy": (psql_copy("mixed"), args.rows),
            "b_dumper_jsonl": (dump("--include", "public.mixed", *one), args.rows),
            "c_dumper_gzip": (dump("--include", "public.mixed", "--compression", "gzip", *one), args.rows),
            "d_dumper_jobs2_two_tables": (
                dump("--include", "public.mixed2", "--include", "public.mixed_b", "--jobs", "2", "--split-mib", "0"),
                half + (args.rows - half),
            ),
            **({"e_dumper_s3_moto": (dump_s3(moto, "--include", "public.mixed", *one), args.rows)} if moto else {}),
            "f_dumper_jobs2_split": (dump("--include", "public.mixed", "--jobs", "2", "--processes", "1"), args.rows),
            # Every setting at its default: --jobs 2, split, worker processes = usable CPUs (at most --jobs).
            "g_dumper_defaults": (dump("--include", "public.mixed"), args.rows),
            # Scaling: the same four connections, read and encoded in 1, 2 or 4 processes.
            **{
                f"p{n}_jobs4_processes{n}": (
                    dump("--include", "public.mixed", "--jobs", "4", "--processes", str(n)),
                    args.rows,
                )
                for n in (1, 2, 4)
            },
            # Parquet against the same rows as JSON Lines: one connection (b), and every setting at its default (g).
            "q1_dumper_parquet": (dump("--include", "public.mixed", "--format", "parquet", *one), args.rows),
            "q2_dumper_parquet_defaults": (dump("--include", "public.mixed", "--format", "parquet"), args.rows),
            # Sharded runs (--shards N, as an Indexed Job's pods): N processes of one core's worth each
            # (--jobs 2 --processes 1), against the same run from one such process (k1).
            **{
                f"k{n}_shards{n}": (
                    shards(n, "--include", "public.mixed", *per_pod),
                    args.rows,
                )
                for n in (1, 2, 3)
            },
            "n1_narrow_small": (dump("--include", "public.narrow_small", *one), args.narrow_rows // 10),
            "n2_narrow": (dump("--include", "public.narrow", *one), args.narrow_rows),
            "n3_narrow_jobs2_split": (
                dump("--include", "public.narrow", "--jobs", "2", "--processes", "1"),
                args.narrow_rows,
            ),
            # Per-table cost: pg_dump's directory format, two jobs, no compression, against a run.
            "t0_baseline_pg_dump_tenants": (
                lambda out: [
                    str(cluster.bin / "pg_dump"),
                    *("-h", "localhost", "-p", str(cluster.port), "-U", SUPERUSER, "-d", "bench"),
                    *("-n", "tenants", "-Fd", "-j", "2", "-Z", "0", "-f", str(out / "d")),
                ],
                args.tenant_tables * 10,
            ),
            "t1_dumper_tenants": (dump("--schema", "tenants", "--jobs", "2"), args.tenant_tables * 10),
            **restores,
            # A drill of the same dump: scratch database, restore with schema, dump again, compare, drop.
            "x1_dumper_drill": (lambda out: [*dumper[:-1], "drill", str(source / "src")], args.rows),
        }
        if args.only:
            wanted = set(args.only.split(","))
            methods = {k: v for k, v in methods.items() if k in wanted or k[0] in wanted}
        samples: dict[str, list[Sample]] = {k: [] for k in methods}
        for round_no in range(args.repeat):
            for name, (cmd, _) in methods.items():
                out = work / name
                s = measure(cluster, "bench", cmd(out), env, out)
                samples[name].append(s)
                print(
                    f"round {round_no + 1} {name}: {s.wall:.2f}s server {s.server_cpu:.2f}s "
                    f"client {s.client_cpu:.2f}s rss {s.peak_rss_mb:.0f}MB tree {s.tree_rss_mb:.0f}MB",
                    flush=True,
                )

        report = summarize(methods, samples)
        print_table(report)
        per_million = {k: round(v["wall_s"] / v["rows"] * 1e6, 2) for k, v in report.items()}
        if "x1_dumper_drill" in report and "b_dumper_jsonl" in report:
            print(
                f"\ndrill: {per_million['x1_dumper_drill']} s per million rows; the dump alone (b): "
                f"{per_million['b_dumper_jsonl']} s per million rows"
            )
        machine = {
            "cores": os.cpu_count(),
            "cpu": cpu_model(),
            "python": platform.python_version(),
            "postgres": cluster.psql("SHOW server_version", "bench").strip(),
        }
        result = {
            "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": machine,
            "rows": args.rows,
            "narrow_rows": args.narrow_rows,
            "repeat": args.repeat,
            "methods": report,
        }
        Path(args.result).parent.mkdir(parents=True, exist_ok=True)
        Path(args.result).write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nmachine: {machine}\nresult written to {args.result}")
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


Method = tuple[Callable[[Path], list[str]], int]


def restore_methods(
    cluster: Cluster, env: dict[str, str], work: Path, dumper: list[str], rows: int
) -> dict[str, Method]:
    """The r* methods: the mixed table loaded into an empty copy (r0 psql's \\copy FROM CSV, r1 dumper
    restore) and into a fresh database with its schema (r2 pg_restore -j 2, r3 restore --with-schema)."""
    # Restore: the same table loaded into an empty copy, against psql's \copy FROM of its CSV.
    cluster.psql("CREATE DATABASE target;")
    cluster.psql(MIXED_SQL.format(name="mixed", rows=0), "target")
    source = work / "source"
    subprocess.run(
        [*dumper, "--output", str(source), "--run-id", "src", "--include", "public.mixed"],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    cluster.psql(f"\\copy mixed TO '{work}/mixed.csv' CSV", "bench")

    def emptied(command: list[str]) -> Callable[[Path], list[str]]:
        def fresh(out: Path) -> list[str]:
            cluster.psql("TRUNCATE mixed; CHECKPOINT;", "target")
            return command

        return fresh

    # Restore into a fresh database, schema and all: pg_restore -j 2 of pg_dump -Fd, against
    # dumper restore --with-schema of the run (both build the primary key after the rows).
    pg_dumped = work / "pg_dumped"
    server = ("-h", "localhost", "-p", str(cluster.port), "-U", SUPERUSER)
    subprocess.run(
        [str(cluster.bin / "pg_dump"), *server, "-d", "bench", "-t", "public.mixed", "-Fd", "-Z", "0", "-f", pg_dumped],
        env=env,
        check=True,
    )

    def into_fresh(name: str, command: list[str]) -> Callable[[Path], list[str]]:
        def fresh(out: Path) -> list[str]:
            cluster.psql(f"DROP DATABASE IF EXISTS {name};")
            cluster.psql(f"CREATE DATABASE {name};")
            return command

        return fresh

    pg_restore_cmd = [str(cluster.bin / "pg_restore"), *server, "-d", "fresh_pg", "-j", "2", str(pg_dumped)]
    restore_fresh_cmd = [*dumper[:-1], "restore", str(source / "src"), "--dbname", "fresh_dumper", "--with-schema"]

    psql_target = ["psql", "-X", "-q", "-h", "localhost", "-p", str(cluster.port), "-U", SUPERUSER, "target"]
    restore_cmd = [*dumper[:-1], "restore", str(source / "src"), "--dbname", "target"]
    return {
        "r0_baseline_copy_from_csv": (
            emptied([*psql_target, "-c", f"\\copy mixed FROM '{work}/mixed.csv' CSV"]),
            rows,
        ),
        "r1_dumper_restore": (emptied(restore_cmd), rows),
        "r2_baseline_pg_restore_j2": (into_fresh("fresh_pg", pg_restore_cmd), rows),
        "r3_dumper_restore_with_schema": (into_fresh("fresh_dumper", restore_fresh_cmd), rows),
        # The same with two converter processes (the default where the server has cores of its own).
        "r4_dumper_restore_processes2": (into_fresh("fresh_dumper", [*restore_fresh_cmd, "--processes", "2"]), rows),
    }


def start_moto() -> str | None:
    """moto's S3 server on 127.0.0.1, if installed (`pip install -e .[dev]`)."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        return None
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)  # the kernel picks a free port
    server.start()
    return f"http://127.0.0.1:{server.get_host_and_port()[1]}"


def boto3_client(endpoint: str) -> Any:
    import boto3

    return boto3.client(  # moto accepts any key
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",  # noqa: S106
    )


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


# A method measured against a baseline of its own (the others: by their first letter, below).
BASELINES = {
    "k2_shards2": "k1_shards1",
    "k3_shards3": "k1_shards1",
    "r3_dumper_restore_with_schema": "r2_baseline_pg_restore_j2",
    "r4_dumper_restore_processes2": "r2_baseline_pg_restore_j2",
    "q1_dumper_parquet": "b_dumper_jsonl",
    "q2_dumper_parquet_defaults": "g_dumper_defaults",
}


def summarize(
    methods: dict[str, tuple[Callable[[Path], list[str]], int]], samples: dict[str, list[Sample]]
) -> dict[str, dict[str, float]]:
    report: dict[str, dict[str, float]] = {}
    for name, runs in samples.items():
        rows = methods[name][1]
        wall = statistics.median(s.wall for s in runs)
        if name.startswith("e_") and "b_dumper_jsonl" in samples:  # S3: same bytes as the local jsonl run
            runs = [
                Sample(r.wall, r.client_cpu, r.server_cpu, r.peak_rss_mb, b.out_bytes)
                for r, b in zip(runs, samples["b_dumper_jsonl"], strict=False)
            ]
        report[name] = {
            "rows": rows,
            "wall_s": round(wall, 3),
            "rows_per_s": round(rows / wall),
            "mb_per_s": round(statistics.median(s.out_bytes for s in runs) / 1e6 / wall, 1),
            "client_cpu_s": round(statistics.median(s.client_cpu for s in runs), 2),
            "server_cpu_s": round(statistics.median(s.server_cpu for s in runs), 2),
            "peak_rss_mb": round(max(s.peak_rss_mb for s in runs), 1),
            "tree_rss_mb": round(max(s.tree_rss_mb for s in runs), 1),
        }
    for name, entry in report.items():
        # Restores (r*) compare with loading the same table's CSV; many tiny tables (t*) with
        # pg_dump -Fd -j 2 of them; the other dumps with to_json's COPY.
        base_name = BASELINES.get(name) or {"r": "r0_baseline_copy_from_csv", "t": "t0_baseline_pg_dump_tenants"}.get(
            name[0], "a_baseline_to_json_copy"
        )
        base = report.get(base_name)
        if base:
            entry["rows_per_s_vs_baseline"] = round(entry["rows_per_s"] / base["rows_per_s"], 2)
            base_cpu = max(base["server_cpu_s"], 0.01)
            entry["server_cpu_vs_baseline"] = round(entry["server_cpu_s"] / base_cpu, 2)
            # The client's CPU per row against what to_json costs the server per row (the measure).
            entry["client_cpu_per_row_vs_baseline_server"] = round(
                entry["client_cpu_s"] / entry["rows"] / (base_cpu / base["rows"]), 2
            )
            paired(entry, samples[name], samples[base_name], base["rows"])
    return report


def paired(entry: dict[str, float], runs: list[Sample], base_runs: list[Sample], base_rows: float) -> None:
    """The same two ratios taken round by round (each method's run beside the
    baseline's run of the same round), then the median: the machine's speed
    drifts between rounds, and a ratio inside one round drifts less."""
    pairs = list(zip(runs, base_runs, strict=False))
    per_row = entry["rows"] / base_rows
    entry["rows_per_s_vs_baseline_paired"] = round(statistics.median(b.wall * per_row / r.wall for r, b in pairs), 2)
    entry["client_cpu_per_row_vs_baseline_server_paired"] = round(
        statistics.median(r.client_cpu / per_row / max(b.server_cpu, 0.01) for r, b in pairs), 2
    )


def print_table(report: dict[str, dict[str, float]]) -> None:
    cols = [
        "wall_s",
        "rows_per_s",
        "mb_per_s",
        "client_cpu_s",
        "server_cpu_s",
        "peak_rss_mb",
        "tree_rss_mb",
        "rows_per_s_vs_baseline",
        "server_cpu_vs_baseline",
        "client_cpu_per_row_vs_baseline_server",
        "rows_per_s_vs_baseline_paired",
        "client_cpu_per_row_vs_baseline_server_paired",
    ]
    print(
        "\n"
        + "method".ljust(28)
        + "".join(
            c.rjust(14)
            for c in [
                "wall s",
                "rows/s",
                "MB/s",
                "client cpu",
                "server cpu",
                "peak RSS MB",
                "tree RSS MB",
                "rows/s ratio",
                "srv cpu ratio",
                "cli cpu/row r",
                "rows/s pair",
                "cpu/row pair",
            ]
        )
    )
    for name, entry in report.items():
        print(name.ljust(28) + "".join(str(entry.get(c, "")).rjust(14) for c in cols))


if __name__ == "__main__":
    sys.exit(main())
