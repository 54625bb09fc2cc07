"""The schema files from the run's snapshot: pg_dump writes the schema once
(--schema-only, its custom archive format, into a private temporary folder),
and pg_restore turns that archive into each section's SQL (pre-data, then
post-data), streamed: one pass over the catalog, not one per section, and
memory that does not grow with the schema.

pg_dump runs as a child process over the run's own connection settings: the
password (an IAM token) goes in its environment, never on its command line;
TLS mode and CA are the run's. It joins the run's exported snapshot
(--snapshot), so the schema is the one the rows were read in. pg_dump locks
every table it dumps until it ends: for a catalog larger than the server's
lock table allows, the schemas are dumped in groups (schemagroups.py), one
pg_dump each, in dependency order, and each section is their concatenation.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import tenacity

from ..core.errors import ConnectionLost, DumperError, DumpError, PermissionDenied, SnapshotLost, TableChanged
from ..core.retry import failing_with, retrying
from ..core.settings import Settings
from ..format.layout import schema_file_name
from . import db
from .pgdump import PgDump, base_env, conninfo, pattern
from .schemadeps import Extension
from .sql import quote_ident

EXTENSION_OPTION = 14  # the first pg_dump with --extension
CHUNK = 1 << 20
SAID_LINE = 300  # characters of one line of pg_dump's errors kept (a LOCK TABLE query can be huge)


@dataclass(frozen=True)
class Sections:
    """What the schema files are made from: the pg_dump, the run's snapshot, the
    tables left out, the extensions the dumped objects use, and the groups of
    schemas dumped one pg_dump each (one group: all of --schema)."""

    pg_dump: PgDump
    snapshot_id: str
    excluded: Sequence[tuple[str, str]]
    extensions: Sequence[Extension] = ()
    groups: Sequence[Sequence[str]] = ()


def arguments(
    settings: Settings,
    job: Sections,
    schemas: Sequence[str],
    extensions: Sequence[str],
    archive: str,
) -> list[str]:
    """pg_dump's command line: the schema of `schemas` (pg_dump 14 or later for `extensions`,
    see created_first) into the archive file."""
    args = [
        "--schema-only",
        "--format",
        "custom",
        "--file",
        archive,
        "--snapshot",
        job.snapshot_id,
        "--no-privileges",
        "--no-password",
        "--dbname",
        conninfo(settings),
    ]
    if settings.lock_timeout:
        args += ["--lock-wait-timeout", f"{int(settings.lock_timeout * 1000)}ms"]
    for schema in schemas:
        args += ["--schema", pattern(schema)]
    for schema, table in job.excluded:
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


_SNAPSHOT_GONE = re.compile(r'snapshot "[^"]*" does not exist|invalid snapshot identifier')
_CONNECTION = re.compile(
    r"connection to server .* failed|server closed the connection|terminated abnormally|"
    r"SSL SYSCALL|could not (receive|send) data|the database system is|too many connections|"
    r"terminating connection|no connection to the server"
)
# pg_dump reads parts of the catalog with the server's functions, which see the catalog as it is
# now, not as the snapshot had it: an object dropped after the snapshot (a table dropped and made
# again while pg_dump waited for its lock) fails its lookup. A fresh snapshot reads it (the run
# starts again, as for a table rewritten after the snapshot).
_CATALOG_RACE = re.compile(r"cache lookup failed for ")
_SAID = re.compile(r"error:|detail:|hint:|FATAL", re.IGNORECASE)


def _error_class(text: str) -> type[DumpError | PermissionDenied]:
    """What pg_dump's message means for the run: a lost snapshot starts the run
    again, a lost connection runs pg_dump again, the rest is said as it is."""
    if _SNAPSHOT_GONE.search(text):
        return SnapshotLost
    if _CATALOG_RACE.search(text):
        return TableChanged
    if _CONNECTION.search(text):
        return ConnectionLost
    return PermissionDenied if "permission denied" in text else DumpError


def _failure(program: PgDump, tool: str, code: int, err: bytes, secret: str | None, where: str) -> DumperError:
    text = err.decode("utf-8", "replace").replace(secret or "\0", "***")
    lines = [line.strip()[:SAID_LINE] for line in text.splitlines()]
    said = " / ".join([line for line in lines if _SAID.search(line)] or lines[-3:])
    return _error_class(said)(f"{where}: {tool} {program.version} failed (exit {code}): {said}")


async def _run(argv: list[str], env: dict[str, str], bound: float, what: str) -> tuple[int, bytes]:
    """A child to its end within `bound` seconds (0: no bound); its exit code and stderr."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )  # a SIGINT at the terminal reaches us, and we end it
    try:
        async with asyncio.timeout(bound or None):
            _, err = await proc.communicate()
    except TimeoutError:
        raise DumpError(
            f"{what}: pg_dump did not finish within {bound:g} s (--stall-timeout plus --lock-timeout): the "
            "server, or the network to it, stalled; check the server's health and load, or raise "
            "--stall-timeout (a catalog of very many tables takes longer)"
        ) from None
    finally:
        await _ended(proc)
    return proc.returncode or 0, err


async def _ended(proc: asyncio.subprocess.Process) -> None:
    """The child killed if it still runs, and reaped: no way out leaves one behind."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


async def _archive_once(
    settings: Settings, password: db.PasswordProvider, job: Sections, index: int, archive: str
) -> None:
    schemas = job.groups[index] if job.groups else settings.schema
    extensions = [e.name for e in job.extensions] if index == 0 and job.pg_dump.major >= EXTENSION_OPTION else []
    env = base_env()
    secret = await password()
    if secret:
        env["PGPASSWORD"] = secret  # the environment of a child of ours: not on any command line
    with contextlib.suppress(FileNotFoundError):
        os.unlink(archive)  # a try that failed part way
    # A bound on the whole of pg_dump: its table locks wait up to --lock-timeout, and
    # its catalog queries are short (quiet until the catalog is read: silence alone proves nothing).
    bound = settings.stall_timeout + settings.lock_timeout if settings.stall_timeout else 0.0
    argv = [job.pg_dump.path, *arguments(settings, job, schemas, extensions, archive)]
    code, err = await _run(argv, env, bound, "the schema files")
    if code:
        raise _failure(job.pg_dump, "pg_dump", code, err, secret, "the schema files")


async def archives(settings: Settings, password: db.PasswordProvider, job: Sections, folder: str) -> list[str]:
    """pg_dump's archive of each group of schemas, in `folder` (private); a lost connection
    runs that pg_dump again (in the same snapshot), up to --connect-attempts, with the
    backoff of a connection's own retries."""
    paths = []
    for index in range(max(1, len(job.groups))):
        path = os.path.join(folder, f"schema-{index}.dump")
        await retrying(
            functools.partial(_archive_once, settings, password, job, index, path),
            attempts=settings.connect_attempts,
            heals=failing_with(ConnectionLost),
            say="pg_dump could not connect or lost its connection, retrying",
            wait=tenacity.wait_exponential_jitter(initial=1, max=8.0),
        )
        paths.append(path)
    return paths


async def section(job: Sections, paths: Sequence[str], name: str, stall_timeout: float) -> AsyncIterator[bytes]:
    """A section's SQL, from the archives in order, as pg_restore writes it (owners, grants and
    tablespaces left out: they are the source server's), in chunks."""
    if name == "pre-data" and job.pg_dump.major < EXTENSION_OPTION:
        yield created_first(job.extensions)
    for path in paths:
        proc = await asyncio.create_subprocess_exec(
            job.pg_dump.pg_restore,
            "--section",
            name,
            "--no-owner",
            "--no-privileges",
            "--no-tablespaces",
            "--file",
            "-",
            path,
            env=base_env(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        assert proc.stdout is not None and proc.stderr is not None
        errors = asyncio.ensure_future(proc.stderr.read())
        try:
            async with asyncio.timeout(stall_timeout or None):  # a local file: no server to wait for
                while chunk := await proc.stdout.read(CHUNK):
                    yield chunk
                await proc.wait()
        except TimeoutError:
            raise DumpError(
                f"schema file {schema_file_name(name)}: pg_restore did not finish within --stall-timeout"
            ) from None
        finally:
            await _ended(proc)
            err = await errors
        if proc.returncode:
            raise _failure(
                job.pg_dump, "pg_restore", proc.returncode, err, None, f"schema file {schema_file_name(name)}"
            )
