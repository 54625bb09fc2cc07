"""One dump run: discover, read every table from one snapshot, write the manifest.

A run either ends with every table file and then the manifest and LATEST in
place, or raises and leaves nothing behind that could pass for a dump.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import functools
import hashlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import __version__
from ..core.config import Settings
from ..core.errors import ConnectionLost, DumperError, RecoveryConflict, SnapshotLost, first_error
from ..core.logs import current_table, log
from ..dump import workers
from ..dump.assemble import PROGRESS_EVERY, Assembly
from ..dump.reader import Lane, Piece, Reader, plan_pieces, young_gc_only
from ..format.encode import Framer
from ..format.manifest import (
    LATEST_NAME,
    MANIFEST_NAME,
    FileEntry,
    Manifest,
    TableEntry,
    table_file_name,
    unique_file_names,
)
from ..format.stored import StoredWriter
from ..ops.progress import Display, TableProgress
from ..postgres import db, pgdump, replica, schemadeps, sequences
from ..postgres.catalog import Table, discover, measured
from ..storage.output import Output


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _iso(when: dt.datetime) -> str:
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _entry(piece: Piece, assembly: Assembly) -> TableEntry:
    table = piece.table
    return TableEntry(
        schema=table.schema,
        table=table.name,
        path=piece.relpath.rpartition("/")[2],
        rows=assembly.framer.rows,
        bytes=assembly.writer.bytes,
        sha256=assembly.writer.sha256,
        columns=[{"name": c.name, "type": c.type, "written": c.written} for c in table.columns],
        seconds=round(time.monotonic() - assembly.started, 3),
        extension=table.extension,
    )


async def _dump_tables(
    settings: Settings,
    password: db.PasswordProvider,
    output: Output,
    work: list[tuple[Table, str]],
    snapshot_id: str,
    piece_pages: int,
    committed: list[str],
    display: Display | None = None,
) -> list[TableEntry]:
    # Largest first, so one big table does not start last and run alone; a
    # split table's pieces in file order, so all connections share it.
    queue = deque(
        piece
        for table, relpath in sorted(work, key=lambda item: -item[0].pages)
        for piece in plan_pieces(table, relpath, piece_pages)
    )
    assemblies: dict[str, Assembly] = {}
    results: dict[str, TableEntry] = {}

    def assembly_for(piece: Piece) -> Assembly:
        if piece.relpath not in assemblies:
            log.info("started", extra={"pieces": piece.count} if piece.count > 1 else {})
            assemblies[piece.relpath] = Assembly(
                piece.table.qualified,
                output.open_table(piece.relpath),
                piece.count,
                Framer(settings.format),
                StoredWriter(settings.compression, settings.gzip_level),
            )
        return assemblies[piece.relpath]

    async def worker(lane: Lane) -> None:
        try:
            while queue:
                piece = queue.popleft()
                current_table.set(piece.table.qualified)
                assembly = assembly_for(piece)
                await lane.read(piece, assembly)
                if await assembly.piece_done(piece.index):
                    await assembly.commit()
                    committed.append(piece.relpath)
                    results[piece.relpath] = entry = _entry(piece, assembly)
                    log.info("done", extra={"rows": entry.rows, "bytes": entry.bytes, "seconds": entry.seconds})
                current_table.set(None)
        except BaseException:
            lane.abort()
            raise
        await lane.close()

    jobs = max(1, min(settings.jobs, len(queue)))
    processes = min(workers.processes(settings), jobs)
    estimates = {relpath: table.rows_estimate for table, relpath in work}
    beat = asyncio.create_task(
        _heartbeat(assemblies, results, display and functools.partial(_show, display, estimates, assemblies, results))
    )
    try:
        async with contextlib.AsyncExitStack() as stack:
            lanes: list[Lane] = (
                [Reader(settings, password, snapshot_id) for _ in range(jobs)]
                if processes < 2
                else await stack.enter_async_context(workers.started(settings, password, snapshot_id, jobs, processes))
            )
            async with asyncio.TaskGroup() as group:
                for lane in lanes:
                    group.create_task(worker(lane))
    except BaseExceptionGroup as exc:
        first = first_error(exc)
        raise first from first.__cause__  # not the group: the error, with the server's own words behind it
    finally:
        beat.cancel()
        for relpath, assembly in assemblies.items():
            if relpath not in results:
                await assembly.abandon()
    return [results[relpath] for _, relpath in work]


def _show(
    display: Display, estimates: dict[str, float], assemblies: dict[str, Assembly], finished: dict[str, TableEntry]
) -> None:
    """Every table's progress, to the live display (a terminal)."""
    display(
        [
            TableProgress(a.name, estimates[relpath], a.started, a.rows_received, a.writer.bytes, relpath in finished)
            for relpath, a in assemblies.items()
        ]
        + [TableProgress(relpath, -1.0, 0.0) for relpath in estimates if relpath not in assemblies]
    )


async def _heartbeat(
    assemblies: dict[str, Assembly], finished: dict[str, TableEntry], show: Callable[[], None] | None = None
) -> None:
    """A progress line for every running table at least every PROGRESS_EVERY
    seconds, data or not: a stall shows in the log before it fails the run.
    And, on a terminal, the live display every second."""
    while True:
        await asyncio.sleep(1.0)
        if show:
            show()
        now = time.monotonic()
        for relpath, assembly in list(assemblies.items()):
            if relpath not in finished and now >= assembly.last_report + PROGRESS_EVERY:
                assembly.last_report = now
                log.info(
                    "progress",
                    extra={
                        "table": assembly.name,
                        "rows": assembly.rows_received,
                        "bytes": assembly.writer.bytes,
                        "seconds_since_data": round(now - assembly.last_data, 1),
                    },
                )


@dataclass
class _Source:
    """What the run learnt about the server it reads (kept across attempts)."""

    standby: replica.Standby | None = None
    conflicts: dict[str, int] = field(default_factory=dict)  # pg_stat_database_conflicts at the start


async def run(
    settings: Settings,
    password: db.PasswordProvider,
    output: Output,
    clock: Callable[[], dt.datetime] = _now,
    display: Display | None = None,
) -> Manifest:
    """Dump every selected table into <output>/<run_id>/; returns the manifest written.

    If the snapshot is lost (the server restarted, the snapshot's connection
    died, a standby's replay cancelled the run), the run starts again with a
    fresh snapshot, up to --run-attempts: the result is exactly one complete
    dump, or an error that names the cause.
    """
    await asyncio.to_thread(output.make_run_dir, settings.run_id)  # new, private, writable: before any table
    source = _Source()
    try:
        for attempt in range(1, settings.run_attempts + 1):
            try:
                return await _run_once(settings, password, output, clock, source, display)
            except (SnapshotLost, ConnectionLost) as exc:
                error = await _name_recovery_conflict(settings, password, source, exc)
                if attempt == settings.run_attempts:
                    if error is exc:
                        raise
                    raise error from exc
                log.warning(
                    "snapshot lost; starting the run again with a fresh snapshot",
                    extra={"attempt": attempt + 1, "of": settings.run_attempts, "error": str(error)},
                )
                await asyncio.sleep(min(2.0**attempt, 30.0))
        raise AssertionError("unreachable")
    except BaseException:
        await asyncio.shield(asyncio.to_thread(output.remove_dir_if_empty, settings.run_id))
        raise


async def _name_recovery_conflict(
    settings: Settings, password: db.PasswordProvider, source: _Source, exc: DumperError
) -> DumperError:
    """On a standby, a lost snapshot or connection is most often replay cancelling
    the run: if the conflict counters moved (or the server said so), say that."""
    if source.standby is None:
        return exc
    after: dict[str, int] = {}
    with contextlib.suppress(DumperError, *db.LOST):
        conn = await db.connect(settings, password)
        try:
            async with db.stall_guard(settings.stall_timeout, "while reading the conflict counters"):
                after = await replica.conflicts(conn)
        finally:
            await db.close(conn)
    moved = any(after.get(k, 0) > v for k, v in source.conflicts.items())
    if isinstance(exc, RecoveryConflict) or moved:
        return replica.explain(source.conflicts, after, exc)
    return exc


async def _run_once(
    settings: Settings,
    password: db.PasswordProvider,
    output: Output,
    clock: Callable[[], dt.datetime],
    source: _Source,
    display: Display | None,
) -> Manifest:
    started = clock()
    run_dir = settings.run_id
    committed: list[str] = []
    done = False
    try:
        coordinator = await db.connect(settings, password)
        try:
            async with db.preparing(settings):
                snapshot_id = await db.export_snapshot(coordinator)
                version = await db.server_version(coordinator)
                facts = await db.scan_facts(coordinator)
                piece_pages = _piece_pages(facts, settings)
                carried = await schemadeps.extensions(coordinator, settings.schema)
                tables = await discover(
                    coordinator, settings.schema, settings.include, settings.exclude, settings.extension_types, carried
                )
                outside = await schemadeps.outside(coordinator, settings.schema, carried)
                source.standby = await replica.standby(coordinator)
                if source.standby and not source.conflicts:
                    source.conflicts = await replica.conflicts(coordinator)
            pg_dump = await pgdump.choose(settings, facts[0] // 10000, version)
            log.info(
                "snapshot taken",
                extra={
                    "snapshot_id": snapshot_id,
                    "tables": len(tables),
                    "server_version": version,
                    **(source.standby.fields() if source.standby else {"standby": False}),
                },
            )
            if source.standby and source.standby.can_cancel:
                log.warning(source.standby.warning())
            for table in tables:
                await db.lock_table(coordinator, table.relation_sql(), table.qualified, settings)
            async with db.preparing(settings):
                tables = await measured(coordinator, tables)
                positions = await sequences.read(
                    coordinator, settings.schema, [oid for ext in carried for oid in ext.config_sequences]
                )
                excluded = await _not_dumped(coordinator, settings.schema, tables) if pg_dump else []
            if outside and pg_dump:
                log.warning(
                    "the schema files name objects outside the dumped schemas: a restore --with-schema (or a "
                    "drill) needs them in the target; dump their schemas too, or create them there first",
                    extra={"objects": "; ".join(o["description"] for o in outside)},
                )
            names = unique_file_names(
                [table_file_name(t.schema, t.name, settings.format, settings.compression) for t in tables]
            )
            work = [(t, f"{run_dir}/{name}") for t, name in zip(tables, names, strict=True)]
            # First, on one more connection while the tables wait: a pg_dump that fails ends the run early.
            files = (
                await _schema_files(settings, password, output, pg_dump, snapshot_id, excluded, carried, committed)
                if pg_dump
                else None
            )
            schema_files = (
                {"status": "written", "pg_dump": pg_dump.version, "files": [dataclasses.asdict(f) for f in files]}
                if pg_dump and files
                else {
                    "status": "absent",
                    "reason": "--schema-files off"
                    if settings.schema_files == "off"
                    else "no pg_dump at least the server's major version was found",
                }
            )
            with young_gc_only():
                entries = await _dump_tables(
                    settings, password, output, work, snapshot_id, piece_pages, committed, display
                )
        finally:
            await db.close(coordinator)
        manifest = Manifest(
            tool={"name": "dumper", "version": __version__},
            run_id=settings.run_id,
            started_at=_iso(started),
            finished_at=_iso(clock()),
            database={
                "host": settings.host,
                "port": settings.port,
                "dbname": settings.dbname,
                "user": settings.user,
                "server_version": version,
            },
            snapshot_id=snapshot_id,
            format=settings.format,
            compression=settings.compression,
            tables=entries,
            schemas=list(settings.schema),
            schema_files=schema_files,
            sequences=positions,
            extensions=[e.listed() for e in carried],
            requires=outside if pg_dump else [],
        )
        await output.put(f"{run_dir}/{MANIFEST_NAME}", manifest.to_bytes())
        done = True
    finally:
        if not done:  # leave nothing that could pass for a (partial) dump
            await asyncio.shield(asyncio.to_thread(_remove_all, output, committed))
    await output.put(LATEST_NAME, settings.run_id.encode() + b"\n", exclusive=False)
    return manifest


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


async def _not_dumped(conn: Any, schemas: tuple[str, ...], tables: list[Table]) -> list[tuple[str, str]]:
    """Tables of the chosen schemas whose rows the run does not dump (--include /
    --exclude, foreign tables, partitions of such roots): left out of the schema
    files too, so that restoring them creates only tables that get their rows."""
    return [(r[0], r[1]) for r in await conn.fetch(_NOT_DUMPED_SQL, list(schemas), [t.oid for t in tables])]


async def _schema_files(
    settings: Settings,
    password: db.PasswordProvider,
    output: Output,
    pg_dump: pgdump.PgDump,
    snapshot_id: str,
    excluded: list[tuple[str, str]],
    extensions: list[schemadeps.Extension],
    committed: list[str],
) -> list[FileEntry]:
    """pg_dump's pre-data and post-data sections, written into the run folder."""
    files = []
    for section in pgdump.SECTIONS:
        data = await pgdump.section_with_retries(
            settings, password, pg_dump, snapshot_id, section, excluded, extensions
        )
        name = pgdump.file_name(section)
        relpath = f"{settings.run_id}/{name}"
        await output.put(relpath, data)
        committed.append(relpath)
        files.append(FileEntry(section, name, len(data), hashlib.sha256(data).hexdigest()))
    log.info("schema files written", extra={"pg_dump": pg_dump.version, "bytes": sum(f.bytes for f in files)})
    return files


def _piece_pages(facts: tuple[int, int], settings: Settings) -> int:
    """Pages per piece of a split table; 0: tables are read whole."""
    if settings.jobs < 2 or settings.split_mib == 0:
        return 0
    version_num, block_size = facts
    if version_num < 140000:
        log.info("tables are not split: PostgreSQL 14 or later is needed to read page ranges")
        return 0
    return max(1, int(settings.split_mib * (1 << 20)) // block_size)


def _remove_all(output: Output, relpaths: list[str]) -> None:
    left = [relpath for relpath in relpaths if not output.remove(relpath)]
    if left:  # e.g. a role without s3:DeleteObject (deploy/iam/policy.json): no manifest, so no dump
        log.warning(
            "could not remove the files a failed run wrote; without a manifest they are not a dump, "
            "and LATEST does not name them: remove them with a role that may delete (or let "
            "the bucket's lifecycle rules do it)",
            extra={"files": [output.url_of(p) for p in left]},
        )
