"""A table's Parquet file, written in the dumper process from the batches the readers send
(Arrow IPC messages of arrow.batch_schema), in file order (the table's Assembly decides it).

Batches are held until they make a row group (ROW_GROUP_ROWS rows or ROW_GROUP_BYTES of Arrow
data, whichever comes first), which is then encoded and compressed by pyarrow (outside the
GIL, in the Assembly's storing thread) into bytes for the file. Arrow allocates from the
system's malloc (tuned by core/malloc.py), which gives freed memory back as the JSON path's
buffers are: its own jemalloc pool kept ~40 MB more for the same dump. The values outside the file's
types are recorded with their row in the file, for the manifest (TableEntry.outside).
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from . import mapping as m
from .arrow import OUTSIDE, ROWS_KEY, batch_schema, file_schema, outside_of

pa.set_memory_pool(pa.system_memory_pool())

ROW_GROUP_ROWS = 1 << 20
ROW_GROUP_BYTES = 16 << 20  # Arrow data held for the row group being gathered
CODECS = {"none": "none", "gzip": "gzip", "zstd": "zstd", "snappy": "snappy"}  # --compression -> Parquet's


class _Collected:
    """The file-like pyarrow writes into: the bytes written since the last take()."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.closed = False
        self.position = 0

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        self.position += len(data)
        return len(data)

    def tell(self) -> int:
        return self.position

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def take(self) -> bytes:
        data = b"".join(self.parts)
        self.parts = []
        return data


class ParquetFramer:
    """In an Assembly, in place of encode.Framer: counts rows, and turns each batch's IPC
    message into file bytes (encode, called in order, off the event loop)."""

    array = False
    encodes = True  # the Assembly hands each batch to encode() in its storing thread

    def __init__(self, columns: Sequence[tuple[str, str, m.Typed]], compression: str) -> None:
        self.names = [name for name, _, _ in columns]
        self.rows = 0
        self.outside: dict[str, list[list[int | str]]] = {}  # column -> [file row, text] pairs
        self._ipc_schema = batch_schema(columns)
        self._schema = file_schema(columns)
        self._codec = CODECS[compression]
        self._sink = _Collected()
        self._writer: pq.ParquetWriter | None = None
        self._held: list[pa.RecordBatch] = []
        self._held_rows = 0
        self._held_bytes = 0
        self._written_rows = 0  # rows already given to encode() (the file row of the next one)

    def header(self) -> bytes:
        return b""

    def separator(self, rows: int) -> bytes:
        self.rows += rows
        return b""

    def encode(self, body: bytes | bytearray) -> bytes:
        """The bytes to store for this body (one or more IPC messages): usually nothing, or a
        row group once enough is held."""
        reader = pa.BufferReader(body)
        while reader.tell() < reader.size():
            message = pa.ipc.read_message(reader)
            batch = pa.ipc.read_record_batch(message, self._ipc_schema)
            for row, column, text in outside_of(batch):
                self.outside.setdefault(self.names[column], []).append([self._written_rows + row, text])
            self._written_rows += batch.num_rows
            batch = batch.drop_columns([OUTSIDE])
            self._held.append(batch)
            self._held_rows += batch.num_rows
            self._held_bytes += batch.nbytes
        if self._held_rows >= ROW_GROUP_ROWS or self._held_bytes >= ROW_GROUP_BYTES:
            self._row_group()
        return self._sink.take()

    def footer(self) -> bytes:
        """The last row group and the file's footer (an empty table: a file of no row group)."""
        if not self.names:  # Parquet counts a table's rows in its columns: none here, so the footer says them
            self._held = []
            self._schema = self._schema.with_metadata({ROWS_KEY: str(self.rows).encode()})
        self._row_group()
        self._opened().close()
        return self._sink.take()

    def _opened(self) -> pq.ParquetWriter:
        if self._writer is None:
            self._writer = pq.ParquetWriter(self._sink, self._schema, compression=self._codec)
        return self._writer

    def _row_group(self) -> None:
        if not self._held:
            return
        table = pa.Table.from_batches(self._held)
        self._held, self._held_rows, self._held_bytes = [], 0, 0
        table = pa.Table.from_arrays(table.columns, schema=self._schema)  # with the fields' metadata
        self._opened().write_table(table, row_group_size=ROW_GROUP_ROWS)
