"""A stored table file read back as batches of rows (JSON texts), for restore.

Pure: stored chunks in (as `stored.read_stats` takes them), rows out, with
the stored bytes counted and hashed on the way so that a file changed after
`verify` ran is still caught before its table is committed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Protocol

import orjson

from ..core.errors import VerifyError
from ..format.stored import CORRUPT, Tally, check_read, content
from . import parquet
from .manifest import Manifest, TableEntry

BATCH_BYTES = 4 << 20  # JSON per INSERT: round trips stay rare, memory stays a few MB
# JSON per block turned into COPY data (format/copytext.py): a block's decoded rows then fit in the
# CPU's caches and in the memory Python keeps between blocks. Measured on the bench's mixed table,
# CopyRows.convert: 4 MiB blocks 4.2 us/row (0.12 page faults a row: Python's arenas mapped and
# unmapped each block), 1 MiB 1.8, 256 KiB 1.5, 128 KiB 1.5.
BLOCK_BYTES = 256 << 10


class RowBatches:
    """Iterate over lists of row texts (each a JSON object, no separator),
    about BATCH_BYTES each. After the last batch, `check()` compares what was
    read with the manifest entry."""

    def __init__(
        self, chunks: Iterable[bytes], compression: str, fmt: str, name: str, batch_bytes: int = BATCH_BYTES
    ) -> None:
        self._tally = Tally(chunks)
        self._compression = compression
        self._array = fmt == "json"
        self._name = name
        self._batch_bytes = batch_bytes
        self.rows = 0

    def _content(self) -> Iterator[bytes]:
        try:
            yield from content(self._tally, self._compression)
        except CORRUPT as exc:
            raise VerifyError(f"{self._name}: not a valid gzip file: {exc}") from None

    def _lines(self) -> Iterator[bytes]:
        partial: list[bytes] = []  # pieces of a line not yet ended (a 96 MB row is many pieces)
        for piece in self._content():
            if b"\n" not in piece:
                if piece:
                    partial.append(piece)
                continue
            lines = piece.split(b"\n")
            if partial:
                lines[0] = b"".join([*partial, lines[0]])
                partial = []
            rest = lines.pop()
            if rest:
                partial.append(rest)
            yield from lines
        if partial:
            raise VerifyError(f"{self._name}: the file does not end with a newline (truncated?)")

    def _rows(self) -> Iterator[bytes]:
        lines = self._lines()
        if not self._array:
            yield from lines
            return
        # JSON array layout (encode.Framer): '[', 'row,' ..., 'row', ']'
        if next(lines, None) != b"[":
            raise VerifyError(f"{self._name}: not a JSON array file written by dumper")
        last = None
        for line in lines:
            if last is not None:
                yield last[:-1] if last.endswith(b",") else last
            last = line
        if last != b"]":
            raise VerifyError(f"{self._name}: the JSON array does not end with ']' (truncated?)")

    def __iter__(self) -> Iterator[list[bytes]]:
        batch: list[bytes] = []
        size = 0
        for row in self._rows():
            batch.append(row)
            size += len(row)
            self.rows += 1
            if size >= self._batch_bytes:
                yield batch
                batch, size = [], 0
        if batch:
            yield batch

    def check(self, rows: int, stored_bytes: int, sha256: str) -> None:
        """The file as read equals the manifest's entry (call after the last batch)."""
        check_read(self._tally, self.rows, self._name, rows, stored_bytes, sha256)


class TableRows(Protocol):
    """A table file's rows, a batch of row texts at a time (RowBatches; a Parquet file's:
    format/parquet/read.py), then check() against its manifest entry."""

    rows: int

    def __iter__(self) -> Iterator[list[bytes]]: ...

    def check(self, rows: int, stored_bytes: int, sha256: str) -> None: ...


def table_rows(
    manifest: Manifest, entry: TableEntry, chunks: Iterable[bytes], name: str, batch_bytes: int = BATCH_BYTES
) -> TableRows:
    """The rows of `entry`'s file (its stored chunks), read as the manifest's format says, in batches
    of about `batch_bytes` of JSON (a Parquet file's: of about parquet/read.py's BATCH_BYTES of Arrow data)."""
    if manifest.format != "parquet":
        return RowBatches(chunks, manifest.compression, manifest.format, name, batch_bytes)
    parquet.require("this dump (Parquet files)")
    from .parquet.read import ParquetRows  # pyarrow: for Parquet dumps only

    return ParquetRows(chunks, name, [c.name for c in entry.columns], entry.outside)


class RowBlocks:
    """A JSON Lines file as blocks of whole rows (each row with its newline), about BLOCK_BYTES
    each (a row larger than that is a block of its own), and their row counts: for a reader that
    takes many rows at once (a restore's COPY), no object per row. After the last block,
    `check()` as RowBatches'."""

    def __init__(self, chunks: Iterable[bytes], compression: str, name: str) -> None:
        self._tally = Tally(chunks)
        self._compression = compression
        self._name = name
        self.rows = 0

    def __iter__(self) -> Iterator[tuple[memoryview, int]]:
        held: list[bytes] = []
        size = 0
        try:
            for piece in content(self._tally, self._compression):
                held.append(piece)
                size += len(piece)
                if size >= BLOCK_BYTES and b"\n" in piece:
                    data = b"".join(held)
                    end = data.rindex(b"\n") + 1
                    held, size = [data[end:]], len(data) - end
                    yield from self._blocks(data, end)
        except CORRUPT as exc:
            raise VerifyError(f"{self._name}: not a valid gzip file: {exc}") from None
        data = b"".join(held)
        if data and not data.endswith(b"\n"):
            raise VerifyError(f"{self._name}: the file does not end with a newline (truncated?)")
        yield from self._blocks(data, len(data))

    def _blocks(self, data: bytes, end: int) -> Iterator[tuple[memoryview, int]]:
        """The rows of data[:end] (whole rows) in blocks of about BLOCK_BYTES, without copying them."""
        view = memoryview(data)
        start = 0
        while start < end:
            cut = data.find(b"\n", min(start + BLOCK_BYTES, end) - 1, end) + 1
            rows = data.count(b"\n", start, cut)
            self.rows += rows
            yield view[start:cut], rows
            start = cut

    def check(self, rows: int, stored_bytes: int, sha256: str) -> None:
        """The file as read equals the manifest's entry (call after the last block)."""
        check_read(self._tally, self.rows, self._name, rows, stored_bytes, sha256)


class _Joined:
    """Another format's row batches as blocks (row texts, each with its newline)."""

    def __init__(self, rows: TableRows) -> None:
        self._rows = rows

    @property
    def rows(self) -> int:
        return self._rows.rows

    def __iter__(self) -> Iterator[tuple[bytes, int]]:
        for batch in self._rows:
            yield b"\n".join([*batch, b""]), len(batch)

    def check(self, rows: int, stored_bytes: int, sha256: str) -> None:
        self._rows.check(rows, stored_bytes, sha256)


class TableBlocks(Protocol):
    @property
    def rows(self) -> int: ...

    def __iter__(self) -> Iterator[tuple[bytes | memoryview, int]]: ...

    def check(self, rows: int, stored_bytes: int, sha256: str) -> None: ...


def table_blocks(manifest: Manifest, entry: TableEntry, chunks: Iterable[bytes], name: str) -> TableBlocks:
    """The rows of `entry`'s file as blocks of row texts (JSON Lines read as they are stored)."""
    if manifest.format == "jsonl":
        return RowBlocks(chunks, manifest.compression, name)
    return _Joined(table_rows(manifest, entry, chunks, name, BLOCK_BYTES))


def json_array(rows: list[bytes]) -> bytes:
    """One batch as the JSON array text the server parses."""
    return b"[" + b",".join(rows) + b"]"


# --- rows that hold a NUL escape ------------------------------------------------
# The server de-escapes every string of a document it takes apart, and text
# cannot hold U+0000: a json value containing "\u0000" (valid JSON, kept as is by
# the json type) cannot pass through json_populate_recordset. Such a row is split
# here and its json values sent to the server untouched (see restore).

_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{},:]', re.DOTALL)
_NUL_ESCAPE = re.compile(rb"(?:^|[^\\])(?:\\\\)*\\u0000")


def may_hold_nul(row: bytes) -> bool:
    return b"\\u0000" in row


def holds_nul(value: bytes) -> bool:
    """Whether JSON text has a \\u0000 escape (not an escaped backslash before 'u0000')."""
    return _NUL_ESCAPE.search(value) is not None


def split_object(row: bytes) -> list[tuple[bytes, str, bytes]]:
    """A row's members as (raw key, key, raw value), in order."""
    members = []
    tokens = _TOKEN.finditer(row, 1)
    for key_token in tokens:
        if key_token.group() == b"}":
            break
        raw_key = key_token.group()
        colon = next(tokens)
        start, depth = colon.end(), 0
        for token in tokens:
            text = token.group()
            if text in (b"{", b"["):
                depth += 1
            elif text in (b"]", b"}") and depth:
                depth -= 1
            elif depth == 0 and text in (b",", b"}"):
                members.append((raw_key, orjson.loads(raw_key), row[start : token.start()]))
                break
        else:
            raise ValueError("not a complete JSON object")
        if text == b"}":
            break
    return members


def join_object(members: list[tuple[bytes, str, bytes]]) -> bytes:
    return b"{" + b",".join(raw_key + b":" + value for raw_key, _, value in members) + b"}"
