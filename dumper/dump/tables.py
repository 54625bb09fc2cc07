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
from typing import Protocol

import msgspec

from ..core.errors import first_error
from ..core.logs import current_table, log
from ..core.settings import Settings
from ..format.encode import Framer, Kind, TableFraming
from ..format.manifest import Column, TableEntry
from ..format.stored import StoredWriter
from ..postgres import db
from ..postgres.catalog import Table
from ..storage.output import Output
from . import cpus, groups, workers
from .assemble import PROGRESS_EVERY, Assembly
from .progress import Display, TableProgress
from .reader import Group, Lane, Piece, Reader, Sink, plan_pieces


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
    return table_entry(
        piece.table,
        piece.relpath,
        rows=assembly.framer.rows,
        size=assembly.writer.bytes,
        sha256=assembly.writer.sha256,
        started=assembly.started,
        json_nulls=assembly.json_nulls,
        outside={c: [(int(row), str(text)) for row, text in pairs] for c, pairs in assembly.outside().items()},
    )


def table_entry(
    table: Table,
    relpath: str,
    *,
    rows: int,
    size: int,
    sha256: str,
    started: float,
    json_nulls: dict[str, list[list[int]]],
    outside: dict[str, list[tuple[int, str]]] | None = None,
) -> TableEntry:
    """A table file's manifest entry: its rows, stored bytes (`size`) and sha256, read since
    `started` (time.monotonic()); a one-process run's or a sharded run's joined file alike."""
    return TableEntry(
        schema=table.schema,
        table=table.name,
        path=relpath.partition("/")[2],  # relative to the run folder (the manifest)
        rows=rows,
        bytes=size,
        sha256=sha256,
        columns=[
            Column(name=c.name, type=c.type, written=c.written, not_null=c.not_null, dimensions=c.dimensions)
            for c in table.columns
        ],
        seconds=round(time.monotonic() - started, 3),
        extension=table.extension,
        json_nulls=json_nulls,
        outside=outside or {},
    )


def json_keys(table: Table) -> dict[bytes, str]:
    """The encoded key of each json/jsonb column (as the encoder writes it), for Assembly."""
    return {msgspec.json.encode(c.name) + b":": c.name for c in table.columns if c.kind is Kind.JSON}


def _framing(table: Table, settings: Settings) -> TableFraming:
    """How the table's file is made of its batches: JSON framing, or a Parquet writer."""
    if settings.format == "parquet":
        from ..format.parquet.write import ParquetFramer  # pyarrow: loaded by Parquet runs only

        return ParquetFramer(table.parquet_columns(), settings.compression)
    return Framer(settings.format)


def plan_items(work: list[tuple[Table, str]], piece_pages: int, lock: bool, group_size: int) -> list[Piece | Group]:
    """Largest first, so one big table does not start last and run alone; a split
    table's pieces in file order, so all connections share it; small tables alike
    read together (groups.py)."""
    pieces = (
        piece
        for table, relpath in sorted(work, key=lambda item: -item[0].pages)
        for piece in plan_pieces(table, relpath, piece_pages, lock)
    )
    return list(groups.grouped(pieces, group_size))


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
    group_size: int = 1,
) -> list[TableEntry]:
    files = TableFiles(settings, output, committed)
    await read_items(
        settings, password, work, snapshot_id, plan_items(work, piece_pages, lock, group_size), files, display
    )
    return [files.results[relpath] for _, relpath in work]


async def read_items(
    settings: Settings,
    password: db.PasswordProvider,
    work: list[tuple[Table, str]],
    snapshot_id: str,
    items: list[Piece | Group],
    files: Files,
    display: Display | None = None,
) -> None:
    """Every item of `items` read over --jobs lanes in the snapshot, into `files` (the run's table
    files, or a sharded run's parts: dump/shards.py)."""
    queue = deque(items)
    assemblies, results = files.open, files.results
    jobs = max(1, min(settings.jobs, len(queue)))
    processes = min(cpus.processes(settings, sum(table.bytes for table, _ in work)), jobs)
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
                    group.create_task(_read_on(lane, queue, files))
    except BaseExceptionGroup as exc:
        first = first_error(exc)
        raise first from first.__cause__  # not the group: the error, with the server's own words behind it
    finally:
        beat.cancel()
        for relpath, assembly in assemblies.items():
            if relpath not in results:
                await assembly.abandon()


class Files(Protocol):
    """Where a run's pieces go while they are read: each piece's Assembly (open, by file), and
    each file's entry once done (results)."""

    open: dict[str, Assembly]
    results: dict[str, TableEntry]

    def assembly_for(self, piece: Piece, grouped: bool = False) -> Assembly: ...

    async def all_finished(self, pieces: tuple[Piece, ...], assemblies: list[Assembly]) -> None: ...


class TableFiles:
    """The run's table files: open while read (their assemblies), then committed."""

    def __init__(self, settings: Settings, output: Output, committed: list[str]) -> None:
        self.settings = settings
        self.output = output
        self.committed = committed
        self.open: dict[str, Assembly] = {}
        self.results: dict[str, TableEntry] = {}

    def assembly_for(self, piece: Piece, grouped: bool = False) -> Assembly:
        """The table's assembly, made (and said "started", unless read in a group: its
        "done" comes as soon) when its first piece starts."""
        if piece.relpath not in self.open:
            if not grouped:
                log.info("started", extra={"pieces": piece.count} if piece.count > 1 else {})
            parquet = self.settings.format == "parquet"
            self.open[piece.relpath] = Assembly(
                piece.table.qualified,
                self.output.open_table(piece.relpath),
                piece.count,
                _framing(piece.table, self.settings),
                StoredWriter("none" if parquet else self.settings.compression, self.settings.gzip_level),
                json_keys={} if parquet else json_keys(piece.table),
            )
        return self.open[piece.relpath]

    async def all_finished(self, pieces: tuple[Piece, ...], assemblies: list[Assembly]) -> None:
        """finished() for each; a group's files are committed together (local files: in one
        thread hand-off, storage/local.py)."""
        if len(pieces) == 1:
            await self.finished(pieces[0], assemblies[0])
            return
        async with asyncio.TaskGroup() as commits:
            for piece, assembly in zip(pieces, assemblies, strict=True):
                commits.create_task(self.finished(piece, assembly))

    async def finished(self, piece: Piece, assembly: Assembly) -> None:
        """A piece read; once the table's last, its file committed and its entry made."""
        current_table.set(piece.table.qualified)  # this task's own: its log lines name the table
        if await assembly.piece_done(piece.index):
            await assembly.commit()
            self.committed.append(piece.relpath)
            self.results[piece.relpath] = entry = _entry(piece, assembly)
            del self.open[piece.relpath]  # memory stays flat in the number of tables
            log.info("done", extra={"rows": entry.rows, "bytes": entry.bytes, "seconds": entry.seconds})


async def _read_on(lane: Lane, queue: deque[Piece | Group], files: Files) -> None:
    """One lane's share of the queue. A group's files are committed while the lane reads
    on (one group's at most): its small files cost the client about what its one query
    costs the server."""
    committing: asyncio.Future[None] | None = None
    try:
        while queue:
            item = queue.popleft()
            sinks = []
            for piece in item.members:
                current_table.set(piece.table.qualified)
                sinks.append(files.assembly_for(piece, grouped=isinstance(item, Group)))
            await lane.read(item, _sink(item, sinks))
            current_table.set(None)
            if committing is not None:
                await committing
                committing = None
            if isinstance(item, Group):
                committing = asyncio.ensure_future(files.all_finished(item.members, sinks))
            else:
                await files.all_finished(item.members, sinks)
        if committing is not None:
            await committing
    except BaseException:
        lane.abort()
        if committing is not None and not committing.done():
            committing.cancel()
            await asyncio.wait([committing])
        raise
    await lane.close()


def _sink(item: Piece | Group, assemblies: list[Assembly]) -> Sink:
    """Where a piece's batches go: its table's assembly; a group's, each member's."""
    return _Members(assemblies) if isinstance(item, Group) else assemblies[0]


class _Members:
    """A group's sink: a member's batches go to its table's assembly (a whole table: piece 0)."""

    def __init__(self, assemblies: list[Assembly]) -> None:
        self.assemblies = assemblies

    async def add(self, piece: int, body: bytes | bytearray, rows: int) -> None:
        await self.assemblies[piece].add(0, body, rows)


def _show(
    display: Display, estimates: dict[str, float], assemblies: dict[str, Assembly], finished: dict[str, TableEntry]
) -> None:
    """Every table's progress, to the live display (a terminal)."""
    display(
        [
            TableProgress(a.name, estimates[relpath], a.started, a.rows_received, a.writer.bytes)
            for relpath, a in assemblies.items()
        ]
        + [
            TableProgress(f"{e.schema}.{e.table}", estimates[relpath], 1.0, e.rows, e.bytes, True)
            for relpath, e in finished.items()
        ]
        + [
            TableProgress(relpath, -1.0, 0.0)
            for relpath in estimates
            if relpath not in assemblies and relpath not in finished
        ]
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
