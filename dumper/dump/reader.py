"""Reading pieces of tables: one connection in the run's snapshot, batches
sized by bytes, and a lost connection read again where it stopped.

Used the same way in the dumper process and in its worker processes
(workers.py): only where the batches go (a table's Assembly, or a socket to
the parent) differs.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Protocol

from ..core.errors import ConnectionLost
from ..core.retry import failing_with, retrying
from ..core.settings import Settings
from ..format.encode import LARGE_ROW, RowEncoder
from ..postgres import db, locks, snapshot
from ..postgres.catalog import Table

BATCH_BYTES = 4 << 20  # aim for ~4 MB of JSON per fetch: bounds memory for wide rows
JSON_PER_DISK_BYTE = 2  # bytea doubles in hex; TOAST-compressed text grows back
MAX_INLINE_ROW = 8160  # bytes: a heap row that is not TOASTed fits in one 8 kB page
TABLE_ATTEMPTS = 3  # a piece whose connection dies is read again, in the same snapshot


@dataclass(frozen=True)
class Piece:
    """Part `index` of a table's `count` parts: pages [first_page, end_page). With `lock`,
    the reader locks the table while it reads the piece (locks.WHILE_READ)."""

    table: Table
    relpath: str
    index: int
    count: int
    first_page: int | None
    end_page: int | None
    lock: bool = False

    @property
    def members(self) -> tuple[Piece, ...]:
        """The pieces a read covers: this one (a Group's are several)."""
        return (self,)


@dataclass(frozen=True)
class Group:
    """Small tables whose rows read alike (Table.row_type), read by one query: a UNION ALL
    whose rows start with the member's number. A table costs a query's round trips
    (prepare, fetch, its lock) otherwise, and a catalog of thousands of small tables
    is mostly that. Each member is a whole-table piece with its own file; the batches
    go to the sink under the member's number."""

    members: tuple[Piece, ...]
    lock: bool = False

    @property
    def name(self) -> str:
        """How errors name the tables read together."""
        return locks.called(self.named())

    def named(self) -> list[locks.Named]:
        return [(p.table.oid, p.table.relation_sql(), p.table.qualified) for p in self.members]

    def select_sql(self) -> str:
        # UNION ALL is an Append in member order: each member's rows come together, in a
        # single scan's order (cursors never run parallel plans).
        return " UNION ALL ".join(p.table.select_sql(tag=k) for k, p in enumerate(self.members))


def plan_pieces(table: Table, relpath: str, piece_pages: int, lock: bool = False) -> list[Piece]:
    """One piece per `piece_pages` pages (0: the whole table in one piece).

    The first and last pieces are open-ended, so pages the size estimate
    missed are still read.
    """
    if piece_pages <= 0 or table.partitioned or table.extension or table.pages <= piece_pages:
        return [Piece(table, relpath, 0, 1, None, None, lock)]
    starts = list(range(0, table.pages, piece_pages))
    return [
        Piece(table, relpath, i, len(starts), start or None, starts[i + 1] if i + 1 < len(starts) else None, lock)
        for i, start in enumerate(starts)
    ]


class Sink(Protocol):
    """Where a piece's batches go, in order: Assembly.add, or a worker's socket."""

    async def add(self, piece: int, body: bytes | bytearray, rows: int) -> None: ...


class Lane(Protocol):
    """One connection's worth of reading: a Reader here, or one in a worker process."""

    async def read(self, piece: Piece | Group, sink: Sink) -> None: ...

    def abort(self) -> None: ...

    async def close(self) -> None: ...


@dataclass
class _Batcher:
    """Rows per fetch, so that a batch holds about BATCH_BYTES of JSON.

    The first fetch is one row when the table has out-of-line (TOAST) values,
    whose size nothing in the catalog tells (compressed on disk, 48 MB in
    JSON), and otherwise sized from the table's average row on disk. Later
    fetches follow the rows seen; once a large row was seen, the largest one,
    so a table of huge documents is read one row at a time.
    """

    max_rows: int
    disk_row_bytes: float  # the table's average row (0: unknown, or values out of line)
    rows: int = 1
    largest: int = 0

    def __post_init__(self) -> None:
        self.rows = self._fit(self.disk_row_bytes * JSON_PER_DISK_BYTE) if self.disk_row_bytes else 1

    @classmethod
    def for_tables(cls, tables: Sequence[Table], max_rows: int) -> _Batcher:
        """Sized for the widest rows of `tables` (one table, or a group's)."""
        if any(t.toast_bytes for t in tables):
            return cls(max_rows, 0.0)
        # Without TOAST data no row is larger than a page, whatever the statistics say.
        return cls(max_rows, max(t.row_bytes() or MAX_INLINE_ROW for t in tables))

    def _fit(self, row_bytes: float) -> int:
        return max(1, min(self.max_rows, int(BATCH_BYTES // max(row_bytes, 1.0))))

    def size(self) -> int:
        return self.rows

    def seen(self, rows: int, nbytes: int, largest: int) -> None:
        self.largest = max(self.largest, largest)
        self.rows = self._fit(self.largest if self.largest >= LARGE_ROW else nbytes / max(1, rows))


class Encoder(Protocol):
    """A table's records to the bytes its file is made of (format.encode.RowEncoder: JSON; a
    Parquet file's Arrow batches: format/parquet/arrow.py)."""

    def encode(self, records: Sequence[Sequence[Any]]) -> bytes: ...

    def largest(self, body: bytes | bytearray, rows: int) -> int: ...


def encoder_for(table: Table, fmt: str) -> Encoder:
    if fmt == "parquet":
        from ..format.parquet.arrow import BatchEncoder  # pyarrow: loaded by Parquet runs only

        return BatchEncoder(table.parquet_columns())
    return RowEncoder([c.name for c in table.columns], fmt == "json", table.arrays)


@dataclass
class _Delivered:
    """A piece's progress, kept across its attempts."""

    batcher: _Batcher
    rows: int = 0  # rows already handed to the sink (skipped when read again)


async def _read_piece(conn: Any, piece: Piece, sink: Sink, settings: Settings, delivered: _Delivered) -> None:
    """Streams one piece into `sink`.

    Rows an earlier attempt delivered are dropped: a scan of the same pages in
    the same snapshot returns the same rows in the same order (seqscans are not
    synchronized, cursors never run parallel plans).
    """
    encoder = encoder_for(piece.table, settings.format)
    batcher = delivered.batcher  # a retry skips the delivered rows at the size already learned
    skip = delivered.rows
    async for batch in snapshot.stream(
        conn,
        piece.table.select_sql(piece.first_page, piece.end_page),
        piece.table.qualified,
        batcher.size,
        settings.stall_timeout,
    ):
        records = batch[skip:] if skip else batch
        skip = max(0, skip - len(batch))
        if records:
            count = len(records)
            body = encoder.encode(records)
            batch.clear()  # huge rows: the decoded values go before the file write (the stream holds `batch`)
            records = []
            size = len(body)
            # Only a batch this large can hold a large row; one row is its own size.
            largest = encoder.largest(body, count)
            await sink.add(piece.index, body, count)
            del body  # not alive during the next fetch
            delivered.rows += count
            batcher.seen(count, size, largest)


async def _read_group(conn: Any, group: Group, sink: Sink, settings: Settings, delivered: _Delivered) -> None:
    """Streams a group's rows into `sink`, each run of one member's rows under its number
    (skipping what an earlier attempt delivered, as _read_piece does)."""
    encoders = [encoder_for(p.table, settings.format) for p in group.members]
    batcher = delivered.batcher
    skip = delivered.rows
    async for batch in snapshot.stream(conn, group.select_sql(), group.name, batcher.size, settings.stall_timeout):
        records = batch[skip:] if skip else batch
        skip = max(0, skip - len(batch))
        size = largest = 0
        for member, run in itertools.groupby(records, key=itemgetter(0)):
            rows = [record[1:] for record in run]
            body = encoders[member].encode(rows)
            size += len(body)
            largest = max(largest, encoders[member].largest(body, len(rows)))
            await sink.add(member, body, len(rows))
            delivered.rows += len(rows)
        if records:
            batcher.seen(len(records), size, largest)
        batch.clear()
        del records


class Reader:
    """One connection in the run's snapshot, opened when first needed.

    After any failure the connection is terminated, never reused, so no
    half-finished protocol state can leak into a retry.
    """

    def __init__(self, settings: Settings, password: db.PasswordProvider, snapshot_id: str) -> None:
        self.settings = settings
        self.password = password
        self.snapshot_id = snapshot_id
        self.conn: Any = None

    async def _joined(self) -> Any:
        """A new connection in the run's snapshot (ConnectionLost / SnapshotLost if not)."""
        return await db.connect(
            self.settings,
            self.password,
            codecs=True,
            then=functools.partial(snapshot.import_snapshot, snapshot_id=self.snapshot_id, settings=self.settings),
        )

    async def read(self, piece: Piece | Group, sink: Sink) -> None:
        """Every row of `piece` (or of a group's tables) into `sink`; a lost connection
        is replaced and the piece read on from where it stopped (TABLE_ATTEMPTS in all)."""
        tables = [p.table for p in piece.members]
        delivered = _Delivered(_Batcher.for_tables(tables, self.settings.batch_rows))
        named = [(t.oid, t.relation_sql(), t.qualified) for t in tables]

        async def attempt() -> None:
            self.conn = self.conn or await self._joined()
            try:
                async with locks.reading(self.conn, named, self.settings, lock=piece.lock):
                    if isinstance(piece, Group):
                        await _read_group(self.conn, piece, sink, self.settings, delivered)
                    else:
                        await _read_piece(self.conn, piece, sink, self.settings, delivered)
            except ConnectionLost:
                self.abort()
                raise

        await retrying(
            attempt,
            attempts=TABLE_ATTEMPTS,
            heals=failing_with(ConnectionLost),
            say="connection lost; reading the rest again in the same snapshot",
        )

    def abort(self) -> None:
        """Drop the connection at once: it may be mid-fetch, and closing politely
        could wait on a stalled server."""
        if self.conn is not None:
            self.conn.terminate()
            self.conn = None

    async def close(self) -> None:
        """End the session (read-only: ending it ends its transaction)."""
        if self.conn is not None:
            conn, self.conn = self.conn, None
            await db.close(conn)
