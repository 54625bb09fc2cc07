"""The option table: every setting's flag, environment variable, default,
parser, accepted values and the commands that take it. --help, the parsers,
Settings' defaults and docs/options.md all come from here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .values import account_id, boolean, level, mib, part_size, port, positive_int, run_id, seconds, within

FORMATS = ("jsonl", "json", "parquet")
EXTENSION_TYPES = ("text", "cast")
LAYOUTS = ("flat", "folders")
AS_TEXT = ("numeric", "json")  # --as-text: postgres/catalog.py says which types each names
COMPRESSIONS = ("none", "gzip", "zstd", "snappy")  # zstd and snappy: Parquet's codecs only
SSLMODES = ("verify-full", "verify-ca", "require", "disable")
AUTHS = ("iam", "password")
LOG_FORMATS = ("auto", "text", "json")
S3_SSE = ("none", "AES256", "aws:kms")
NOTIFY_ON = ("always", "failure")
SCHEMA_FILES = ("auto", "require", "off")
TABLE_LOCKS = ("auto", "upfront", "while-read")

# Which commands take an option (their --help and parsers come from here, nowhere else).
DUMPING = ("run", "check", "token", "schedule")  # a dump's own options, which check and token share
RUNS = ("run", "schedule")
CONNECTING = (*DUMPING, "restore", "drill")  # the server, parallelism, timeouts
# an object store's endpoint, and every wait's bound
READING = (*DUMPING, "verify", "prune", "restore", "drill", "describe")
PUBLISHING = (*RUNS, "drill")  # metrics and webhooks
LOGGING = (*DUMPING, "prune", "restore", "drill")
KEEPERS = (*RUNS, "prune")
SCHEDULE = ("schedule",)
PRUNE = ("prune",)
RESTORE = ("restore",)
DRILL = ("drill",)
DESCRIBE = ("describe",)
COMMANDS = ("run", "schedule", "check", "token", "verify", "prune", "restore", "drill", "describe")
DESCRIBE_TARGETS = ("athena", "duckdb", "json-schema", "spark")  # format/describe's renderers, one per client
S3_STORAGE_CLASSES = (
    "STANDARD",
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER_IR",
    "GLACIER",
    "DEEP_ARCHIVE",
    "REDUCED_REDUNDANCY",
    "EXPRESS_ONEZONE",
)


@dataclass(frozen=True)
class Option:
    """One setting: its flag, its environment variables and how to parse it."""

    name: str  # attribute of Settings; flag is --name with '_' -> '-'
    help: str
    default: Any = None
    parse: Callable[[str], Any] = str
    choices: tuple[str, ...] = ()
    repeatable: bool = False  # flag may repeat; env value is comma-separated
    pg_env: str | None = None  # the fallback variable: libpq's (PGHOST), or Kubernetes' (JOB_COMPLETION_INDEX)
    commands: tuple[str, ...] = ()  # where the flag exists (every option names them)
    switch: bool = False  # a flag without a value (env: true/false)
    spelled: str | None = None  # the flag, when it cannot be the name (`--as`: a Python keyword)

    @property
    def flag(self) -> str:
        return self.spelled or "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "DUMPER_" + self.name.upper()


OPTIONS: tuple[Option, ...] = (
    Option(
        "host",
        "database host name (the real RDS endpoint for IAM auth)",
        "localhost",
        pg_env="PGHOST",
        commands=CONNECTING,
    ),
    Option("port", "database port", 5432, port, pg_env="PGPORT", commands=CONNECTING),
    Option("dbname", "database name (default: the user name)", pg_env="PGDATABASE", commands=CONNECTING),
    Option("user", "database user (default: the OS user)", pg_env="PGUSER", commands=CONNECTING),
    Option(
        "auth",
        "how to authenticate: iam (RDS IAM token) or password (PGPASSWORD, local development only)",
        "iam",
        choices=AUTHS,
        commands=CONNECTING,
    ),
    Option(
        "region",
        "AWS region of the database, for IAM tokens (default: AWS_REGION / AWS_DEFAULT_REGION)",
        commands=CONNECTING,
    ),
    Option("sslmode", "TLS mode", "verify-full", choices=SSLMODES, pg_env="PGSSLMODE", commands=CONNECTING),
    Option(
        "sslrootcert",
        "CA bundle to verify the server certificate (default: the system trust store)",
        pg_env="PGSSLROOTCERT",
        commands=CONNECTING,
    ),
    Option("schema", "schema to dump (repeatable)", ("public",), repeatable=True, commands=DUMPING),
    Option(
        "include",
        "glob on schema.table to dump (repeatable; default: all)",
        (),
        repeatable=True,
        commands=(*DUMPING, "restore"),
    ),
    Option("exclude", "glob on schema.table to skip (repeatable)", (), repeatable=True, commands=(*DUMPING, "restore")),
    Option("output", "output directory or fsspec URL", "./dumps", commands=(*DUMPING, "prune")),
    Option(
        "schema_files",
        "write schema.pre-data.sql and schema.post-data.sql (pg_dump, same snapshot): auto "
        "(when a pg_dump at least the server's major is found, else a warning), require (else exit 2), off",
        "auto",
        choices=SCHEMA_FILES,
        commands=RUNS,
    ),
    Option(
        "pg_dump",
        "the pg_dump program for the schema files (default: the newest on PATH or under /usr/lib/postgresql/*/bin)",
        commands=RUNS,
    ),
    Option(
        "format",
        "jsonl (one object per line), json (one array per file) or parquet (typed columns; needs the extra "
        "dumper[parquet])",
        "jsonl",
        choices=FORMATS,
        commands=DUMPING,
    ),
    Option(
        "extension_types",
        "values of a type an extension gives a cast to json (PostGIS geometry, hstore): text "
        "(the type's own text output as a JSON string: exact, restorable) or cast (through that cast: GeoJSON, "
        "objects; not restorable, and a value the cast refuses fails the run)",
        "text",
        choices=EXTENSION_TYPES,
        commands=DUMPING,
    ),
    Option(
        "as_text",
        "write these types' values as their text, a JSON string, exact in any JSON reader (DuckDB, pandas, "
        "Spark, jq): numeric (and numeric[]: strings, never a rounded double), json (json and jsonb: their "
        'exact text; a JSON null is then the string "null", SQL NULL null); recorded in the manifest, '
        "restored exactly",
        (),
        choices=AS_TEXT,
        repeatable=True,
        commands=DUMPING,
    ),
    Option(
        "layout",
        "where table files go in the run folder: flat (<schema>.<table>.jsonl side by side) or folders "
        "(each in a folder of its own, <schema>.<table>/<schema>.<table>.jsonl: a prefix per table, what "
        "Athena, Glue and Spark read a table from)",
        "flat",
        choices=LAYOUTS,
        commands=DUMPING,
    ),
    Option(
        "compression",
        "file compression: gzip (a .gz file); with --format parquet the codec of its pages: gzip, zstd or snappy",
        "none",
        choices=COMPRESSIONS,
        commands=DUMPING,
    ),
    Option(
        "gzip_level",
        "gzip level, 1 (fastest) to 9 (smallest); 1-3 use ISA-L (fast), 4-9 zlib",
        1,
        level,
        commands=DUMPING,
    ),
    Option(
        "part_size",
        "S3 multipart part size in MiB (peak memory ~3-4 parts; doubles every 1000 parts)",
        16,
        part_size,
        commands=DUMPING,
    ),
    Option(
        "s3_endpoint_url",
        "S3 endpoint for S3-compatible stores (default: AWS, or AWS_ENDPOINT_URL_S3)",
        commands=READING,
    ),
    Option("s3_region", "the bucket's region (default: discovered; independent of --region)", commands=READING),
    Option("s3_sse", "S3 server-side encryption", "none", choices=S3_SSE, commands=DUMPING),
    Option("s3_kms_key_id", "KMS key id or ARN for --s3-sse aws:kms (default: the AWS managed key)", commands=DUMPING),
    Option(
        "s3_expected_bucket_owner",
        "AWS account id that must own the bucket, sent with every S3 request "
        "(a re-created bucket of the same name in another account is refused)",
        parse=account_id,
        commands=READING,
    ),
    Option(
        "s3_storage_class",
        "S3 storage class of the objects (default: STANDARD)",
        choices=S3_STORAGE_CLASSES,
        commands=DUMPING,
    ),
    Option(
        "jobs",
        "connections reading tables (or pieces of a large table) concurrently",
        2,
        positive_int,
        commands=CONNECTING,
    ),
    Option(
        "processes",
        "worker processes that read and encode rows, sharing the --jobs connections (default: "
        "the CPUs this process may use, at most --jobs and one per 32 MiB of tables on disk; "
        "1 = read in this process); for restore, that turn rows into COPY data (default: the CPUs "
        "this process may use, one fewer when the database runs on this machine; 1 = in this process)",
        parse=positive_int,
        commands=(*RUNS, "drill", "restore"),
    ),
    Option(
        "split_mib",
        "with --jobs > 1, read tables larger than this in pieces of this many MiB of pages, "
        "concurrently; the file is the same (0 = never; needs PostgreSQL 14+)",
        16.0,
        mib,
        commands=(*DUMPING, "drill"),
    ),
    Option(
        "table_locks",
        "when tables are locked (ACCESS SHARE): auto (upfront while they fit in the server's lock table, "
        "else while-read), upfront (all before any is read, held to the end, as pg_dump does) or "
        "while-read (each while it is read; a table rewritten since the snapshot starts the run again)",
        "auto",
        choices=TABLE_LOCKS,
        commands=(*DUMPING, "drill"),
    ),
    Option(
        "batch_rows",
        "maximum rows per cursor fetch (batches also stay near 4 MB)",
        1000,
        positive_int,
        commands=DUMPING,
    ),
    Option(
        "lock_timeout",
        "seconds to wait for a table lock before failing (0 = wait forever)",
        60.0,
        seconds,
        commands=CONNECTING,
    ),
    Option(
        "statement_timeout",
        "seconds one statement (one cursor fetch) may take (0 = no limit)",
        0.0,
        seconds,
        commands=CONNECTING,
    ),
    Option(
        "stall_timeout",
        "seconds without data from the database, or without the output accepting bytes, "
        "before the run fails (0 = wait forever)",
        600.0,
        seconds,
        commands=READING,
    ),
    Option(
        "connect_attempts",
        "attempts to connect when the server refuses or restarts (backoff ~0.5-8 s)",
        6,
        positive_int,
        commands=CONNECTING,
    ),
    Option(
        "run_attempts",
        "attempts at the whole run when its snapshot is lost (server restart)",
        3,
        positive_int,
        commands=DUMPING,
    ),
    Option(
        "grace_seconds",
        "on SIGTERM/SIGINT: seconds allowed to cancel and clean up before exiting",
        20.0,
        seconds,
        commands=CONNECTING,
    ),
    Option(
        "run_id",
        "name of this run's folder (default: UTC start time YYYYMMDDTHHMMSSZ; with --shards, every "
        "process's must be the same: give it, e.g. the Kubernetes Job's name)",
        parse=run_id,
        commands=DUMPING,
    ),
    Option(
        "shards",
        "processes (a Kubernetes Indexed Job's pods) that dump one snapshot together, each with "
        "the same --run-id and its own --shard-index: index 0 coordinates (docs/scaling-out.md)",
        1,
        positive_int,
        commands=RUNS[:1],
    ),
    Option(
        "shard_index",
        "this process's index among --shards, 0 to shards-1 (default: JOB_COMPLETION_INDEX, "
        "which a Kubernetes Indexed Job sets)",
        0,
        within(int, 0, math.inf, "a whole number >= 0"),
        pg_env="JOB_COMPLETION_INDEX",
        commands=RUNS[:1],
    ),
    Option(
        "log_format",
        "log format: auto (text on a terminal, JSON otherwise), text or json",
        "auto",
        choices=LOG_FORMATS,
        commands=LOGGING,
    ),
    Option(
        "metrics_file",
        "write Prometheus metrics for node-exporter's textfile collector to this .prom file",
        commands=PUBLISHING,
    ),
    Option("pushgateway_url", "push Prometheus metrics to this Pushgateway after each run", commands=PUBLISHING),
    Option(
        "pushgateway_url_file", "read --pushgateway-url from this file (e.g. a mounted Secret)", commands=PUBLISHING
    ),
    Option(
        "notify_url",
        "POST a JSON summary of each run to this webhook URL (a secret for Slack-style "
        "hooks: prefer --notify-url-file)",
        commands=PUBLISHING,
    ),
    Option(
        "notify_url_file",
        "read --notify-url from this file (e.g. a mounted Secret), so the URL is in no command line or ConfigMap",
        commands=PUBLISHING,
    ),
    Option("notify_on", "when to call --notify-url", "always", choices=NOTIFY_ON, commands=PUBLISHING),
    Option("cron", "schedule: cron expression, 5 fields (min hour dom mon dow) or 6 (sec first)", commands=SCHEDULE),
    Option("timezone", "schedule: time zone of --cron", "UTC", commands=SCHEDULE),
    Option("jitter", "schedule: random delay of up to this many seconds for each run", 0.0, seconds, commands=SCHEDULE),
    Option(
        "misfire_grace",
        "schedule: a run up to this many seconds late still starts (missed runs coalesce)",
        300.0,
        seconds,
        commands=SCHEDULE,
    ),
    Option("run_now", "schedule: start with a run, then follow --cron", False, boolean, commands=SCHEDULE, switch=True),
    Option(
        "keep",
        "keep the N newest complete runs in --output, removing older runs and a killed run's leftovers "
        "(run/schedule: after each successful run; 0 = keep everything)",
        0,
        within(int, 0, math.inf, "a whole number >= 0"),
        commands=KEEPERS,
    ),
    Option(
        "describe_as",
        "describe: the client to describe the dump for (what loads it exactly there)",
        None,
        choices=DESCRIBE_TARGETS,
        commands=DESCRIBE,
        spelled="--as",
    ),
    Option("dry_run", "prune: say what would be removed, remove nothing", False, boolean, commands=PRUNE, switch=True),
    Option(
        "truncate",
        "restore: empty the target tables first (one TRUNCATE; without it, a table that holds rows is refused)",
        False,
        boolean,
        commands=RESTORE,
        switch=True,
    ),
    Option(
        "create_tables",
        "restore: create missing schemas and tables from the manifest's column names and "
        "types (no constraints, indexes or defaults)",
        False,
        boolean,
        commands=RESTORE,
        switch=True,
    ),
    Option(
        "with_schema",
        "restore: build the tables from the dump's schema files first (pre-data, rows, "
        "post-data, sequences); the target must hold none of the dump's schemas' objects",
        False,
        boolean,
        commands=RESTORE,
        switch=True,
    ),
    Option(
        "no_sequences",
        "restore: leave sequences as they are (default: set those of the loaded tables to the dump's positions)",
        False,
        boolean,
        commands=RESTORE,
        switch=True,
    ),
    Option(
        "scratch_dbname",
        "drill: the scratch database to create, restore into and drop (default: dumper_drill_<run id>)",
        commands=DRILL,
    ),
    Option(
        "single_transaction",
        "restore: load every table in one transaction (all or nothing; one connection)",
        False,
        boolean,
        commands=RESTORE,
        switch=True,
    ),
)

FLAGS = {option.name: option.flag for option in OPTIONS}
BY_NAME = {option.name: option for option in OPTIONS}


def default(name: str) -> Any:
    """An option's default: the table's, for Settings' fields."""
    return BY_NAME[name].default
