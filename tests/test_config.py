"""Settings resolution: flags > DUMPER_* > PG* > defaults; secrets stay hidden."""

from __future__ import annotations

import datetime as dt

import pytest

from dumper.core.errors import ConfigError
from dumper.core.options import OPTIONS
from dumper.core.settings import Settings, resolve

BASE = {"USER": "osuser"}


def test_defaults() -> None:
    s = resolve({}, BASE, now=dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC))
    assert (s.host, s.port, s.user, s.dbname, s.auth, s.sslmode) == (
        "localhost",
        5432,
        "osuser",
        "osuser",
        "iam",
        "verify-full",
    )
    assert (s.schema, s.include, s.exclude, s.output) == (("public",), (), (), "./dumps")
    assert (s.format, s.compression, s.jobs, s.batch_rows) == ("jsonl", "none", 2, 1000)
    assert s.run_id == "20260102T030405Z"


def test_flags_beat_dumper_env_beats_pg_env() -> None:
    env = {
        **BASE,
        "PGHOST": "pg-host",
        "DUMPER_HOST": "dumper-host",
        "PGPORT": "6432",
        "PGDATABASE": "db",
        "PGUSER": "pguser",
        "PGSSLMODE": "verify-ca",
        "PGSSLROOTCERT": "/ca",
        "DUMPER_AUTH": "password",
    }
    s = resolve({}, env)
    assert (s.host, s.port, s.dbname, s.user, s.sslmode, s.sslrootcert) == (
        "dumper-host",
        6432,
        "db",
        "pguser",
        "verify-ca",
        "/ca",
    )
    s = resolve({"host": "flag-host", "port": "7000"}, env)
    assert (s.host, s.port) == ("flag-host", 7000)


def test_repeatable_options_from_flags_and_env() -> None:
    s = resolve({"schema": ["a", "b"]}, {**BASE, "DUMPER_SCHEMA": "x,y"})
    assert s.schema == ("a", "b")
    s = resolve({}, {**BASE, "DUMPER_SCHEMA": "x, y", "DUMPER_EXCLUDE": "x.tmp_*"})
    assert (s.schema, s.exclude) == (("x", "y"), ("x.tmp_*",))


def test_region_falls_back_to_aws_region() -> None:
    assert resolve({}, {**BASE, "AWS_DEFAULT_REGION": "eu-west-1"}).region == "eu-west-1"
    assert resolve({}, {**BASE, "AWS_REGION": "eu-central-1", "AWS_DEFAULT_REGION": "x"}).region == "eu-central-1"
    assert resolve({"region": "us-east-2"}, {**BASE, "AWS_REGION": "eu-central-1"}).region == "us-east-2"


def test_password_only_from_pgpassword_and_only_for_password_auth() -> None:
    env = {**BASE, "PGPASSWORD": "s3cret-value"}
    assert resolve({}, env).password is None  # iam: a stray PGPASSWORD is ignored
    s = resolve({"auth": "password"}, env)
    assert s.password == "s3cret-value"
    assert "s3cret-value" not in repr(s) and "s3cret-value" not in str(s.public_dict())
    assert not any(o.name == "password" for o in OPTIONS), "never a flag"


@pytest.mark.parametrize(
    "flags,message",
    [
        ({"port": "0"}, "--port: '0' must be a TCP port, 1-65535 (from --port)"),
        ({"port": "x"}, "--port: 'x' must be a number (from --port)"),
        ({"gzip_level": "10"}, "--gzip-level: '10' must be a gzip level, 1-9"),
        ({"lock_timeout": "-1"}, "--lock-timeout: '-1' must be a number of seconds >= 0"),
        ({"statement_timeout": "nan"}, "--statement-timeout: 'nan' must be a number of seconds >= 0"),
        ({"split_mib": "-1"}, "--split-mib: '-1' must be a size in MiB >= 0 (0 = never)"),
        ({"split_mib": "inf"}, "--split-mib: 'inf' must be a size in MiB >= 0"),
        ({"log_format": "xml"}, "--log-format: 'xml' is not one of auto, text, json"),
        ({"run_id": ".hidden"}, "--run-id: '.hidden' must be letters"),
    ],
)
def test_invalid_values_name_the_option(flags: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        resolve(flags, BASE)
    assert message in str(err.value)


def test_no_user_anywhere_is_an_error() -> None:
    with pytest.raises(ConfigError, match="--user: no database user"):
        resolve({}, {})


def test_settings_fields_match_options() -> None:
    fields = set(Settings.__dataclass_fields__) - {"password", "aws_role_arn"}
    assert fields == {o.name for o in OPTIONS}
