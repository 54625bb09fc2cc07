"""Settings: one frozen dataclass, resolved from CLI flags, then DUMPER_<NAME>
environment variables, then libpq's PG* variables, then the option table's
defaults (options.py).

Pure: the caller passes the environment as a dict (only the CLI reads os.environ).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError
from .options import FLAGS, OPTIONS, Option, default
from .urls import check_http_url, redact_url


@dataclass(frozen=True)
class Settings:
    host: str = default("host")
    port: int = default("port")
    dbname: str = "postgres"
    user: str = "postgres"
    auth: str = default("auth")
    region: str | None = default("region")
    sslmode: str = default("sslmode")
    sslrootcert: str | None = default("sslrootcert")
    schema: tuple[str, ...] = default("schema")
    include: tuple[str, ...] = default("include")
    exclude: tuple[str, ...] = default("exclude")
    output: str = default("output")
    schema_files: str = default("schema_files")
    pg_dump: str | None = default("pg_dump")
    format: str = default("format")
    extension_types: str = default("extension_types")
    as_text: tuple[str, ...] = default("as_text")
    layout: str = default("layout")
    compression: str = default("compression")
    gzip_level: int = default("gzip_level")
    part_size: int = default("part_size")
    s3_endpoint_url: str | None = default("s3_endpoint_url")
    s3_region: str | None = default("s3_region")
    s3_sse: str = default("s3_sse")
    s3_kms_key_id: str | None = default("s3_kms_key_id")
    s3_storage_class: str | None = default("s3_storage_class")
    s3_expected_bucket_owner: str | None = default("s3_expected_bucket_owner")
    jobs: int = default("jobs")
    processes: int | None = default("processes")  # None: cpus.processes() decides
    split_mib: float = default("split_mib")
    table_locks: str = default("table_locks")
    batch_rows: int = default("batch_rows")
    lock_timeout: float = default("lock_timeout")
    statement_timeout: float = default("statement_timeout")
    stall_timeout: float = default("stall_timeout")
    connect_attempts: int = default("connect_attempts")
    run_attempts: int = default("run_attempts")
    grace_seconds: float = default("grace_seconds")
    run_id: str = ""
    shards: int = default("shards")
    shard_index: int = default("shard_index")
    log_format: str = default("log_format")
    metrics_file: str | None = default("metrics_file")
    # Webhook URLs carry secrets (Slack-style tokens in the path): never in repr or logs.
    pushgateway_url: str | None = field(default=None, repr=False)
    pushgateway_url_file: str | None = default("pushgateway_url_file")
    notify_url: str | None = field(default=None, repr=False)
    notify_url_file: str | None = default("notify_url_file")
    notify_on: str = default("notify_on")
    cron: str | None = default("cron")
    timezone: str = default("timezone")
    jitter: float = default("jitter")
    misfire_grace: float = default("misfire_grace")
    run_now: bool = default("run_now")
    keep: int = default("keep")
    describe_as: str | None = default("describe_as")
    dry_run: bool = default("dry_run")
    truncate: bool = default("truncate")
    create_tables: bool = default("create_tables")
    single_transaction: bool = default("single_transaction")
    with_schema: bool = default("with_schema")
    no_sequences: bool = default("no_sequences")
    scratch_dbname: str | None = default("scratch_dbname")
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


def with_url_files(settings: Settings, read: Callable[[str], str]) -> Settings:
    """Settings with --notify-url-file / --pushgateway-url-file read (by `read`)
    into the URLs they name, checked like the URLs themselves."""
    found: dict[str, Any] = {}
    for name in ("notify_url", "pushgateway_url"):
        path = getattr(settings, f"{name}_file")
        if not path:
            continue
        flag = FLAGS[f"{name}_file"]
        try:
            url = read(path).strip()
        except OSError as exc:
            raise ConfigError(f"{flag}: cannot read {path!r}: {exc.strerror or exc}") from None
        check_http_url(flag, url)
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


def _value(option: Option, given: Any, environ: Mapping[str, str]) -> Any:
    """One option's value: its flag, else its variables, else its default (None: not set)."""
    if option.repeatable:
        if given:
            return tuple(_parse(option, item, option.flag) for item in given)
        if found := _from_env(option, environ):
            items = [p.strip() for p in found[0].split(",") if p.strip()]
            return tuple(_parse(option, item, found[1]) for item in items)
        return option.default
    if option.switch and given is True:
        return True
    if given is not None and not option.switch:
        return _parse(option, given, option.flag)
    if found := _from_env(option, environ):
        return _parse(option, found[0], found[1])
    return option.default


def _identity(values: dict[str, Any], environ: Mapping[str, str], database: bool) -> None:
    """The user (the OS user's name by default), the database (the user's name), the region
    (AWS's variables), the password (PGPASSWORD, for --auth password only), AWS_ROLE_ARN."""
    user = values.get("user") or environ.get("USER") or environ.get("LOGNAME") or ("" if database else "-")
    if not user:  # verify and prune read files only: they need no user
        raise ConfigError("--user: no database user given (set --user, DUMPER_USER or PGUSER)")
    values["user"] = user
    values.setdefault("dbname", user)
    if values["auth"] == "iam" and not values.get("region"):
        values["region"] = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or None
    if values["auth"] == "password":
        values["password"] = environ.get("PGPASSWORD") or None
    values["aws_role_arn"] = environ.get("AWS_ROLE_ARN") or None


def _check_combinations(values: dict[str, Any]) -> None:
    """Options that do not go together, or need another: refused before anything starts."""
    if not values["schema"]:
        raise ConfigError("--schema: at least one schema is needed")
    if values.get("s3_kms_key_id") and values["s3_sse"] != "aws:kms":
        raise ConfigError("--s3-kms-key-id: only used with --s3-sse aws:kms")
    if values["auth"] == "iam" and values["sslmode"] != "verify-full":
        raise ConfigError(
            f"--sslmode {values['sslmode']}: --auth iam sends an IAM token (a 15-minute bearer credential) as the "
            "password, so it goes only to a server whose certificate and host name were verified; use "
            "--sslmode verify-full with --sslrootcert (the RDS CA bundle)"
        )
    _check_format(values)
    _check_shards(values)
    if values.get("with_schema") and (values.get("truncate") or values.get("create_tables")):
        given = [FLAGS[name] for name in ("truncate", "create_tables") if values.get(name)]
        raise ConfigError(
            f"--with-schema builds the tables in an empty target: {' and '.join(given)} "
            f"{'does' if len(given) == 1 else 'do'} not go with it (give one or the other)"
        )
    for name in ("notify_url", "pushgateway_url"):
        if values.get(name) and values.get(f"{name}_file"):
            raise ConfigError(f"{FLAGS[name]} and {FLAGS[f'{name}_file']}: give one of them")
        if values.get(name):
            check_http_url(FLAGS[name], values[name])


def _check_shards(values: dict[str, Any]) -> None:
    """--shards: each process knows its index, all of them the run, and what can be assembled."""
    shards, index = values.get("shards", 1), values.get("shard_index", 0)
    if index >= shards:
        raise ConfigError(
            f"--shard-index {index} (or JOB_COMPLETION_INDEX): an index of --shards {shards} is 0 to {shards - 1}"
        )
    if shards > 1 and not values.get("run_id"):
        raise ConfigError(
            f"--shards {shards}: every process must write the same run: give --run-id (DUMPER_RUN_ID), "
            "the same for all of them (in Kubernetes, the Job's name)"
        )
    if shards > 1 and values.get("format") == "parquet":
        raise ConfigError(
            "--shards with --format parquet: a Parquet file cannot be joined from pieces written apart; "
            "use --format jsonl or json"
        )


def _check_format(values: dict[str, Any]) -> None:
    parquet = values.get("format") == "parquet"
    if values.get("compression") in ("zstd", "snappy") and not parquet:
        raise ConfigError(
            f"--compression {values['compression']}: a Parquet codec; it needs --format parquet "
            "(JSON files take --compression gzip)"
        )
    if parquet and values.get("extension_types") == "cast":
        raise ConfigError(
            "--extension-types cast writes JSON: it does not go with --format parquet, which writes such "
            "values as their text (the default, --extension-types text)"
        )


def resolve(
    flags: Mapping[str, Any],
    environ: Mapping[str, str],
    now: dt.datetime | None = None,
    database: bool = True,
) -> Settings:
    """Build Settings; `flags` maps option names to raw strings (lists when repeatable).
    `database=False` (for `verify` and `prune`) needs no database user."""
    values: dict[str, Any] = {}
    for option in OPTIONS:
        value = _value(option, flags.get(option.name), environ)
        if value is not None:
            values[option.name] = value
    _identity(values, environ, database)
    _check_combinations(values)
    values.setdefault("run_id", default_run_id(now or dt.datetime.now(dt.UTC)))
    return Settings(**values)
