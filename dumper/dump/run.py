"""One dump run: discover, read every table from one snapshot, write the manifest.

A run either ends with every table file and then the manifest and LATEST in
place, or raises and leaves nothing behind that could pass for a dump.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import tenacity

from .. import __version__
from ..core.errors import ConnectionLost, DumperError, RecoveryConflict, SnapshotLost, first_error
from ..core.logs import log
from ..core.malloc import young_gc_only
from ..core.retry import failing_with, retrying
from ..core.settings import Settings
from ..format import parquet
from ..format.layout import LATEST_NAME, MANIFEST_NAME, SHARDS, table_file_name, table_paths, unique_file_names
from ..format.manifest import (
    Database,
    FileEntry,
    Manifest,
    Requirement,
    SchemaFiles,
    SequencePosition,
    TableEntry,
    Tool,
    TypeInfo,
    parse,
)
from ..format.parquet import mapping
from ..postgres import (
    db,
    locks,
    pgdump,
    replica,
    schemadeps,
    schemadump,
    schemagroups,
    sequences,
    snapshot,
    typeinfo,
)
from ..postgres.catalog import Table, discover, measured
from ..postgres.translate import LOST
from ..storage.output import Output
from . import groups, shards
from .progress import Display
from .schemafiles import not_dumped, write_schema_files
from .tables import dump_tables, pages_per_piece, plan_items


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _iso(when: dt.datetime) -> str:
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


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
    if settings.format == "parquet":
        parquet.require()
    sharded = settings.shards > 1
    if sharded and settings.shard_index:
        await shards.run_worker(settings, password, output)
        return parse(await asyncio.to_thread(output.read, f"{settings.run_id}/{MANIFEST_NAME}"))
    # New, private, writable: before any table (a sharded run's: or this run's, from an earlier attempt).
    await asyncio.to_thread(output.make_run_dir, settings.run_id, sharded)
    source = _Source()
    async with contextlib.AsyncExitStack() as stack:
        if sharded:  # index 0's sign of life, from now to the end of every attempt
            shared = shards.Shared(output, settings.run_id)
            await asyncio.to_thread(output.make_folders, [shards.alive_path(settings.run_id)])
            await stack.enter_async_context(shards.heartbeat(shared, shards.alive_path(settings.run_id)))
        manifest = await _attempts(settings, password, output, clock, display, source)
    if sharded and not await asyncio.to_thread(output.remove_tree, f"{settings.run_id}/{SHARDS}"):
        # (after index 0's last heartbeat: nothing of the shared state is written again)
        log.warning("could not remove the sharded run's shared state", extra={"folder": f"{settings.run_id}/{SHARDS}"})
    return manifest


async def _attempts(
    settings: Settings,
    password: db.PasswordProvider,
    output: Output,
    clock: Callable[[], dt.datetime],
    display: Display | None,
    source: _Source,
) -> Manifest:

    async def attempt() -> Manifest:
        try:
            return await _run_once(settings, password, output, clock, source, display)
        except (SnapshotLost, ConnectionLost) as exc:
            error = await _name_recovery_conflict(settings, password, source, exc)
            if error is exc:
                raise
            raise error from exc

    try:
        return await retrying(
            attempt,
            attempts=settings.run_attempts,
            heals=failing_with(SnapshotLost, ConnectionLost),
            say="snapshot lost; starting the run again with a fresh snapshot",
            wait=tenacity.wait_exponential(multiplier=2, max=30),
        )  # 2, 4, 8 ... 30 s
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
    with contextlib.suppress(DumperError, *LOST):
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


@dataclass
class _Prepared:
    """What the run's first connection learnt, in the snapshot, before any table is read."""

    snapshot_id: str
    version: str
    piece_pages: int
    carried: list[schemadeps.Extension]
    tables: list[Table]
    outside: list[Requirement]
    pg_dump: pgdump.PgDump | None
    locking: locks.LockPlan
    positions: list[SequencePosition]
    excluded: list[tuple[str, str]]
    groups: list[list[str]]
    types: dict[str, TypeInfo]


async def _prepare(coordinator: Any, settings: Settings, source: _Source) -> _Prepared:
    """Snapshot, catalog, the lock plan (and the locks, up front), sizes and sequences."""
    async with db.preparing(settings):
        snapshot_id = await snapshot.export_snapshot(coordinator)
        version = await db.server_version(coordinator)
        facts = await db.scan_facts(coordinator)
        carried = await schemadeps.extensions(coordinator, settings.schema)
        tables = await discover(
            coordinator,
            settings.schema,
            settings.include,
            settings.exclude,
            settings.extension_types,
            carried,
            settings.as_text,
            parquet=settings.format == "parquet",
        )
        outside = await schemadeps.outside(coordinator, settings.schema, carried)
        types = await typeinfo.types_of(coordinator, ((c.type_oid, c.typmod) for t in tables for c in t.columns))
        source.standby = await replica.standby(coordinator)
        if source.standby and not source.conflicts:
            source.conflicts = await replica.conflicts(coordinator)
        locking = locks.plan(
            sum(t.relations for t in tables), await locks.lock_table(coordinator), settings.table_locks
        )
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
    log.info("table locks: " + locking.described(), extra={"mode": locking.mode, "lock_table": locking.table.size})
    if source.standby and source.standby.can_cancel:
        log.warning(source.standby.warning())
    named = [(t.oid, t.relation_sql(), t.qualified) for t in tables]
    if locking.mode == locks.UPFRONT:
        await locks.lock_upfront(coordinator, named, settings)
    async with db.preparing(settings):
        if locking.mode == locks.UPFRONT:
            await locks.changed(coordinator, named)
        groups = (
            await schemagroups.groups(coordinator, settings.schema, locking.table.budget)
            if pg_dump and locking.mode == locks.WHILE_READ
            else []
        )
        tables = await measured(coordinator, tables)
        positions = await sequences.read(
            coordinator, settings.schema, [oid for ext in carried for oid in ext.config_sequences]
        )
        excluded = await not_dumped(coordinator, settings.schema, tables) if pg_dump else []
    if outside and pg_dump:
        log.warning(
            "the schema files name objects outside the dumped schemas: a restore --with-schema (or a "
            "drill) needs them in the target; dump their schemas too, or create them there first",
            extra={"objects": "; ".join(o.description for o in outside)},
        )
    return _Prepared(
        snapshot_id,
        version,
        pages_per_piece(facts, settings),
        carried,
        tables,
        outside,
        pg_dump,
        locking,
        positions,
        excluded,
        groups,
        types,
    )


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
            ready = await _prepare(coordinator, settings, source)
            names = unique_file_names(
                [table_file_name(t.schema, t.name, settings.format, settings.compression) for t in ready.tables]
            )
            paths = [f"{run_dir}/{path}" for path in table_paths(names, settings.layout == "folders")]
            await asyncio.to_thread(output.make_folders, paths)
            work = list(zip(ready.tables, paths, strict=True))
            schema_job = (
                schemadump.Sections(ready.pg_dump, ready.snapshot_id, ready.excluded, ready.carried, ready.groups)
                if ready.pg_dump
                else None
            )
            lock = ready.locking.mode == locks.WHILE_READ
            group_size = groups.size_for(ready.locking.table.budget, settings.jobs)
            reading = (
                shards.coordinate(
                    settings,
                    password,
                    shards.Shared(output, run_dir),
                    work,
                    ready.snapshot_id,
                    plan_items(work, ready.piece_pages, lock, group_size),
                    committed,
                )
                if settings.shards > 1
                else dump_tables(
                    settings,
                    password,
                    output,
                    work,
                    ready.snapshot_id,
                    ready.piece_pages,
                    committed,
                    display,
                    lock=lock,
                    group_size=group_size,
                )
            )
            # The schema files are made while the tables are read, on connections of their own
            # (pg_dump's); either failing ends the other.
            with young_gc_only():
                files, entries = await _together(
                    write_schema_files(settings, password, output, schema_job, committed) if schema_job else None,
                    reading,
                )
        finally:
            await db.close(coordinator)
        manifest = Manifest(
            tool=Tool(name="dumper", version=__version__),
            run_id=settings.run_id,
            started_at=_iso(started),
            finished_at=_iso(clock()),
            database=Database(
                host=settings.host,
                port=settings.port,
                dbname=settings.dbname,
                user=settings.user,
                server_version=ready.version,
            ),
            snapshot_id=ready.snapshot_id,
            format=settings.format,
            compression=settings.compression,
            tables=entries,
            schemas=list(settings.schema),
            schema_files=_schema_files(settings, ready.pg_dump, files),
            sequences=ready.positions,
            extensions=[e.entry for e in ready.carried],
            requires=ready.outside if ready.pg_dump else [],
            types=ready.types,
            as_text=sorted(set(settings.as_text) | set(mapping.AS_TEXT if settings.format == "parquet" else ())),
            layout=settings.layout,
        )
        await output.make_durable(committed)  # then the manifest says they are a dump
        await output.put(f"{run_dir}/{MANIFEST_NAME}", manifest.to_bytes())
        done = True
    finally:
        if not done:  # leave nothing that could pass for a (partial) dump
            await asyncio.shield(asyncio.to_thread(_remove_all, output, committed))
    await output.put(LATEST_NAME, settings.run_id.encode() + b"\n", exclusive=False)
    return manifest


async def _together(
    schema: Coroutine[Any, Any, list[FileEntry]] | None, tables: Coroutine[Any, Any, list[TableEntry]]
) -> tuple[list[FileEntry] | None, list[TableEntry]]:
    """Both at once; the first failure cancels the other and is raised as it was."""
    try:
        async with asyncio.TaskGroup() as group:
            files = group.create_task(schema) if schema else None
            entries = group.create_task(tables)
    except BaseExceptionGroup as exc:
        first = first_error(exc)
        raise first from first.__cause__
    return (files.result() if files else None), entries.result()


def _schema_files(settings: Settings, pg_dump: pgdump.PgDump | None, files: list[FileEntry] | None) -> SchemaFiles:
    if pg_dump and files:
        return SchemaFiles(status="written", pg_dump=pg_dump.version, files=files)
    reason = (
        "--schema-files off"
        if settings.schema_files == "off"
        else "no pg_dump at least the server's major version was found"
    )
    return SchemaFiles(status="absent", reason=reason)


def _remove_all(output: Output, relpaths: list[str]) -> None:
    left = [relpath for relpath in relpaths if not output.remove(relpath)]
    if left:  # e.g. a role without s3:DeleteObject (deploy/iam/policy.json): no manifest, so no dump
        log.warning(
            "could not remove the files a failed run wrote; without a manifest they are not a dump, "
            "and LATEST does not name them: remove them with a role that may delete (or let "
            "the bucket's lifecycle rules do it)",
            extra={"files": [output.url_of(p) for p in left]},
        )
