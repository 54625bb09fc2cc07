"""One dump run: discover, read every table from one snapshot, write the manifest.

A run either ends with every table file and then the manifest and LATEST in
place, or raises and leaves nothing behind that could pass for a dump.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field

import tenacity

from .. import __version__
from ..core.errors import ConnectionLost, DumperError, RecoveryConflict, SnapshotLost
from ..core.logs import log
from ..core.retry import failing_with, retrying
from ..core.settings import Settings
from ..dump.reader import young_gc_only
from ..format.layout import LATEST_NAME, MANIFEST_NAME, table_file_name, unique_file_names
from ..format.manifest import Database, Manifest, SchemaFiles, Tool
from ..postgres import db, pgdump, replica, schemadeps, sequences, snapshot
from ..postgres.catalog import discover, measured
from ..postgres.translate import LOST
from ..storage.output import Output
from .progress import Display
from .schemafiles import not_dumped, write_schema_files
from .tables import dump_tables, pages_per_piece


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
    await asyncio.to_thread(output.make_run_dir, settings.run_id)  # new, private, writable: before any table
    source = _Source()

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
                snapshot_id = await snapshot.export_snapshot(coordinator)
                version = await db.server_version(coordinator)
                facts = await db.scan_facts(coordinator)
                piece_pages = pages_per_piece(facts, settings)
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
                await snapshot.lock_table(coordinator, table.relation_sql(), table.qualified, settings)
            async with db.preparing(settings):
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
            names = unique_file_names(
                [table_file_name(t.schema, t.name, settings.format, settings.compression) for t in tables]
            )
            work = [(t, f"{run_dir}/{name}") for t, name in zip(tables, names, strict=True)]
            # First, on one more connection while the tables wait: a pg_dump that fails ends the run early.
            files = (
                await write_schema_files(
                    settings, password, output, pgdump.Sections(pg_dump, snapshot_id, excluded, carried), committed
                )
                if pg_dump
                else None
            )
            schema_files = (
                SchemaFiles(status="written", pg_dump=pg_dump.version, files=files)
                if pg_dump and files
                else SchemaFiles(
                    status="absent",
                    reason="--schema-files off"
                    if settings.schema_files == "off"
                    else "no pg_dump at least the server's major version was found",
                )
            )
            with young_gc_only():
                entries = await dump_tables(
                    settings, password, output, work, snapshot_id, piece_pages, committed, display
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
                server_version=version,
            ),
            snapshot_id=snapshot_id,
            format=settings.format,
            compression=settings.compression,
            tables=entries,
            schemas=list(settings.schema),
            schema_files=schema_files,
            sequences=positions,
            extensions=[e.entry for e in carried],
            requires=outside if pg_dump else [],
        )
        await output.put(f"{run_dir}/{MANIFEST_NAME}", manifest.to_bytes())
        done = True
    finally:
        if not done:  # leave nothing that could pass for a (partial) dump
            await asyncio.shield(asyncio.to_thread(_remove_all, output, committed))
    await output.put(LATEST_NAME, settings.run_id.encode() + b"\n", exclusive=False)
    return manifest


def _remove_all(output: Output, relpaths: list[str]) -> None:
    left = [relpath for relpath in relpaths if not output.remove(relpath)]
    if left:  # e.g. a role without s3:DeleteObject (deploy/iam/policy.json): no manifest, so no dump
        log.warning(
            "could not remove the files a failed run wrote; without a manifest they are not a dump, "
            "and LATEST does not name them: remove them with a role that may delete (or let "
            "the bucket's lifecycle rules do it)",
            extra={"files": [output.url_of(p) for p in left]},
        )
