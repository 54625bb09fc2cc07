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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from . import __version__, db
from .config import Settings
from .discover import Table, discover
from .encode import Framer, encode_rows
from .errors import ConfigError, ConnectionLost, DumperError, SnapshotLost
from .logs import current_table, log
from .manifest import LATEST_NAME, MANIFEST_NAME, Manifest, TableEntry, table_file_name, unique_file_names
from .sinks import Output
from .stored import StoredWriter

BATCH_BYTES = 4 << 20  # aim for ~4 MB of JSON per fetch: bounds memory for wide rows
FIRST_BATCH = 8  # rows, before the row width is known
PROGRESS_EVERY = 10.0  # seconds between progress lines for a long table


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


async def _dump_table(conn: Any, table: Table, relpath: str, settings: Settings,
                      output: Output) -> TableEntry:
    started = time.monotonic()
    names = [c.name for c in table.columns]
    framer = Framer(settings.format)
    batcher = _Batcher(settings.batch_rows)
    next_progress = started + PROGRESS_EVERY
    log.info("started")
    out = output.open_table(relpath)
    try:
        writer = StoredWriter(settings.compression, settings.gzip_level)
        await out.write(writer.add(framer.header()))
        async for records in db.stream(conn, table.select_sql(), table.qualified, batcher.size):
            data = framer.frame(encode_rows(names, records))
            await out.write(writer.add(data))
            batcher.seen(len(records), len(data))
            if time.monotonic() >= next_progress:
                next_progress = time.monotonic() + PROGRESS_EVERY
                log.info("progress", extra={"rows": framer.rows, "bytes": writer.bytes})
        await out.write(writer.add(framer.footer()) + writer.finish())
        await out.commit()
    except BaseException:
        await out.discard()
        raise
    seconds = round(time.monotonic() - started, 3)
    log.info("done", extra={"rows": framer.rows, "bytes": writer.bytes, "seconds": seconds})
    return TableEntry(
        schema=table.schema, table=table.name, path=relpath.rpartition("/")[2], rows=framer.rows,
        bytes=writer.bytes, sha256=writer.sha256,
        columns=[{"name": c.name, "type": c.type} for c in table.columns], seconds=seconds)


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


TABLE_ATTEMPTS = 3  # a table whose connection dies is read again, in the same snapshot


async def _dump_tables(settings: Settings, password: db.PasswordProvider, output: Output,
                       work: list[tuple[Table, str]], snapshot_id: str,
                       committed: list[str]) -> list[TableEntry]:
    # Largest first, so one big table does not start last and run alone.
    queue = sorted(work, key=lambda item: -item[0].pages)
    results: dict[str, TableEntry] = {}

    async def joined(pool: Any) -> Any:
        conn = await db.acquire(pool, settings)
        try:
            await db.import_snapshot(conn, snapshot_id, settings.statement_timeout)
        except BaseException:
            await pool.release(conn)
            raise
        return conn

    async def dump_with_retries(pool: Any, conn: Any, table: Table, relpath: str) -> Any:
        """Returns the connection to go on with (a new one after a lost connection)."""
        for attempt in range(1, TABLE_ATTEMPTS + 1):
            try:
                results[relpath] = await _dump_table(conn, table, relpath, settings, output)
                return conn
            except ConnectionLost as exc:
                await pool.release(conn)  # the pool replaces the broken connection
                conn = None
                if attempt == TABLE_ATTEMPTS:
                    raise
                log.warning("connection lost; reading the table again in the same snapshot",
                            extra={"attempt": attempt + 1, "of": TABLE_ATTEMPTS, "error": str(exc)})
                conn = await joined(pool)  # SnapshotLost if the server restarted
        raise AssertionError("unreachable")

    async def worker(pool: Any) -> None:
        conn = await joined(pool)
        try:
            while queue:
                table, relpath = queue.pop(0)
                current_table.set(table.qualified)
                conn = await dump_with_retries(pool, conn, table, relpath)
                committed.append(relpath)
                current_table.set(None)
            await conn.execute("ROLLBACK")  # read-only: nothing to keep
        finally:
            if conn is not None:
                await pool.release(conn)

    jobs = max(1, min(settings.jobs, len(queue)))
    pool = await db.create_pool(settings, password, jobs)
    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(jobs):
                group.create_task(worker(pool))
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
                tables = await discover(coordinator, settings.schema, settings.include, settings.exclude)
            log.info("snapshot taken", extra={"snapshot_id": snapshot_id, "tables": len(tables),
                                              "server_version": version})
            for table in tables:
                await db.lock_table(coordinator, table.relation_sql(), table.qualified)
            names = unique_file_names([
                table_file_name(t.schema, t.name, settings.format, settings.compression) for t in tables])
            work = [(t, f"{run_dir}/{name}") for t, name in zip(tables, names, strict=True)]
            with _young_gc_only():
                entries = await _dump_tables(settings, password, output, work, snapshot_id, committed)
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


def _remove_all(output: Output, relpaths: list[str], run_dir: str) -> None:
    for relpath in relpaths:
        output.remove(relpath)
    output.remove_dir_if_empty(run_dir)
