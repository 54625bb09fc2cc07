"""The schema files: pg_dump's pre-data and post-data sections, from the run's snapshot.

pg_dump runs as a child process over the run's own connection settings: the
password (an IAM token) goes in its environment, never on its command line;
TLS mode and CA are the run's. It joins the run's exported snapshot
(--snapshot), so the schema is the one the rows were read in.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import glob
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass

import tenacity

from .. import __version__
from ..core.errors import ConfigError, ConnectionLost, DumpError, PermissionDenied, SnapshotLost
from ..core.logs import log
from ..core.retry import failing_with, retrying
from ..core.settings import Settings
from ..format.layout import schema_file_name
from ..postgres import db
from ..postgres.schemadeps import Extension
from .sql import quote_ident

SEARCHED = ("/usr/lib/postgresql/*/bin/pg_dump", "/usr/pgsql-*/bin/pg_dump", "/usr/local/pgsql/bin/pg_dump")
_VERSION = re.compile(rb"pg_dump \(PostgreSQL\) (\d+)(?:\.(\d+))?")


@dataclass(frozen=True)
class PgDump:
    path: str
    major: int
    version: str  # e.g. "15.18"


async def _version(path: str) -> PgDump | None:
    try:
        proc = await asyncio.create_subprocess_exec(
            path,
            "--version",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env=_base_env(),
        )
        async with asyncio.timeout(30):
            out, _ = await proc.communicate()
    except (OSError, TimeoutError):
        return None
    match = _VERSION.search(out)
    if proc.returncode or not match:
        return None
    major = int(match[1])
    return PgDump(path, major, f"{major}.{int(match[2] or 0)}")


async def find(explicit: str | None) -> PgDump | None:
    """--pg-dump's program, or the newest pg_dump on PATH and in the usual
    install folders; None when there is none."""
    if explicit:
        found = await _version(explicit)
        if found is None:
            raise ConfigError(
                f"--pg-dump: {explicit!r} is not a pg_dump that runs (`{explicit} --version` failed); "
                "give the path of PostgreSQL's pg_dump, or leave --pg-dump unset to search for one"
            )
        return found
    paths = {p for p in [shutil.which("pg_dump"), *sorted(p for g in SEARCHED for p in glob.glob(g))] if p}
    versions = [v for v in await asyncio.gather(*map(_version, sorted(paths))) if v]
    return max(versions, key=lambda v: v.major, default=None)


async def choose(settings: Settings, server_major: int, server_version: str) -> PgDump | None:
    """The pg_dump this run uses, or None (no schema files), per --schema-files:
    auto warns once and goes on; require is a configuration error."""
    if settings.schema_files == "off":
        return None
    found = await find(settings.pg_dump)
    if found and found.major >= server_major:
        return found
    problem = (
        f"pg_dump {found.version} ({found.path}) is older than the server (PostgreSQL {server_version}); "
        "pg_dump must be at least the server's major version"
        if found
        else "no pg_dump was found (on PATH or under /usr/lib/postgresql/*/bin)"
    )
    advice = f"install pg_dump {server_major} or newer (postgresql-client-{server_major}), or give --pg-dump PATH"
    if settings.schema_files == "require":
        raise ConfigError(f"--schema-files require: {problem}; {advice}; nothing was dumped")
    log.warning(
        f"no schema files in this run: {problem}; the rows are dumped and the manifest says the "
        f"schema is absent ({advice}, or --schema-files off to silence this)"
    )
    return None


def _base_env() -> dict[str, str]:
    """A clean environment: no PG* variables, service files or password files of ours."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LC_ALL": "C.UTF-8",
        "PGPASSFILE": os.devnull,
        "PGSERVICEFILE": os.devnull,
        "PGSYSCONFDIR": os.devnull,
    }


def _conninfo(settings: Settings) -> str:
    """libpq connection string: the run's server, TLS and keepalives (no password)."""

    def value(text: str) -> str:
        return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"

    tls = settings.sslmode
    root = settings.sslrootcert or ("system" if tls in ("verify-full", "verify-ca") else None)
    parts = {
        "host": settings.host,
        "port": str(settings.port),
        "dbname": settings.dbname,
        "user": settings.user,
        "sslmode": tls,
        **({"sslrootcert": root} if root else {}),
        "connect_timeout": "30",
        "application_name": f"dumper/{__version__}",
        "keepalives_idle": "30",
        "keepalives_interval": "10",
        "keepalives_count": "3",
    }
    return " ".join(f"{k}={value(v)}" for k, v in parts.items())


def pattern(schema: str, table: str | None = None) -> str:
    """A pg_dump pattern matching exactly this name: quoted, so '.', '*', '?'
    and regular-expression characters are literal (as an identifier is quoted)."""
    return quote_ident(schema) + (f".{quote_ident(table)}" if table is not None else "")


def arguments(
    settings: Settings,
    snapshot_id: str,
    section: str,
    excluded: Sequence[tuple[str, str]],
    extensions: Sequence[str] = (),
) -> list[str]:
    """pg_dump's command line (pg_dump 14 or later for `extensions`: see created_first)."""
    # Tablespaces are the source server's layout: a restore puts tables in the target's default.
    args = [
        "--section",
        section,
        "--snapshot",
        snapshot_id,
        "--no-owner",
        "--no-privileges",
        "--no-tablespaces",
        "--no-password",
        "--dbname",
        _conninfo(settings),
    ]
    if settings.lock_timeout:
        args += ["--lock-wait-timeout", f"{int(settings.lock_timeout * 1000)}ms"]
    for schema in settings.schema:
        args += ["--schema", pattern(schema)]
    for schema, table in excluded:
        args += ["--exclude-table", pattern(schema, table)]
    for name in extensions:  # CREATE EXTENSION for those the dumped objects use (-n alone leaves them out)
        args += ["--extension", pattern(name)]
    return args


def created_first(extensions: Sequence[Extension]) -> bytes:
    """What pg_dump 14 and later writes for --extension, for an older pg_dump (which has no such
    option): CREATE EXTENSION for each, in the order given (required ones first)."""
    return "".join(
        f"CREATE EXTENSION IF NOT EXISTS {quote_ident(e.name)} WITH SCHEMA {quote_ident(e.schema)};\n"
        for e in extensions
    ).encode()


EXTENSION_OPTION = 14  # the first pg_dump with --extension


@dataclass(frozen=True)
class Sections:
    """What the schema files are made from: the pg_dump, the run's snapshot, the
    tables left out and the extensions the dumped objects use."""

    pg_dump: PgDump
    snapshot_id: str
    excluded: Sequence[tuple[str, str]]
    extensions: Sequence[Extension] = ()


async def _section_once(settings: Settings, password: db.PasswordProvider, job: Sections, name: str) -> bytes:
    pg_dump, extensions = job.pg_dump, job.extensions
    env = _base_env()
    secret = await password()
    if secret:
        env["PGPASSWORD"] = secret  # the environment of a child of ours: not on any command line
    proc = await asyncio.create_subprocess_exec(
        pg_dump.path,
        *arguments(
            settings,
            job.snapshot_id,
            name,
            job.excluded,
            [e.name for e in extensions] if pg_dump.major >= EXTENSION_OPTION else [],
        ),
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )  # a SIGINT at the terminal reaches us, and we end it
    # A bound on the whole of pg_dump: its table locks wait up to --lock-timeout, and
    # its catalog queries are short (quiet until the catalog is read: silence alone proves nothing).
    bound = settings.stall_timeout + settings.lock_timeout if settings.stall_timeout else 0.0
    try:
        async with asyncio.timeout(bound or None):
            out, err = await proc.communicate()
    except TimeoutError:
        raise DumpError(
            f"schema file {schema_file_name(name)}: pg_dump did not finish within {bound:g} s (--stall-timeout "
            "plus --lock-timeout): the server, or the network to it, stalled; check the server's health "
            "and load, or raise --stall-timeout (a catalog of very many tables takes longer)"
        ) from None
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    if proc.returncode:
        text = err.decode("utf-8", "replace").replace(secret or "\0", "***")
        said = [line.strip() for line in text.splitlines() if re.search(r"error:|detail:|hint:|FATAL", line)]
        lines = " / ".join(said or [line.strip() for line in text.splitlines()[-3:]])
        raise _error_class(lines)(
            f"schema file {schema_file_name(name)}: pg_dump {pg_dump.version} failed (exit {proc.returncode}): {lines}"
        )
    if name == "pre-data" and pg_dump.major < EXTENSION_OPTION:
        return created_first(extensions) + out
    return out


_SNAPSHOT_GONE = re.compile(r'snapshot "[^"]*" does not exist|invalid snapshot identifier')
_CONNECTION = re.compile(
    r"connection to server .* failed|server closed the connection|terminated abnormally|"
    r"SSL SYSCALL|could not (receive|send) data|the database system is|too many connections|"
    r"terminating connection|no connection to the server"
)


def _error_class(text: str) -> type[DumpError | PermissionDenied]:
    """What pg_dump's message means for the run: a lost snapshot starts the run
    again, a lost connection runs pg_dump again, the rest is said as it is."""
    if _SNAPSHOT_GONE.search(text):
        return SnapshotLost
    if _CONNECTION.search(text):
        return ConnectionLost
    return PermissionDenied if "permission denied" in text else DumpError


async def section(settings: Settings, password: db.PasswordProvider, job: Sections, name: str) -> bytes:
    """One section's SQL, from the snapshot; again after a lost connection (in the same
    snapshot), up to --connect-attempts, with the backoff of a connection's own retries.
    DumpError (or PermissionDenied) naming pg_dump's own message."""
    return await retrying(
        functools.partial(_section_once, settings, password, job, name),
        attempts=settings.connect_attempts,
        heals=failing_with(ConnectionLost),
        say="pg_dump could not connect or lost its connection, retrying",
        wait=tenacity.wait_exponential_jitter(initial=1, max=8.0),
    )
