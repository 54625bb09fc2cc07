"""One table file, written in order while its pieces are read concurrently.

A large table is read as several page ranges ("pieces") on several
connections of the same snapshot. The file must still be one stream, in the
order a single scan would give. The piece at the head of the file writes
straight through; the others hold their batches here until they become the
head, and wait when more than HELD_BYTES are held, so memory stays bounded.
The head never waits, so the table always makes progress.

Storing (gzip, sha256, the write or upload) runs in a worker thread, one batch
at a time, while the next batch is fetched and encoded: zlib, hashlib and file
writes release the GIL, so on two cores compression costs little wall time.
A small batch (a small table's rows) is stored on the event loop instead: the
hand-off to a thread would cost more than the work.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping

from ..format.encode import JSON_NULL_MARK, TableFraming
from ..format.stored import StoredWriter
from ..storage.output import TableFile

HELD_BYTES = 32 << 20  # JSON held for pieces that are not yet at the head of the file
BIG_BATCH = 16 << 20  # a batch this large is stored before the next one is fetched
SMALL_BATCH = 64 << 10  # a batch this small is hashed (and compressed) on the event loop
PROGRESS_EVERY = 10.0  # seconds between progress lines for a running table
_MARK = JSON_NULL_MARK.encode()


class Assembly:
    """Batches from pieces 0..count-1 into one TableFile, in piece order."""

    def __init__(
        self,
        name: str,
        out: TableFile,
        count: int,
        framer: TableFraming,
        writer: StoredWriter,
        clock: Callable[[], float] = time.monotonic,
        json_keys: Mapping[bytes, str] | None = None,
    ) -> None:
        self.name = name  # schema.table, for progress lines
        # The encoded key ('"name":') of each json/jsonb column, and the rows whose value is
        # JSON null (ranges [first row, count] per column, for the manifest).
        self.json_keys = dict(json_keys or {})
        self.json_nulls: dict[str, list[list[int]]] = {}
        self.out = out
        self.count = count
        self.framer = framer
        self.writer = writer
        self.started = self.last_data = self.last_report = clock()
        self.rows_received = 0  # rows of all pieces, written or held
        self._clock = clock
        self._head = 0  # the piece whose batches go straight to the file
        self._held: dict[int, list[tuple[bytes | bytearray, int]]] = {}
        self._held_bytes = 0
        self._finished: set[int] = set()
        self._wrote_header = False
        self._turn = asyncio.Condition()
        self._storing: asyncio.Future[None] | None = None  # the one batch being stored

    async def add(self, piece: int, body: bytes | bytearray, rows: int) -> None:
        """A batch of piece `piece` (a Framer.join() of `rows` rows)."""
        self.last_data = self._clock()
        self.rows_received += rows
        async with self._turn:
            await self._turn.wait_for(lambda: piece == self._head or self._held_bytes < HELD_BYTES)
            if piece == self._head:
                await self._write(body, rows)
            else:
                self._held.setdefault(piece, []).append((body, rows))
                self._held_bytes += len(body)

    def outside(self) -> dict[str, list[list[int | str]]]:
        """A Parquet file's values outside its columns' types: column -> [file row, text] pairs."""
        found: dict[str, list[list[int | str]]] = getattr(self.framer, "outside", {})
        return found

    async def piece_done(self, piece: int) -> bool:
        """Marks a piece complete; True once every piece is in the file."""
        async with self._turn:
            self._finished.add(piece)
            while self._head in self._finished:
                self._head += 1
                for body, rows in self._held.pop(self._head, []):
                    self._held_bytes -= len(body)
                    await self._write(body, rows)
            self._turn.notify_all()
            return self._head == self.count

    async def commit(self) -> None:
        """Footer, gzip trailer, then the file becomes visible."""
        await self._write(b"", 0)  # the header, for an empty table
        await self._stored()
        if self.framer.encodes:  # Parquet's last row group and footer: encoded off the loop
            footer = await asyncio.to_thread(lambda: self.writer.add(self.framer.footer()))
        else:
            footer = self.writer.add(self.framer.footer())
        await self.out.write(footer + self.writer.finish())
        await self.out.commit()

    async def abandon(self) -> None:
        """Drop the file; never raises (another error is on its way out)."""
        if self._storing is not None:
            self._storing.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait([self._storing])
                self._storing.exception()  # retrieved: not reported again at exit
        await self.out.discard()

    async def _write(self, body: bytes | bytearray, rows: int) -> None:
        if self.json_keys and rows and _MARK in body:  # a JSON null of a json column (rare: one C-level search)
            body = self._json_nulls(body, self.framer.rows)
        if self.framer.encodes:  # Parquet: the body becomes file bytes in the storing thread
            self.framer.separator(rows)
            if rows:
                await self._stored()
                self._storing = asyncio.ensure_future(self._store_encoded(body))
            return
        # Header and separator go out as their own small part: a batch (one
        # huge row, perhaps) is never copied to put two bytes in front of it.
        head = b"" if self._wrote_header else self.framer.header()
        self._wrote_header = True
        parts = [part for part in (head + self.framer.separator(rows), body if rows else b"") if part]
        if parts:
            await self._stored()  # in order, and one batch in flight at most
            if sum(map(len, parts)) <= SMALL_BATCH:  # cheaper here than a thread hand-off
                for part in parts:
                    await self.out.write(self.writer.add(part))
                return
            self._storing = asyncio.ensure_future(self._store(parts))
            if len(body) >= BIG_BATCH:  # huge rows: never hold two such batches at once
                await self._stored()

    def _json_nulls(self, body: bytes | bytearray, first_row: int) -> bytes | bytearray:
        """Records the rows of the batch whose json values are JSON null (marked by the
        encoder), and returns the batch without the marks: the file says `null`."""
        at = body.find(_MARK)
        row, counted = first_row, 0
        while at >= 0:
            row += body.count(b"\n", counted, at)
            counted = at
            column = self._column_before(body, at)
            runs = self.json_nulls.setdefault(column, [])
            if runs and runs[-1][0] + runs[-1][1] == row:  # rows come in order: the last run goes on
                runs[-1][1] += 1
            else:
                runs.append([row, 1])
            at = body.find(_MARK, at + 1)
        return body.replace(_MARK, b"")

    def _column_before(self, body: bytes | bytearray, at: int) -> str:
        """The json column whose value starts at `at`: its key ends there, and starts the
        member (after '{' or ','; a key that merely ends the same way starts inside another)."""
        for key, column in self.json_keys.items():
            start = at - len(key)
            if start > 0 and body.startswith(key, start) and body[start - 1 : start] in (b"{", b","):
                return column
        raise AssertionError(f"{self.name}: a JSON null mark after no json column's key")

    async def _stored(self) -> None:
        """Waits for the batch in flight; raises its error, if it failed."""
        if self._storing is not None:
            storing, self._storing = self._storing, None
            await storing

    async def _store(self, parts: list[bytes | bytearray]) -> None:
        for stored in await asyncio.to_thread(lambda: [self.writer.add(part) for part in parts]):
            await self.out.write(stored)

    async def _store_encoded(self, body: bytes | bytearray) -> None:
        stored = await asyncio.to_thread(lambda: self.writer.add(self.framer.encode(body)))
        if stored:
            await self.out.write(stored)
