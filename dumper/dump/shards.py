"""One snapshot dumped by several processes (--shards N): the pods of a Kubernetes Indexed Job,
each started with the same --run-id and its own index (JOB_COMPLETION_INDEX).

Index 0 coordinates an attempt: it takes the snapshot, the locks and the catalog as a one-process
run does, writes the plan (the snapshot's id and every piece to read, `plan.json`), reads its own
share, waits for every other piece, then joins each table's file from its pieces, in order, and
writes the manifest and LATEST: the dump one process would have written. Every other index joins
the snapshot, reads its share (a piece `i` belongs to index `i mod N`), writes each piece as a
part and then its record (rows, bytes, sha256), and stays until the manifest is there.

All of it goes through the run folder (layout.py's `.shards/attempt-<n>/`): nothing else is
shared. Each process writes a heartbeat every BEAT seconds; every wait is bounded by
--stall-timeout without a sign of life (a heartbeat that moves, a piece that arrives) from what
it waits for, and ends with one line naming it. A lost index 0 (or a lost snapshot) ends its
attempt: the others stop, no manifest appears, and index 0 started again (the Job's retry) begins
a new attempt, which the others (their retries) follow; nothing of an older attempt is read by a
newer one. A retried worker writes again only the pieces that have no record yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import msgspec

from ..core.errors import ConfigError, DumpError, SnapshotLost
from ..core.logs import current_table, log
from ..core.settings import Settings
from ..format import layout
from ..format.encode import Framer
from ..format.layout import MANIFEST_NAME
from ..format.manifest import Column, TableEntry
from ..format.stored import StoredWriter, Tally
from ..postgres import db
from ..postgres.catalog import Table
from ..storage.output import Output
from .assemble import Assembly
from .reader import Group, Piece
from .tables import TableFiles, json_keys, read_items

BEAT = 2.0  # seconds between a process's heartbeats
POLL = 0.5  # seconds between looks at the shared state


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    """What index 0 tells the others: the snapshot and every item to read (in order)."""

    attempt: int
    snapshot_id: str
    shards: int
    items: list[list[Piece]]  # a piece, or a group's members (read by one query)
    groups: list[bool]  # whether each item is a group
    # How the parts are written, which every index takes from here (the tables say how they are read).
    format: str
    compression: str
    gzip_level: int


class Record(msgspec.Struct, frozen=True, kw_only=True):
    """A piece written: its part's rows, stored bytes and sha256, and JSON nulls (rows from 0)."""

    rows: int
    bytes: int
    sha256: str
    json_nulls: dict[str, list[list[int]]] = {}


def piece_ids(items: list[Piece | Group]) -> dict[tuple[str, int], str]:
    """Each piece's name among the attempt's parts: its item's number (a group's: .member)."""
    ids = {}
    for number, item in enumerate(items):
        if isinstance(item, Group):
            ids.update({(p.relpath, p.index): f"{number}.{k}" for k, p in enumerate(item.members)})
        else:
            ids[(item.relpath, item.index)] = str(number)
    return ids


def share(items: list[Piece | Group], shards: int, index: int) -> list[Piece | Group]:
    return [item for number, item in enumerate(items) if number % shards == index]


def to_plan(attempt: int, snapshot_id: str, settings: Settings, items: list[Piece | Group]) -> Plan:
    return Plan(
        attempt=attempt,
        snapshot_id=snapshot_id,
        shards=settings.shards,
        items=[list(item.members) for item in items],
        groups=[isinstance(item, Group) for item in items],
        format=settings.format,
        compression=settings.compression,
        gzip_level=settings.gzip_level,
    )


def following(settings: Settings, plan: Plan) -> Settings:
    """This process's settings for the plan's attempt: its parts written as index 0 says."""
    if plan.shards != settings.shards:
        raise ConfigError(
            f"--shards {settings.shards}: index 0 planned the run for {plan.shards} processes; every process of "
            "a sharded run needs the same --shards (the Job's completions)"
        )
    return dataclasses.replace(settings, format=plan.format, compression=plan.compression, gzip_level=plan.gzip_level)


def from_plan(plan: Plan) -> list[Piece | Group]:
    return [
        Group(tuple(pieces), pieces[0].lock) if group else pieces[0]
        for pieces, group in zip(plan.items, plan.groups, strict=True)
    ]


# --- the shared state ------------------------------------------------------------------


@dataclass
class Shared:
    """A sharded run's folder of shared state, as one process sees it."""

    output: Output
    run: str

    def attempts(self) -> list[int]:
        found = (layout.attempt_of(n) for n in self.output.names(f"{self.run}/{layout.SHARDS}"))
        return sorted(a for a in found if a is not None)

    def folder(self, attempt: int) -> str:
        return layout.attempt_folder(self.run, attempt)

    async def put(self, relpath: str, data: bytes) -> None:
        await self.output.put(relpath, data, exclusive=False)

    async def read(self, relpath: str) -> bytes | None:
        try:
            return await asyncio.to_thread(self.output.read, relpath)
        except FileNotFoundError:
            return None

    async def plan(self, attempt: int) -> Plan | None:
        data = await self.read(f"{self.folder(attempt)}/{layout.PLAN_NAME}")
        return msgspec.json.decode(data, type=Plan) if data is not None else None

    async def recorded(self, attempt: int) -> set[str]:
        """The pieces of the attempt whose record is written."""
        names = await asyncio.to_thread(self.output.names, f"{self.folder(attempt)}/parts")
        return {n.removesuffix(".json") for n in names if n.endswith(".json")}

    async def complete(self) -> bool:
        return await asyncio.to_thread(self.output.exists, f"{self.run}/{MANIFEST_NAME}")


@contextlib.asynccontextmanager
async def heartbeat(shared: Shared, relpath: str) -> AsyncIterator[None]:
    """A counter written to `relpath` every BEAT seconds while the block runs."""

    async def beat() -> None:
        count = 0
        while True:
            count += 1
            with contextlib.suppress(Exception):  # a missed beat is seen as silence, not as an error here
                await shared.put(relpath, f"{count}\n".encode())
            await asyncio.sleep(BEAT)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class Watch:
    """Another process's sign of life: its heartbeat (or anything) changing; silent() once it
    has not changed for `bound` seconds (0: never)."""

    def __init__(self, bound: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.bound = bound
        self.clock = clock
        self.value: object = None
        self.changed = clock()

    def see(self, value: object) -> None:
        if value != self.value:
            self.value, self.changed = value, self.clock()

    def silent(self) -> bool:
        return bool(self.bound) and self.clock() - self.changed > self.bound


def stopped(what: str, bound: float) -> DumpError:
    return DumpError(f"{what} for {bound:g} s (--stall-timeout): the sharded run stops")


# --- parts: the pieces one process writes ---------------------------------------------


class _PartAssembly(Assembly):
    """A part holds one piece: whatever the piece's number in its table, it is the part's only one."""

    async def add(self, piece: int, body: bytes | bytearray, rows: int) -> None:
        await super().add(0, body, rows)

    async def piece_done(self, piece: int) -> bool:
        return await super().piece_done(0)


class _PartFramer(Framer):
    """A piece's rows as the table file has them, but for the file's own beginning and end."""

    def header(self) -> bytes:
        return b""

    def footer(self) -> bytes:
        return b""


class Parts(TableFiles):
    """The pieces of one attempt this process reads: each into its part, then its record."""

    def __init__(self, settings: Settings, output: Output, folder: str, ids: dict[tuple[str, int], str]) -> None:
        super().__init__(settings, output, [])
        self.folder = folder
        self.ids = ids

    def _part(self, piece: Piece) -> str:
        return f"{self.folder}/{layout.part_name(self.ids[(piece.relpath, piece.index)])}"

    def assembly_for(self, piece: Piece, grouped: bool = False) -> Assembly:
        key = self._part(piece)
        if key not in self.open:
            self.open[key] = _PartAssembly(
                piece.table.qualified,
                self.output.open_table(key, exclusive=False),
                1,
                _PartFramer(self.settings.format),
                StoredWriter(self.settings.compression, self.settings.gzip_level),
                json_keys=json_keys(piece.table),
            )
        return self.open[key]

    async def finished(self, piece: Piece, assembly: Assembly) -> None:
        current_table.set(piece.table.qualified)
        await assembly.piece_done(0)
        await assembly.commit()
        key = self._part(piece)
        record = Record(
            rows=assembly.framer.rows,
            bytes=assembly.writer.bytes,
            sha256=assembly.writer.sha256,
            json_nulls=assembly.json_nulls,
        )
        await self.output.put(
            f"{self.folder}/{layout.record_name(self.ids[(piece.relpath, piece.index)])}",
            msgspec.json.encode(record),
            exclusive=False,
        )
        self.results[key] = TableEntry(
            schema=piece.table.schema,
            table=piece.table.name,
            path=key,
            rows=record.rows,
            bytes=record.bytes,
            sha256=record.sha256,
            columns=[],
        )
        del self.open[key]
        log.info("piece written", extra={"piece": piece.index, "of": piece.count, "rows": record.rows})


async def read_share(
    settings: Settings,
    password: db.PasswordProvider,
    shared: Shared,
    plan: Plan,
    work: list[tuple[Table, str]],
) -> None:
    """This process's share of the plan's items, but for the pieces already recorded (an earlier
    run of this index in the same attempt wrote them)."""
    items = from_plan(plan)
    ids = piece_ids(items)
    done = await shared.recorded(plan.attempt)
    mine = [
        item
        for item in share(items, plan.shards, settings.shard_index)
        if not all(ids[(p.relpath, p.index)] in done for p in item.members)
    ]
    folder = shared.folder(plan.attempt)
    await asyncio.to_thread(shared.output.make_folders, [f"{folder}/parts/x", f"{folder}/x"])
    if mine:
        await read_items(settings, password, work, plan.snapshot_id, mine, Parts(settings, shared.output, folder, ids))


# --- index 0: waiting for the pieces, joining them ----------------------------------------


async def wait_for_pieces(shared: Shared, plan: Plan, bound: float) -> dict[str, Record]:
    """Every piece's record, once all are written; DumpError when an index whose pieces are
    missing shows no sign of life (its heartbeat, a new record) for `bound` seconds."""
    items = from_plan(plan)
    ids = piece_ids(items)
    owner: dict[str, int] = {}
    for number, item in enumerate(items):
        for member in item.members:
            owner[ids[(member.relpath, member.index)]] = number % plan.shards
    watches = {index: Watch(bound) for index in range(1, plan.shards)}
    folder = shared.folder(plan.attempt)
    while True:
        done = await shared.recorded(plan.attempt)
        missing = {owner[p] for p in owner if p not in done}
        if not missing:
            break
        for index in missing:
            if index == 0:
                continue
            watch = watches[index]
            watch.see((await shared.read(f"{folder}/{layout.alive_name(index)}"), len(done)))
            if watch.silent():
                raise stopped(f"shard {index} wrote no piece and no heartbeat", bound)
        await asyncio.sleep(POLL)
    records = {}
    for name in owner:
        data = await shared.read(f"{folder}/{layout.record_name(name)}")
        assert data is not None
        records[name] = msgspec.json.decode(data, type=Record)
    return records


def _framing(fmt: str, compression: str, level: int) -> tuple[bytes, bytes, bytes, bytes]:
    """A joined file's header, separator between two pieces, footer, and an empty table's whole
    file: encode.Framer's, each stored as it is (gzip: a member of its own)."""
    parts = (b"[\n", b",\n", b"\n]\n", b"[\n]\n") if fmt == "json" else (b"", b"", b"", b"")

    def stored(data: bytes) -> bytes:
        if not data or compression != "gzip":
            return data
        writer = StoredWriter(compression, level)
        return bytes(writer.add(data)) + bytes(writer.finish())

    header, separator, footer, empty = map(stored, parts)
    return header, separator, footer, empty


async def join_table(
    settings: Settings,
    shared: Shared,
    folder: str,
    table: Table,
    relpath: str,
    pieces: list[tuple[str, Record]],
    started: float,
) -> TableEntry:
    """The table's file from its parts, in order (each checked against its record on the way)."""
    header, separator, footer, empty = _framing(settings.format, settings.compression, settings.gzip_level)
    out = shared.output.open_table(relpath)
    writer = StoredWriter("none")  # counts and hashes the stored bytes; the parts are compressed already
    rows = 0
    nulls: dict[str, list[list[int]]] = {}
    try:
        for piece, record in pieces:
            if not record.rows:
                continue
            await out.write(writer.add(separator if rows else header))
            await _copy_part(shared.output, f"{folder}/{layout.part_name(piece)}", record, out, writer)
            for column, runs in record.json_nulls.items():
                nulls.setdefault(column, []).extend([[first + rows, count] for first, count in runs])
            rows += record.rows
        await out.write(writer.add(footer if rows else empty))
        await out.commit()
    except BaseException:
        await out.discard()
        raise
    return TableEntry(
        schema=table.schema,
        table=table.name,
        path=relpath.partition("/")[2],
        rows=rows,
        bytes=writer.bytes,
        sha256=writer.sha256,
        columns=[
            Column(name=c.name, type=c.type, written=c.written, not_null=c.not_null, dimensions=c.dimensions)
            for c in table.columns
        ],
        seconds=round(time.monotonic() - started, 3),
        extension=table.extension,
        json_nulls=nulls,
    )


async def _copy_part(output: Output, relpath: str, record: Record, out: object, writer: StoredWriter) -> None:
    chunks = await asyncio.to_thread(output.chunks, relpath)
    if chunks is None:
        raise DumpError(f"the part {output.url_of(relpath)} is gone, its record is there")
    tally = Tally(chunks)
    parts = iter(tally)
    while (chunk := await asyncio.to_thread(next, parts, None)) is not None:
        await out.write(writer.add(chunk))  # type: ignore[attr-defined]
    if (tally.bytes, tally.sha256) != (record.bytes, record.sha256):
        raise DumpError(
            f"the part {output.url_of(relpath)} is not what its record says ({tally.bytes} bytes, sha256 "
            f"{tally.sha256}; the record: {record.bytes} bytes, sha256 {record.sha256})"
        )


# --- the two roles -------------------------------------------------------------------------


def alive_path(run: str) -> str:
    """Index 0's heartbeat: one for the whole run, so that a process waiting for a new attempt sees it."""
    return f"{run}/{layout.SHARDS}/{layout.alive_name(0)}"


async def coordinate(
    settings: Settings,
    password: db.PasswordProvider,
    shared: Shared,
    work: list[tuple[Table, str]],
    snapshot_id: str,
    items: list[Piece | Group],
    committed: list[str],
) -> list[TableEntry]:
    """Index 0's attempt, once the snapshot is taken: the plan, its share, the others' pieces, and
    each table's file joined from them (listed in `committed` as soon as it is written)."""
    started = time.monotonic()
    attempt = max(await asyncio.to_thread(shared.attempts), default=0) + 1
    folder = shared.folder(attempt)
    await asyncio.to_thread(shared.output.make_folders, [f"{folder}/x", f"{folder}/parts/x"])
    plan = to_plan(attempt, snapshot_id, settings, items)
    await shared.put(f"{folder}/{layout.PLAN_NAME}", msgspec.json.encode(plan))
    log.info("plan written", extra={"attempt": attempt, "shards": settings.shards, "pieces": len(piece_ids(items))})
    async with heartbeat(shared, f"{folder}/{layout.alive_name(0)}"):
        await read_share(settings, password, shared, plan, work)
        records = await wait_for_pieces(shared, plan, settings.stall_timeout)
    ids = piece_ids(items)
    by_file: dict[str, list[tuple[int, str]]] = {}
    for (relpath, index), piece in ids.items():
        by_file.setdefault(relpath, []).append((index, piece))
    entries = []
    for table, relpath in work:
        token = current_table.set(table.qualified)
        try:
            pieces = [(piece, records[piece]) for _, piece in sorted(by_file[relpath])]
            entry = await join_table(settings, shared, folder, table, relpath, pieces, started)
        finally:
            current_table.reset(token)
        committed.append(relpath)
        entries.append(entry)
        log.info("done", extra={"rows": entry.rows, "bytes": entry.bytes, "pieces": len(pieces)})
    return entries


async def run_worker(settings: Settings, password: db.PasswordProvider, output: Output) -> None:
    """An index other than 0: follow index 0's attempts, read this index's share of each, until the
    run's manifest is written (returns) or index 0 is silent for --stall-timeout (DumpError)."""
    shared = Shared(output, settings.run_id)
    coordinator = Watch(settings.stall_timeout)
    followed = 0
    while True:
        plan = await _next_plan(shared, coordinator, followed)
        if plan is None:
            return  # the run is complete
        followed = plan.attempt
        mine = following(settings, plan)
        log.info("following the plan", extra={"attempt": plan.attempt, "shard": settings.shard_index})
        tables = {p.relpath: p.table for pieces in plan.items for p in pieces}
        work = [(table, relpath) for relpath, table in tables.items()]
        async with heartbeat(shared, f"{shared.folder(plan.attempt)}/{layout.alive_name(settings.shard_index)}"):
            try:
                await read_share(mine, password, shared, plan, work)
            except SnapshotLost as exc:
                log.warning("this attempt's snapshot is gone: waiting for a new one", extra={"error": str(exc)})
                continue
            log.info("this shard's pieces are written", extra={"attempt": plan.attempt})
            if await _until_ended(shared, coordinator, plan.attempt):
                return


async def _index0(shared: Shared, coordinator: Watch) -> None:
    coordinator.see(await shared.read(alive_path(shared.run)))
    if coordinator.silent():
        raise stopped("shard 0 (the coordinator) wrote no heartbeat", coordinator.bound)


async def _next_plan(shared: Shared, coordinator: Watch, after: int) -> Plan | None:
    """The plan of an attempt newer than `after` (None: the run is complete)."""
    while True:
        if await shared.complete():
            return None
        newest = max(await asyncio.to_thread(shared.attempts), default=0)
        if newest > after and (plan := await shared.plan(newest)) is not None:
            return plan
        await _index0(shared, coordinator)
        await asyncio.sleep(POLL)


async def _until_ended(shared: Shared, coordinator: Watch, attempt: int) -> bool:
    """Wait until the run is complete (True) or a newer attempt has begun (False)."""
    while True:
        if await shared.complete():
            return True
        if max(await asyncio.to_thread(shared.attempts), default=0) > attempt:
            return False
        await _index0(shared, coordinator)
        await asyncio.sleep(POLL)
