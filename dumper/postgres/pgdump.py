"""Finding the pg_dump for the schema files (at least the server's major, with its
pg_restore beside it), and how it is run: a clean environment, the run's own
connection settings, names as exact patterns."""

from __future__ import annotations

import asyncio
import glob
import os
import re
import shutil
from dataclasses import dataclass

from .. import __version__
from ..core.errors import ConfigError
from ..core.logs import log
from ..core.settings import Settings
from .sql import quote_ident

SEARCHED = ("/usr/lib/postgresql/*/bin/pg_dump", "/usr/pgsql-*/bin/pg_dump", "/usr/local/pgsql/bin/pg_dump")
_VERSION = re.compile(rb"pg_dump \(PostgreSQL\) (\d+)(?:\.(\d+))?")


@dataclass(frozen=True)
class PgDump:
    path: str
    major: int
    version: str  # e.g. "15.18"

    @property
    def pg_restore(self) -> str:
        """The pg_restore of the same installation (it turns pg_dump's archive into SQL)."""
        return os.path.join(os.path.dirname(self.path), "pg_restore")


async def _version(path: str) -> PgDump | None:
    try:
        proc = await asyncio.create_subprocess_exec(
            path,
            "--version",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env=base_env(),
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


def _paired(found: PgDump | None) -> bool:
    return found is not None and os.access(found.pg_restore, os.X_OK)


async def find(explicit: str | None) -> PgDump | None:
    """--pg-dump's program, or the newest pg_dump on PATH and in the usual
    install folders; None when there is none."""
    if explicit:
        found = await _version(explicit)
        advice = "give the path of PostgreSQL's pg_dump, or leave --pg-dump unset to search for one"
        if found is None:
            raise ConfigError(
                f"--pg-dump: {explicit!r} is not a pg_dump that runs (`{explicit} --version` failed); {advice}"
            )
        if not _paired(found):
            raise ConfigError(
                f"--pg-dump: {explicit!r} has no pg_restore beside it (dumper turns pg_dump's archive into "
                f"the schema files with it; PostgreSQL's client package installs both); {advice}"
            )
        return found
    paths = {p for p in [shutil.which("pg_dump"), *sorted(p for g in SEARCHED for p in glob.glob(g))] if p}
    versions = [v for v in await asyncio.gather(*map(_version, sorted(paths))) if v and _paired(v)]
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


def base_env() -> dict[str, str]:
    """A clean environment: no PG* variables, service files or password files of ours."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LC_ALL": "C.UTF-8",
        "PGPASSFILE": os.devnull,
        "PGSERVICEFILE": os.devnull,
        "PGSYSCONFDIR": os.devnull,
    }


def conninfo(settings: Settings) -> str:
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
