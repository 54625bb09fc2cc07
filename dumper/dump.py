"""One dump run: discover, read every table from one snapshot, write the manifest.

A run either ends with every table file and then the manifest and LATEST in
place, or raises and leaves nothing behind that could pass for a dump.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gc
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from . import __version__, db
from .assemble import Assembly
from .config import Settings
from .discover import Table, discover, measured
from .encode import Framer, encode_rows
from .errors import ConfigError, ConnectionLost, DumperError, SnapshotLost
from .logs import current_table, log
from .manifest import LATEST_NAME, MANIFEST_NAME, Manifest, TableEntry, table_file_name, unique_file_names
from .sinks import Output
from .stored import StoredWriter

BATCH_BYTES = 4 << 20  # aim for ~4 MB of JSON per fetch: bounds memory for wide rows
FIRST_BATCH = 8  # rows, before the row width is known
TABLE_ATTEMPTS = 3  # a piece whose connection dies is read again, in the same snapshot


@dataclass
class _Batcher:
    """Rows per fetch, so that a batch holds about BATCH_BYTES of output."""

    max_rows: int
    rows: int = FIRST_BATCH

    def __post_init__(self) -> None:
        self.rows = min(self.rows, self.max_rows)

    def size(self) -> int:
        return self.rows

    def seen(self, rows: int, nbytes: int) -> None:
        per_row = max(1, nbytes // max(1, rows))
        self.rows = max(1, min(self.max_rows, BATCH_BYTES // per_row))


@dataclass(frozen=True)
class Piece:
    """Part `index` of a table's `count` parts: pages [first_page, end_page)."""

    table: Table
    relpath: str
    index: int
    count: int
    first_page: int | None
    end_page: int | None


def plan_pieces(table: Table, relpath: str, piece_pages: int) -> list[Piece]:
    """One piece per `piece_pages` pages (0: the whole table in one piece).

    The first and last pieces are open-ended, so pages the size estimate
    missed are still read.
    """
    if piece_pages <= 0 or table.partitioned or table.pages <= piece_pages:
        return [Piece(table, relpath, 0, 1, None, None)]
    starts = list(range(0, table.pages, piece_pages))
    return [Piece(table, relpath, i, len(starts), start or None, starts[i + 1] if i + 1 < len(starts) else None)
            for i, start in enumerate(starts)]


@contextlib.contextmanager
def _young_gc_only() -> Iterator[None]:
    """Rows are short-lived and acyclic: collecting every 700 allocations cost
    ~20% of a dump. Freeze what exists and collect rarely; restore afterwards."""
    before = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _iso(when: dt.datetime) -> str:
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class _Delivered:
    rows: int = 0  # rows of a piece already handed to its assembly


async def _read_piece(conn: Any, piece: Piece, assembly: Assembly, settings: Settings,
                      delivered: _Delivered) -> None:
    """Streams one piece into its table's assembly.

    Rows an earlier attempt delivered are dropped: a scan of the same pages in
    the same snapshot returns the same rows in the same order (seqscans are not
    synchronized, cursors never run parallel plans).
    """
    table = piece.table
    names = [c.name for c in table.columns]
    batcher = _Batcher(settings.batch_rows)
    skip = delivered.rows
    async for records in db.stream(conn, table.select_sql(piece.first_page, piece.end_page),
                                   table.qualified, batcher.size):
        if skip:
            records, skip = records[skip:], max(0, skip - len(records))
        if records:
            body = assembly.framer.join(encode_rows(names, records))
            await assembly.add(piece.index, body, len(records))
            delivered.rows += len(records)
            batcher.seen(len(records), len(body))


def _first_error(group: BaseExceptionGroup[Any]) -> BaseException:
    """The error to report from a TaskGroup: ours before anything else."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    return next((e for e in leaves if isinstance(e, DumperError)), leaves[0])


def _entry(piece: Piece, assembly: Assembly) -> TableEntry:
    table = piece.table
    return TableEntry(
        schema=table.schema, table=table.name, path=piece.relpath.rpartition("/")[2],
        rows=assembly.framer.rows, bytes=assembly.writer.bytes, sha256=assembly.writer.sha256,
        columns=[{"name": c.name, "type": c.type} for c in table.columns],
        seconds=round(time.monotonic() - assembly.started, 3))


async def _dump_tables(settings: Settings, password: db.PasswordProvider, output: Output,
                       work: list[tuple[Table, str]], snapshot_id: str, piece_pages: int,
                       committed: list[str]) -> list[TableEntry]:
    # Largest first, so one big table does not start last and run alone; a
    # split table's pieces in file order, so all connections share it.
    queue = deque(piece for table, relpath in sorted(work, key=lambda item: -item[0].pages)
                  for piece in plan_pieces(table, relpath, piece_pages))
    assemblies: dict[str, Assembly] = {}
    results: dict[str, TableEntry] = {}

    def assembly_for(piece: Piece) -> Assembly:
        if piece.relpath not in assemblies:
            log.info("started", extra={"pieces": piece.count} if piece.count > 1 else {})
            assemblies[piece.relpath] = Assembly(
                output.open_table(piece.relpath), piece.count, Framer(settings.format),
                StoredWriter(settings.compression, settings.gzip_level))
        return assemblies[piece.relpath]

    async def joined(pool: Any) -> Any:
        conn = await db.acquire(pool, settings)
        try:
            await db.import_snapshot(conn, snapshot_id, settings.statement_timeout)
        except BaseException:
            await pool.release(conn)
            raise
        return conn

    async def read_with_retries(pool: Any, conn: Any, piece: Piece, assembly: Assembly) -> Any:
        """Returns the connection to go on with (a new one after a lost connection)."""
        delivered = _Delivered()
        for attempt in range(1, TABLE_ATTEMPTS + 1):
            try:
                await _read_piece(conn, piece, assembly, settings, delivered)
                return conn
            except ConnectionLost as exc:
                await pool.release(conn)  # the pool replaces the broken connection
                conn = None
                if attempt == TABLE_ATTEMPTS:
                    raise
                log.warning("connection lost; reading the rest again in the same snapshot",
                            extra={"attempt": attempt + 1, "of": TABLE_ATTEMPTS, "error": str(exc)})
                conn = await joined(pool)  # SnapshotLost if the server restarted
        raise AssertionError("unreachable")

    async def worker(pool: Any) -> None:
        conn = await joined(pool)
        try:
            while queue:
                piece = queue.popleft()
                current_table.set(piece.table.qualified)
                assembly = assembly_for(piece)
                conn = await read_with_retries(pool, conn, piece, assembly)
                if await assembly.piece_done(piece.index):
                    await assembly.commit()
                    committed.append(piece.relpath)
                    results[piece.relpath] = entry = _entry(piece, assembly)
                    log.info("done", extra={"rows": entry.rows, "bytes": entry.bytes, "seconds": entry.seconds})
                current_table.set(None)
            await conn.execute("ROLLBACK")  # read-only: nothing to keep
        finally:
            if conn is not None:
                await pool.release(conn)

    jobs = max(1, min(settings.jobs, len(queue)))
    pool = await db.create_pool(settings, password, jobs)
    try:
        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(jobs):
                    group.create_task(worker(pool))
        finally:
            for relpath, assembly in assemblies.items():
                if relpath not in results:
                    await assembly.abandon()
    except BaseExceptionGroup as exc:
        pool.terminate()
        raise _first_error(exc) from None
    except BaseException:
        pool.terminate()
        raise
    await pool.close()
    return [results[relpath] for _, relpath in work]


async def run(settings: Settings, password: db.PasswordProvider, output: Output,
              clock: Callable[[], dt.datetime] = _now) -> Manifest:
    """Dump every selected table into <output>/<run_id>/; returns the manifest written.

    If the snapshot is lost (the server restarted, the snapshot's connection
    died), the run starts again with a fresh snapshot, up to --run-attempts:
    the result is exactly one complete dump, or an error.
    """
    for attempt in range(1, settings.run_attempts + 1):
        try:
            return await _run_once(settings, password, output, clock)
        except (SnapshotLost, ConnectionLost) as exc:
            if attempt == settings.run_attempts:
                raise
            log.warning("snapshot lost; starting the run again with a fresh snapshot",
                        extra={"attempt": attempt + 1, "of": settings.run_attempts, "error": str(exc)})
            await asyncio.sleep(min(2.0 ** attempt, 30.0))
    raise AssertionError("unreachable")


async def _run_once(settings: Settings, password: db.PasswordProvider, output: Output,
                    clock: Callable[[], dt.datetime]) -> Manifest:
    started = clock()
    run_dir = settings.run_id
    if await asyncio.to_thread(output.exists, f"{run_dir}/{MANIFEST_NAME}"):
        raise ConfigError(f"--run-id: {output.url_of(run_dir)} already holds a complete dump; "
                          "choose another run id")
    committed: list[str] = []
    done = False
    try:
        await asyncio.to_thread(output.make_dir, run_dir)  # fail fast if the output is not writable
        coordinator = await db.connect(settings, password)
        try:
            async with db.preparing():
                snapshot_id = await db.export_snapshot(coordinator)
                version = await db.server_version(coordinator)
                piece_pages = await _piece_pages(coordinator, settings)
                tables = await discover(coordinator, settings.schema, settings.include, settings.exclude)
            log.info("snapshot taken", extra={"snapshot_id": snapshot_id, "tables": len(tables),
                                              "server_version": version})
            for table in tables:
                await db.lock_table(coordinator, table.relation_sql(), table.qualified)
            async with db.preparing():
                tables = await measured(coordinator, tables)
            names = unique_file_names([
                table_file_name(t.schema, t.name, settings.format, settings.compression) for t in tables])
            work = [(t, f"{run_dir}/{name}") for t, name in zip(tables, names, strict=True)]
            with _young_gc_only():
                entries = await _dump_tables(settings, password, output, work, snapshot_id, piece_pages,
                                             committed)
        finally:
            await db.close(coordinator)
        manifest = Manifest(
            tool={"name": "dumper", "version": __version__}, run_id=settings.run_id,
            started_at=_iso(started), finished_at=_iso(clock()),
            database={"host": settings.host, "port": settings.port, "dbname": settings.dbname,
                      "user": settings.user, "server_version": version},
            snapshot_id=snapshot_id, format=settings.format, compression=settings.compression,
            tables=entries)
        await output.put(f"{run_dir}/{MANIFEST_NAME}", manifest.to_bytes())
        done = True
    finally:
        if not done:  # leave nothing that could pass for a (partial) dump
            await asyncio.shield(asyncio.to_thread(_remove_all, output, committed, run_dir))
    await output.put(LATEST_NAME, settings.run_id.encode() + b"\n")
    return manifest


async def _piece_pages(conn: Any, settings: Settings) -> int:
    """Pages per piece of a split table; 0: tables are read whole."""
    if settings.jobs < 2 or settings.split_mib == 0:
        return 0
    version_num, block_size = await db.scan_facts(conn)
    if version_num < 140000:
        log.info("tables are not split: PostgreSQL 14 or later is needed to read page ranges")
        return 0
    return max(1, int(settings.split_mib * (1 << 20)) // block_size)


def _remove_all(output: Output, relpaths: list[str], run_dir: str) -> None:
    for relpath in relpaths:
        output.remove(relpath)
    output.remove_dir_if_empty(run_dir)
