"""The pieces of a sharded run: each written by the index it belongs to as a part and a record,
and joined by index 0 into the table's file, in order, each part checked against its record."""

from __future__ import annotations

import asyncio

import msgspec

from ...core.errors import DumpError
from ...core.logs import current_table, log
from ...core.settings import Settings
from ...format import layout
from ...format.encode import Framer
from ...format.manifest import TableEntry
from ...format.stored import StoredWriter, Tally
from ...postgres import db
from ...postgres.catalog import Table
from ...storage.output import Output
from ..assemble import Assembly
from ..reader import Group, Piece
from ..tables import TableFiles, json_keys, read_items, table_entry
from .plan import Plan, Record, from_plan, piece_ids, reader_of, share
from .state import POLL, Shared, Watch, stopped


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


async def unread(shared: Shared, plan: Plan, index: int) -> list[Piece | Group]:
    """The index's share of the plan's items, but for those whose pieces are all recorded (an
    earlier run of this index in the same attempt wrote them)."""
    items = from_plan(plan)
    ids = piece_ids(items)
    done = await shared.recorded(plan.attempt)
    return [
        item
        for item in share(items, plan.shards, index)
        if not all(ids[(p.relpath, p.index)] in done for p in item.members)
    ]


async def read_share(
    settings: Settings,
    password: db.PasswordProvider,
    shared: Shared,
    plan: Plan,
    work: list[tuple[Table, str]],
    mine: list[Piece | Group],
) -> None:
    """`mine` (unread()'s) read in the plan's snapshot, each piece into its part, then its record."""
    if mine:
        parts = Parts(settings, shared.output, shared.folder(plan.attempt), piece_ids(from_plan(plan)))
        await read_items(settings, password, work, plan.snapshot_id, mine, parts)


async def wait_for_pieces(shared: Shared, plan: Plan, bound: float) -> dict[str, Record]:
    """Every piece's record, once all are written; DumpError when an index whose pieces are
    missing shows no sign of life (its heartbeat, a new record) for `bound` seconds."""
    items = from_plan(plan)
    ids = piece_ids(items)
    owner: dict[str, int] = {}
    for number, item in enumerate(items):
        for member in item.members:
            owner[ids[(member.relpath, member.index)]] = reader_of(number, plan.shards)
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
    return table_entry(
        table, relpath, rows=rows, size=writer.bytes, sha256=writer.sha256, started=started, json_nulls=nulls
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
