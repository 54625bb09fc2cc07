"""Settings: one frozen dataclass, resolved from CLI flags, then DUMPER_<NAME>
environment variables, then libpq's PG* variables, then defaults.

Pure: the caller passes the environment as a dict (only the CLI reads os.environ).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import sys
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..core.errors import ConfigError

N = TypeVar("N", int, float)

FORMATS = ("jsonl", "json")
EXTENSION_TYPES = ("text", "cast")
COMPRESSIONS = ("none", "gzip")
SSLMODES = ("verify-full", "verify-ca", "require", "disable")
AUTHS = ("iam", "password")
LOG_FORMATS = ("auto", "text", "json")
S3_SSE = ("none", "AES256", "aws:kms")
NOTIFY_ON = ("always", "failure")
RUNS = ("run", "schedule")
SCHEDULE = ("schedule",)
RESTORE = ("restore",)
DRILL = ("drill",)
SCHEMA_FILES = ("auto", "require", "off")
KEEPERS = ("run", "schedule", "prune")
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
    pg_env: str | None = None  # libpq fallback variable
    commands: tuple[str, ...] = ("run", "check", "token", "schedule")  # where the flag exists
    switch: bool = False  # a flag without a value (env: true/false)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "DUMPER_" + self.name.upper()


def _within(convert: Callable[[str], N], low: float, high: float, meaning: str) -> Callable[[str], N]:
    """A parser for numbers in [low, high]; nan fails every comparison."""

    def parse(text: str) -> N:
        value = convert(text)
        if not low <= value <= high:
            raise ValueError(f"must be {meaning}")
        return value

    return parse


_positive_int = _within(int, 1, math.inf, "a whole number >= 1")
_port = _within(int, 1, 65535, "a TCP port, 1-65535")
_level = _within(int, 1, 9, "a gzip level, 1-9")
_part_size = _within(int, 5, 5120, "MiB between 5 and 5120 (S3's part size limits)")
# float("inf") is above float_info.max: refused like nan
_seconds = _within(float, 0, sys.float_info.max, "a number of seconds >= 0 (0 = no limit)")
_mib = _within(float, 0, sys.float_info.max, "a size in MiB >= 0 (0 = never)")


def _boolean(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


def _account_id(text: str) -> str:
    if not (len(text) == 12 and text.isdigit()):
        raise ValueError("must be a 12-digit AWS account id")
    return text


def _run_id(text: str) -> str:
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
    if not text or set(text) - allowed or text.startswith("."):
        raise ValueError("must be letters, digits, '-', '_' or '.', not starting with '.'")
    return text


OPTIONS: tuple[Option, ...] = (
    Option("host", "database host name (the real RDS endpoint for IAM auth)", "localhost", pg_env="PGHOST"),
    Option("port", "database port", 5432, _port, pg_env="PGPORT"),
    Option("dbname", "database name (default: the user name)", pg_env="PGDATABASE"),
    Option("user", "database user (default: the OS user)", pg_env="PGUSER"),
    Option(
        "auth",
        "how to authenticate: iam (RDS IAM token) or password (PGPASSWORD, local development only)",
        "iam",
        choices=AUTHS,
    ),
    Option("region", "AWS region of the database, for IAM tokens (default: AWS_REGION / AWS_DEFAULT_REGION)"),
    Option("sslmode", "TLS mode", "verify-full", choices=SSLMODES, pg_env="PGSSLMODE"),
    Option(
        "sslrootcert",
        "CA bundle to verify the server certificate (default: the system trust store)",
        pg_env="PGSSLROOTCERT",
    ),
    Option("schema", "schema to dump (repeatable)", ("public",), repeatable=True),
    Option("include", "glob on schema.table to dump (repeatable; default: all)", (), repeatable=True),
    Option("exclude", "glob on schema.table to skip (repeatable)", (), repeatable=True),
    Option("output", "output directory or fsspec URL", "./dumps"),
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
    Option("format", "jsonl (one object per line) or json (one array per file)", "jsonl", choices=FORMATS),
    Option(
        "extension_types",
        "values of a type an extension gives a cast to json (PostGIS geometry, hstore): text "
        "(the type's own text output as a JSON string: exact, restorable) or cast (through that cast: GeoJSON, "
        "objects; not restorable, and a value the cast refuses fails the run)",
        "text",
        choices=EXTENSION_TYPES,
    ),
    Option("compression", "file compression", "none", choices=COMPRESSIONS),
    Option("gzip_level", "gzip level, 1 (fastest) to 9 (smallest); 1-3 use ISA-L (fast), 4-9 zlib", 1, _level),
    Option(
        "part_size", "S3 multipart part size in MiB (peak memory ~3-4 parts; doubles every 1000 parts)", 16, _part_size
    ),
    Option("s3_endpoint_url", "S3 endpoint for S3-compatible stores (default: AWS, or AWS_ENDPOINT_URL_S3)"),
    Option("s3_region", "the bucket's region (default: discovered; independent of --region)"),
    Option("s3_sse", "S3 server-side encryption", "none", choices=S3_SSE),
    Option("s3_kms_key_id", "KMS key id or ARN for --s3-sse aws:kms (default: the AWS managed key)"),
    Option(
        "s3_expected_bucket_owner",
        "AWS account id that must own the bucket, sent with every S3 request "
        "(a re-created bucket of the same name in another account is refused)",
        parse=_account_id,
    ),
    Option("s3_storage_class", "S3 storage class of the objects (default: STANDARD)", choices=S3_STORAGE_CLASSES),
    Option("jobs", "connections reading tables (or pieces of a large table) concurrently", 2, _positive_int),
    Option(
        "processes",
        "worker processes that read and encode rows, sharing the --jobs connections (default: "
        "the CPUs this process may use, at most --jobs; 1 = read in this process)",
        parse=_positive_int,
        commands=RUNS,
    ),
    Option(
        "split_mib",
        "with --jobs > 1, read tables larger than this in pieces of this many MiB of pages, "
        "concurrently; the file is the same (0 = never; needs PostgreSQL 14+)",
        16.0,
        _mib,
    ),
    Option("batch_rows", "maximum rows per cursor fetch (batches also stay near 4 MB)", 1000, _positive_int),
    Option("lock_timeout", "seconds to wait for a table lock before failing (0 = wait forever)", 60.0, _seconds),
    Option("statement_timeout", "seconds one statement (one cursor fetch) may take (0 = no limit)", 0.0, _seconds),
    Option(
        "stall_timeout",
        "seconds without data from the database, or without the output accepting bytes, "
        "before the run fails (0 = wait forever)",
        600.0,
        _seconds,
    ),
    Option(
        "connect_attempts",
        "attempts to connect when the server refuses or restarts (backoff ~0.5-8 s)",
        6,
        _positive_int,
    ),
    Option("run_attempts", "attempts at the whole run when its snapshot is lost (server restart)", 3, _positive_int),
    Option("grace_seconds", "on SIGTERM/SIGINT: seconds allowed to cancel and clean up before exiting", 20.0, _seconds),
    Option("run_id", "name of this run's folder (default: UTC start time YYYYMMDDTHHMMSSZ)", parse=_run_id),
    Option(
        "log_format", "log format: auto (text on a terminal, JSON otherwise), text or json", "auto", choices=LOG_FORMATS
    ),
    Option(
        "metrics_file",
        "write Prometheus metrics for node-exporter's textfile collector to this .prom file",
        commands=RUNS,
    ),
    Option("pushgateway_url", "push Prometheus metrics to this Pushgateway after each run", commands=RUNS),
    Option("pushgateway_url_file", "read --pushgateway-url from this file (e.g. a mounted Secret)", commands=RUNS),
    Option(
        "notify_url",
        "POST a JSON summary of each run to this webhook URL (a secret for Slack-style "
        "hooks: prefer --notify-url-file)",
        commands=RUNS,
    ),
    Option(
        "notify_url_file",
        "read --notify-url from this file (e.g. a mounted Secret), so the URL is in no command line or ConfigMap",
        commands=RUNS,
    ),
    Option("notify_on", "when to call --notify-url", "always", choices=NOTIFY_ON, commands=RUNS),
    Option("cron", "schedule: cron expression, 5 fields (min hour dom mon dow) or 6 (sec first)", commands=SCHEDULE),
    Option("timezone", "schedule: time zone of --cron", "UTC", commands=SCHEDULE),
    Option(
        "jitter", "schedule: random delay of up to this many seconds for each run", 0.0, _seconds, commands=SCHEDULE
    ),
    Option(
        "misfire_grace",
        "schedule: a run up to this many seconds late still starts (missed runs coalesce)",
        300.0,
        _seconds,
        commands=SCHEDULE,
    ),
    Option(
        "run_now", "schedule: start with a run, then follow --cron", False, _boolean, commands=SCHEDULE, switch=True
    ),
    Option(
        "keep",
        "keep the N newest complete runs in --output, removing older runs and a killed run's leftovers "
        "(run/schedule: after each successful run; 0 = keep everything)",
        0,
        _within(int, 0, math.inf, "a whole number >= 0"),
        commands=KEEPERS,
    ),
    Option(
        "dry_run", "prune: say what would be removed, remove nothing", False, _boolean, commands=("prune",), switch=True
    ),
    Option(
        "truncate",
        "restore: empty the target tables first (one TRUNCATE; without it, a table that holds rows is refused)",
        False,
        _boolean,
        commands=RESTORE,
        switch=True,
    ),
    Option(
        "create_tables",
        "restore: create missing schemas and tables from the manifest's column names and "
        "types (no constraints, indexes or defaults)",
        False,
        _boolean,
        commands=RESTORE,
        switch=True,
    ),
    Option(
        "with_schema",
        "restore: build the tables from the dump's schema files first (pre-data, rows, "
        "post-data, sequences); the target must hold none of the dump's schemas' objects",
        False,
        _boolean,
        commands=RESTORE,
        switch=True,
    ),
    Option(
        "no_sequences",
        "restore: leave sequences as they are (default: set those of the loaded tables to the dump's positions)",
        False,
        _boolean,
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
        _boolean,
        commands=RESTORE,
        switch=True,
    ),
)

_FLAGS = {option.name: option.flag for option in OPTIONS}


@dataclass(frozen=True)
class Settings:
    host: str = "localhost"
    port: int = 5432
    dbname: str = "postgres"
    user: str = "postgres"
    auth: str = "iam"
    region: str | None = None
    sslmode: str = "verify-full"
    sslrootcert: str | None = None
    schema: tuple[str, ...] = ("public",)
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    output: str = "./dumps"
    schema_files: str = "auto"
    pg_dump: str | None = None
    format: str = "jsonl"
    extension_types: str = "text"
    compression: str = "none"
    gzip_level: int = 1
    part_size: int = 16
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_sse: str = "none"
    s3_kms_key_id: str | None = None
    s3_storage_class: str | None = None
    s3_expected_bucket_owner: str | None = None
    jobs: int = 2
    processes: int | None = None  # None: workers.processes() decides
    split_mib: float = 16.0
    batch_rows: int = 1000
    lock_timeout: float = 60.0
    statement_timeout: float = 0.0
    stall_timeout: float = 600.0
    connect_attempts: int = 6
    run_attempts: int = 3
    grace_seconds: float = 20.0
    run_id: str = ""
    log_format: str = "auto"
    metrics_file: str | None = None
    # Webhook URLs carry secrets (Slack-style tokens in the path): never in repr or logs.
    pushgateway_url: str | None = field(default=None, repr=False)
    pushgateway_url_file: str | None = None
    notify_url: str | None = field(default=None, repr=False)
    notify_url_file: str | None = None
    notify_on: str = "always"
    cron: str | None = None
    timezone: str = "UTC"
    jitter: float = 0.0
    misfire_grace: float = 300.0
    run_now: bool = False
    keep: int = 0
    dry_run: bool = False
    truncate: bool = False
    create_tables: bool = False
    single_transaction: bool = False
    with_schema: bool = False
    no_sequences: bool = False
    scratch_dbname: str | None = None
    # Read from PGPASSWORD only with --auth password; never printed.
    password: str | None = field(default=None, repr=False)
    # AWS_ROLE_ARN, to name the role in an IRSA error (not a secret, not an option).
    aws_role_arn: str | None = None

    def public_dict(self) -> dict[str, Any]:
        """Settings safe to log: no password, URLs without their secrets."""
        data = dataclasses.asdict(self)
        data.pop("password")
        data["output"] = redact_url(self.output)
        for name in ("pushgateway_url", "notify_url"):
            data[name] = redact_url(data[name], keep_path=False) if data[name] else None
        return data

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.public_dict().items())
        return f"Settings({shown})"


def redact_url(url: str, keep_path: bool = True) -> str:
    """A URL fit for logs and errors: no user info (user:password@), no query
    string or fragment, and with keep_path=False (webhooks, whose path is the
    secret) only scheme://host[:port]/..."""
    if "://" not in url:  # a local path, or a URL missing its scheme (then its first segment only)
        head = url.split("/", 1)[0].split("?", 1)[0].rpartition("@")[2]
        return url if keep_path else head + ("/..." if head != url else "")
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    netloc = f"***@{host}" if "@" in parts.netloc else host
    path = parts.path if keep_path else ("/..." if parts.path.strip("/") else "")
    tail = "?***" if parts.query or parts.fragment else ""
    return f"{parts.scheme}://{netloc}{path}{tail}"


def _http_url(option: str, url: str) -> None:
    """A webhook / Pushgateway URL must be http(s) with a host; the error never echoes it."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"{option}: not an http(s):// URL with a host name ({redact_url(url, keep_path=False)!r} "
            "shown without its path and query); give the full URL, e.g. https://hooks.example.com/..."
        )


def with_url_files(settings: Settings, read: Callable[[str], str]) -> Settings:
    """Settings with --notify-url-file / --pushgateway-url-file read (by `read`)
    into the URLs they name, checked like the URLs themselves."""
    found: dict[str, Any] = {}
    for name in ("notify_url", "pushgateway_url"):
        path = getattr(settings, f"{name}_file")
        if not path:
            continue
        flag = _FLAGS[f"{name}_file"]
        try:
            url = read(path).strip()
        except OSError as exc:
            raise ConfigError(f"{flag}: cannot read {path!r}: {exc.strerror or exc}") from None
        _http_url(flag, url)
        found[name] = url
    return dataclasses.replace(settings, **found) if found else settings


def default_run_id(now: dt.datetime) -> str:
    return now.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")


def _parse(option: Option, raw: str, source: str) -> Any:
    if option.choices and raw not in option.choices:
        raise ConfigError(f"{option.flag}: {raw!r} is not one of {', '.join(option.choices)} (from {source})")
    try:
        return option.parse(raw)
    except ValueError as exc:
        reason = str(exc) if option.parse is not int else "must be a whole number"
        if "invalid literal" in reason or "could not convert" in reason:
            reason = "must be a number"
        raise ConfigError(f"{option.flag}: {raw!r} {reason} (from {source})") from None


def _from_env(option: Option, environ: Mapping[str, str]) -> tuple[str, str] | None:
    for var in (option.env, option.pg_env):
        if var and environ.get(var, "") != "":
            return environ[var], var
    return None


def resolve(
    flags: Mapping[str, Any],
    environ: Mapping[str, str],
    now: dt.datetime | None = None,
    database: bool = True,
) -> Settings:
    """Build Settings; `flags` maps option names to raw strings (lists when repeatable).
    `database=False` (for `verify`) needs no database user."""
    values: dict[str, Any] = {}
    for option in OPTIONS:
        given = flags.get(option.name)
        if option.repeatable:
            raw_items: Sequence[str] | None = given or None
            source = option.flag
            if raw_items is None and (found := _from_env(option, environ)):
                raw_items, source = [p.strip() for p in found[0].split(",") if p.strip()], found[1]
            if raw_items is None:
                values[option.name] = option.default
                continue
            values[option.name] = tuple(_parse(option, item, source) for item in raw_items)
            continue
        if given is not None and not option.switch:
            values[option.name] = _parse(option, given, option.flag)
        elif found := _from_env(option, environ):
            values[option.name] = _parse(option, found[0], found[1])
        elif option.default is not None:
            values[option.name] = option.default
        if option.switch and given is True:
            values[option.name] = True

    user = values.get("user") or environ.get("USER") or environ.get("LOGNAME")
    if not database:
        user = user or "-"  # verify reads files only
    if not user:
        raise ConfigError("--user: no database user given (set --user, DUMPER_USER or PGUSER)")
    values["user"] = user
    values.setdefault("dbname", user)
    if not values["schema"]:
        raise ConfigError("--schema: at least one schema is needed")
    if values["auth"] == "iam" and not values.get("region"):
        region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION")
        if region:
            values["region"] = region
    if values["auth"] == "password":
        values["password"] = environ.get("PGPASSWORD") or None
    values["aws_role_arn"] = environ.get("AWS_ROLE_ARN") or None
    if values.get("s3_kms_key_id") and values["s3_sse"] != "aws:kms":
        raise ConfigError("--s3-kms-key-id: only used with --s3-sse aws:kms")
    if values["auth"] == "iam" and values["sslmode"] != "verify-full":
        raise ConfigError(
            f"--sslmode {values['sslmode']}: --auth iam sends an IAM token (a 15-minute bearer credential) as the "
            "password, so it goes only to a server whose certificate and host name were verified; use "
            "--sslmode verify-full with --sslrootcert (the RDS CA bundle)"
        )
    if values.get("with_schema") and (values.get("truncate") or values.get("create_tables")):
        given = [_FLAGS[name] for name in ("truncate", "create_tables") if values.get(name)]
        raise ConfigError(
            f"--with-schema builds the tables in an empty target: {' and '.join(given)} "
            f"{'does' if len(given) == 1 else 'do'} not go with it (give one or the other)"
        )
    for name in ("notify_url", "pushgateway_url"):
        if values.get(name) and values.get(f"{name}_file"):
            raise ConfigError(f"{_FLAGS[name]} and {_FLAGS[f'{name}_file']}: give one of them")
        if values.get(name):
            _http_url(_FLAGS[name], values[name])
    values.setdefault("run_id", default_run_id(now or dt.datetime.now(dt.UTC)))
    return Settings(**values)
