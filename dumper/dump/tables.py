"""The run's tables, read over --jobs lanes (connections in this process, or
in worker processes) and written each into its file, in piece order; a
progress line for every running table, data or not."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections import deque
from collections.abc import Callable

from ..core.errors import first_error
from ..core.logs import current_table, log
from ..core.settings import Settings
from ..format.encode import Framer
from ..format.manifest import Column, TableEntry
from ..format.stored import StoredWriter
from ..postgres import db
from ..postgres.catalog import Table
from ..storage.output import Output
from . import cpus, workers
from .assemble import PROGRESS_EVERY, Assembly
from .progress import Display, TableProgress
from .reader import Lane, Piece, Reader, plan_pieces


def pages_per_piece(facts: tuple[int, int], settings: Settings) -> int:
    """Pages per piece of a split table; 0: tables are read whole."""
    if settings.jobs < 2 or settings.split_mib == 0:
        return 0
    version_num, block_size = facts
    if version_num < 140000:
        log.info("tables are not split: PostgreSQL 14 or later is needed to read page ranges")
        return 0
    return max(1, int(settings.split_mib * (1 << 20)) // block_size)


def _entry(piece: Piece, assembly: Assembly) -> TableEntry:
    table = piece.table
    return TableEntry(
        schema=table.schema,
        table=table.name,
        path=piece.relpath.rpartition("/")[2],
        rows=assembly.framer.rows,
        bytes=assembly.writer.bytes,
        sha256=assembly.writer.sha256,
        columns=[Column(name=c.name, type=c.type, written=c.written) for c in table.columns],
        seconds=round(time.monotonic() - assembly.started, 3),
        extension=table.extension,
    )


async def dump_tables(
    settings: Settings,
    password: db.PasswordProvider,
    output: Output,
    work: list[tuple[Table, str]],
    snapshot_id: str,
    piece_pages: int,
    committed: list[str],
    display: Display | None = None,
    lock: bool = False,
) -> list[TableEntry]:
    # Largest first, so one big table does not start last and run alone; a
    # split table's pieces in file order, so all connections share it.
    queue = deque(
        piece
        for table, relpath in sorted(work, key=lambda item: -item[0].pages)
        for piece in plan_pieces(table, relpath, piece_pages, lock)
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
    processes = min(cpus.processes(settings), jobs)
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
