"""`dumper drill SOURCE`: prove a dump by restoring it and dumping it again.

A scratch database is created on the server, SOURCE is restored into it with
its own schema files, the scratch database is dumped again (same format and
compression) into a private temporary folder, and every table's rows and
content are compared with SOURCE's manifest. The scratch database and the
folder are removed on every way out; one left by a killed drill (it carries
MARKER as its comment) is removed by the next drill.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from typing import Any

import asyncpg
import orjson

from ..core.errors import ConfigError, DumperError, DumpError, LoadError, PermissionDenied, VerifyError
from ..core.logs import log
from ..core.settings import Settings
from ..core.urls import redact_url
from ..dump import run as dump
from ..format import sameness
from ..format.jsonnulls import JsonNulls, per_row
from ..format.manifest import Manifest, TableEntry
from ..format.readback import table_rows
from ..format.stored import content
from ..ops.notify import Outcome, publish
from ..postgres import db
from ..postgres.sql import quote_ident
from ..restore import run as restore
from ..storage.output import FAILURES, Output
from ..storage.runs import newest_run, read_manifest

MARKER = "dumper drill scratch database (removed when the drill ends)"

_LEFTOVERS_SQL = """
SELECT d.datname FROM pg_catalog.pg_database d
WHERE pg_catalog.shobj_description(d.oid, 'pg_database') OPERATOR(pg_catalog.=) $1
ORDER BY 1
"""


def scratch_name(run_id: str) -> str:
    """dumper_drill_<run id>, lower case, [a-z0-9_] only, within 63 bytes."""
    return ("dumper_drill_" + re.sub(r"[^a-z0-9_]", "_", run_id.lower()))[:63]


def _content_sha(chunks: Iterable[bytes], compression: str) -> str:
    digest = hashlib.sha256()
    for piece in content(chunks, compression):
        digest.update(piece)
    return digest.hexdigest()


# A member added to each row of a table with JSON nulls, naming the row's json columns that hold
# JSON null (the file says `null` for both): a JSON null that came back as SQL NULL differs.
_JSON_NULLS_MEMBER = b',"\\u0000json nulls":'
_JSON_NULLS_SHOWN = "\\\\u0000json nulls"  # as a shown row (a repr) spells the member's name


def _rows(
    output: Output, path: str, doc: Manifest, entry: TableEntry, nulls: JsonNulls | None = None
) -> Iterator[bytes]:
    """The row texts of a stored table file (with the JSON-null member, given `nulls`)."""
    number = 0
    for batch in table_rows(doc, entry, output.chunks(path) or [], path):
        if nulls is None:
            yield from batch
            continue
        nulled = per_row(nulls.within(number, len(batch)))
        for i, row in enumerate(batch):
            yield row[:-1] + _JSON_NULLS_MEMBER + orjson.dumps(sorted(nulled.get(i, []))) + b"}"
        number += len(batch)


def compare(doc: Manifest, source: Output, again: list[TableEntry], again_dir: Output, again_run: str) -> list[str]:
    """One message per table whose rows did not come back exactly: compared as a multiset
    of rows, each by column name (sameness), after a byte-for-byte look that settles most."""
    compression = "none" if doc.format == "parquet" else doc.compression  # a Parquet codec is inside the file
    by_name = {(t.schema, t.table): t for t in again}
    problems = []
    for entry in doc.tables:
        name = entry.qualified
        got = by_name.pop((entry.schema, entry.table), None)
        if got is None:
            problems.append(f"table {name}: not in the restored database")
            continue
        mine = f"{again_run}/{got.path}"
        if compression == "none":
            same = got.sha256 == entry.sha256
        else:  # gzip bytes depend on how writes were grouped: compare what they hold
            same = _content_sha(source.chunks(entry.path) or [], compression) == _content_sha(
                again_dir.chunks(mine) or [], compression
            )
        if same and got.rows == entry.rows and got.json_nulls == entry.json_nulls and got.outside == entry.outside:
            continue
        columns = [c.name for c in entry.columns]
        nulls = (JsonNulls(entry.json_nulls), JsonNulls(got.json_nulls)) if entry.json_nulls or got.json_nulls else None
        if nulls:
            columns.append("\x00json nulls")
        differs = sameness.difference(
            functools.partial(_rows, source, entry.path, doc, entry, nulls[0] if nulls else None),
            functools.partial(_rows, again_dir, mine, doc, got, nulls[1] if nulls else None),
            columns,
        )
        if differs is not None:
            problems.append(f"table {name}: {differs.replace(_JSON_NULLS_SHOWN, 'JSON null in')}")
    problems += [f"table {s}.{t}: in the restored database, not in the dump" for s, t in by_name]
    return problems


async def _admin(settings: Settings, password: db.PasswordProvider) -> Any:
    return await db.connect(settings, password)


async def _drop(conn: Any, name: str, settings: Settings, force: bool) -> bool:
    """DROP DATABASE; False (and a warning) if it is in use and not forced."""
    try:
        async with db.stall_guard(settings.stall_timeout, f"while dropping scratch database {name}"):
            await conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)}" + (" WITH (FORCE)" if force else ""))
        return True
    except asyncpg.ObjectInUseError:
        log.warning(
            "a scratch database of another drill is in use, left alone (a drill running now?)", extra={"database": name}
        )
        return False


async def _remove_leftovers(conn: Any, settings: Settings) -> None:
    for (name,) in await conn.fetch(_LEFTOVERS_SQL, MARKER):
        if await _drop(conn, name, settings, force=False):
            log.warning("removed the scratch database a killed drill left", extra={"database": name})


async def _create(conn: Any, name: str, settings: Settings) -> None:
    existing = await conn.fetchrow(
        "SELECT pg_catalog.shobj_description(oid, 'pg_database') AS mark FROM "
        "pg_catalog.pg_database WHERE datname OPERATOR(pg_catalog.=) $1",
        name,
    )
    if existing is not None:
        raise ConfigError(
            f"--scratch-dbname: database {name!r} exists and is not a drill's scratch database"
            if existing["mark"] != MARKER
            else f"--scratch-dbname: a drill of this dump is running now (scratch database {name!r} in use)"
        )
    try:
        async with db.stall_guard(settings.stall_timeout, f"while creating scratch database {name}"):
            await conn.execute(f"CREATE DATABASE {quote_ident(name)} TEMPLATE template0 ENCODING 'UTF8'")
            try:  # the mark is what lets the next drill remove it if this one is killed
                await conn.execute(f"COMMENT ON DATABASE {quote_ident(name)} IS '{MARKER}'")
            except BaseException:
                with contextlib.suppress(Exception):
                    await _drop(conn, name, settings, force=True)
                raise
    except asyncpg.InsufficientPrivilegeError as exc:
        raise PermissionDenied(
            f"cannot create the scratch database {name}: {exc}; the drill's role needs "
            f"CREATEDB (ALTER ROLE {settings.user} CREATEDB), best on a scratch instance"
        ) from exc
    except asyncpg.PostgresError as exc:
        raise DumpError(f"cannot create the scratch database {name}: {type(exc).__name__}: {exc}") from exc


@dataclasses.dataclass
class DrillResult:
    tables: list[TableEntry]
    mismatches: list[str]  # tables whose rows did not come back
    scratch: str
    source: str  # the run folder drilled
    failed: str | None = None  # the restore failed (a schema file, a table's rows, an object the target lacks)


async def drill(settings: Settings, password: db.PasswordProvider) -> DrillResult:
    """Restore SOURCE into a scratch database, dump it again and compare.
    Raises VerifyError (exit 7) when any table differs."""
    source = await asyncio.to_thread(newest_run, Output.for_settings(settings), settings)
    doc = await asyncio.to_thread(read_manifest, source)
    if not doc.schema_files.listed:  # the dump cannot build an empty database: it does not come back by itself
        raise VerifyError(
            f"this dump has no schema files ({doc.schema_files.why_absent}): a drill builds the scratch "
            "database from them, as a restore into an empty database must; take dumps with a pg_dump "
            "at least the server's major (--schema-files require)"
        )
    scratch = settings.scratch_dbname or scratch_name(doc.run_id)
    conn = await _admin(settings, password)
    try:
        async with db.preparing(settings, "while preparing the scratch database"):
            await _remove_leftovers(conn, settings)
        await _create(conn, scratch, settings)
    finally:
        await db.close(conn)
    folder = tempfile.mkdtemp(prefix="dumper-drill-")  # private (0700)
    try:
        log.info("drill: restoring into the scratch database", extra={"database": scratch})
        inside = dataclasses.replace(settings, dbname=scratch, output=source.url_of("").rstrip("/"))
        try:
            await restore.run(
                dataclasses.replace(
                    inside,
                    with_schema=True,
                    include=(),
                    exclude=(),
                    truncate=False,
                    create_tables=False,
                    no_sequences=False,
                ),
                password,
            )
        except (LoadError, ConfigError) as exc:  # the dump does not load as it is (the options are the drill's own)
            return DrillResult([], [], scratch, inside.output, failed=f"{exc} (the restore failed)")
        log.info("drill: dumping the scratch database again", extra={"database": scratch})
        again_settings = dataclasses.replace(
            inside,
            output=folder,
            run_id="drill",
            format=doc.format,
            compression=doc.compression,
            as_text=tuple(doc.as_text),
            layout=doc.layout,
            schema=tuple(doc.dumped_schemas),
            include=(),
            exclude=(),
            schema_files="off",
            keep=0,
        )
        again_out = Output.for_settings(again_settings)
        manifest = await dump.run(again_settings, password, again_out)
        try:
            problems = await asyncio.to_thread(compare, doc, source, manifest.tables, again_out, "drill")
        except FAILURES as exc:
            raise source.reading_error(exc) from exc
        return DrillResult(manifest.tables, problems, scratch, inside.output)
    finally:
        await asyncio.shield(_clean_up(settings, password, scratch, folder))


async def _clean_up(settings: Settings, password: db.PasswordProvider, scratch: str, folder: str) -> None:
    await asyncio.to_thread(shutil.rmtree, folder, True)
    try:
        conn = await _admin(settings, password)
        try:
            await _drop(conn, scratch, settings, force=True)  # ours: its sessions may still be ending
        finally:
            await db.close(conn)
        log.info("drill: scratch database dropped", extra={"database": scratch})
    except DumperError as exc:
        log.error(
            "could not drop the scratch database; the next drill removes it",
            extra={"database": scratch, "error": str(exc)},
        )


async def run(settings: Settings, password: db.PasswordProvider) -> Outcome:
    """A drill with its metrics and webhook; raises for a failed drill after
    publishing (VerifyError for rows that did not come back)."""
    started = time.time()
    status, code, error, result = "failed", 1, None, None
    try:
        result = await drill(settings, password)
        if result.failed:
            raise VerifyError(f"the dump {redact_url(result.source)} did not come back: {result.failed}")
        if result.mismatches:
            for problem in result.mismatches:
                log.error(f"MISMATCH {problem}")
            raise VerifyError(
                f"{len(result.mismatches)} table(s) did not come back exactly from "
                f"{redact_url(result.source)}: {'; '.join(result.mismatches)}"
            )
        status, code = "success", 0
    except DumperError as exc:
        code, error = exc.exit_code, str(exc)
        raise
    except asyncio.CancelledError:
        status, code, error = "interrupted", 143, "stopped by a signal"
        raise
    finally:
        where = result.source if result else settings.output
        outcome = Outcome(
            settings.run_id,
            status,
            started,
            time.time(),
            code,
            error,
            redact_url(where),
            result.tables if result else [],
            kind="drill",
            mismatches=(result.mismatches + ([result.failed] if result.failed else [])) if result else [],
        )
        await asyncio.shield(publish(settings, outcome))
    return outcome
