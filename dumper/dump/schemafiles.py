"""pg_dump's pre-data and post-data sections for the run, from its snapshot,
written into the run folder while the tables are read."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import tempfile
from typing import Any

from ..core.logs import log
from ..core.settings import Settings
from ..format.layout import SECTIONS, schema_file_name
from ..format.manifest import FileEntry
from ..postgres import db, schemadump
from ..postgres.catalog import Table
from ..storage.output import Output

_NOT_DUMPED_SQL = """
SELECT n.nspname, c.relname
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
WHERE n.nspname OPERATOR(pg_catalog.=) ANY($1::pg_catalog.text[])
  AND c.relkind IN ('r', 'p', 'f')
  AND NOT c.oid OPERATOR(pg_catalog.=) ANY($2::pg_catalog.oid[])
  AND NOT (c.relispartition
           AND pg_catalog.pg_partition_root(c.oid)::pg_catalog.oid OPERATOR(pg_catalog.=) ANY($2::pg_catalog.oid[]))
  AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d  -- an extension's: pg_dump leaves it to CREATE EXTENSION
                  WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
                    AND d.objid OPERATOR(pg_catalog.=) c.oid AND d.deptype OPERATOR(pg_catalog.=) 'e')
ORDER BY 1, 2
"""


async def not_dumped(conn: Any, schemas: tuple[str, ...], tables: list[Table]) -> list[tuple[str, str]]:
    """Tables of the chosen schemas whose rows the run does not dump (--include /
    --exclude, foreign tables, partitions of such roots): left out of the schema
    files too, so that restoring them creates only tables that get their rows."""
    return [(r[0], r[1]) for r in await conn.fetch(_NOT_DUMPED_SQL, list(schemas), [t.oid for t in tables])]


async def write_schema_files(
    settings: Settings,
    password: db.PasswordProvider,
    output: Output,
    job: schemadump.Sections,
    committed: list[str],
) -> list[FileEntry]:
    """pg_dump's pre-data and post-data sections, written into the run folder: the schema
    archived once (or once per group of schemas) in a private temporary folder, each
    section streamed from it into its file, hashed on the way."""
    folder = tempfile.mkdtemp(prefix="dumper-schema-")  # private (0700)
    try:
        paths = await schemadump.archives(settings, password, job, folder)
        files = [await _write(output, settings, job, paths, section, committed) for section in SECTIONS]
    finally:
        await asyncio.to_thread(shutil.rmtree, folder, True)
    log.info(
        "schema files written",
        extra={"pg_dump": job.pg_dump.version, "bytes": sum(f.bytes for f in files)}
        | ({"parts": len(job.groups)} if job.groups else {}),
    )
    return files


async def _write(
    output: Output,
    settings: Settings,
    job: schemadump.Sections,
    paths: list[str],
    section: str,
    committed: list[str],
) -> FileEntry:
    name = schema_file_name(section)
    relpath = f"{settings.run_id}/{name}"
    out = output.open_table(relpath)
    digest, size = hashlib.sha256(), 0
    try:
        async for chunk in schemadump.section(job, paths, section, settings.stall_timeout):
            digest.update(chunk)
            size += len(chunk)
            await out.write(chunk)
        await out.commit()
    except BaseException:
        await out.discard()
        raise
    committed.append(relpath)
    return FileEntry(section=section, path=name, bytes=size, sha256=digest.hexdigest())
