"""Rows read from PostgreSQL as Arrow record batches (in the worker processes), sent to the
dumper process as Arrow IPC messages, which writes them into the table's Parquet file (write.py).

Each column is converted a whole batch at a time (pyarrow and numpy in C): the values arrive
in the form mapping.py chose (asyncpg's binary codecs, the raw bytes of dates and times, the
text of numeric, json and every other type). A value the column's type cannot hold goes into
the batch's last column, OUTSIDE: per row, the JSON list [[column, text], ...] of such values
(NULL when none, nearly always); the dumper process moves them into the manifest.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import mapping as m
from .values import (
    EPOCH_DAYS,
    EPOCH_US,
    FILE_DATE_INFINITY,
    FILE_TIMESTAMP_INFINITY,
    LAST_FITTING_US,
    PG_DATE_INFINITY,
    PG_DATE_MINUS_INFINITY,
    PG_TIMESTAMP_INFINITY,
    PG_TIMESTAMP_MINUS_INFINITY,
    pg_timestamp_text,
)

pa.set_memory_pool(pa.system_memory_pool())  # as write.py says
OUTSIDE = "\x00outside"  # the batch's last column (never a PostgreSQL column name: no NUL there)
TYPE_KEY = b"postgresql.type"  # field metadata: the column's type, as the manifest spells it
ROWS_KEY = b"postgresql.rows"  # the file's metadata, for a table of no columns: its rows (Parquet counts none)

_SCALARS: dict[str, pa.DataType] = {
    m.BOOL: pa.bool_(),
    m.INT16: pa.int16(),
    m.INT32: pa.int32(),
    m.INT64: pa.int64(),
    m.FLOAT32: pa.float32(),
    m.FLOAT64: pa.float64(),
    m.STRING: pa.string(),
    m.BINARY: pa.binary(),
    m.DATE: pa.date32(),
    m.TIMESTAMP: pa.timestamp("us"),
    m.TIMESTAMPTZ: pa.timestamp("us", tz="UTC"),
    m.TIME: pa.time64("us"),
    m.JSON: pa.string(),
    m.TEXT: pa.string(),
}


def arrow_type(typed: m.Typed) -> pa.DataType:
    kind = pa.decimal128(typed.precision, typed.scale) if typed.kind == m.DECIMAL else _SCALARS[typed.kind]
    for _ in range(typed.depth):
        kind = pa.list_(kind)
    return kind


def file_schema(columns: Sequence[tuple[str, str, m.Typed]]) -> pa.Schema:
    """The Parquet file's schema: (name, PostgreSQL type, typed) per column, the type in the field's metadata."""
    return pa.schema(
        [pa.field(name, arrow_type(typed), metadata={TYPE_KEY: pg.encode()}) for name, pg, typed in columns]
    )


def batch_schema(columns: Sequence[tuple[str, str, m.Typed]]) -> pa.Schema:
    """What the worker sends: the file's columns, then OUTSIDE."""
    return file_schema(columns).append(pa.field(OUTSIDE, pa.string()))


# --- one column of a batch ------------------------------------------------------------

Outside = list[tuple[int, int, str]]  # (row in the batch, column, text)


def _big_endian(values: Sequence[Any], size: int) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any] | None]:
    """Raw binary values of one width (None for NULL) as signed integers, and the NULL mask."""
    nulls = None
    if None in values:
        nulls = np.fromiter((v is None for v in values), dtype=bool, count=len(values))
        zero = bytes(size)
        values = [zero if v is None else v for v in values]
    return np.frombuffer(b"".join(values), dtype=f">i{size}").astype(f"<i{size}"), nulls


def _dates(values: Sequence[Any], _: m.Typed, column: int, outside: Outside) -> pa.Array:
    days, nulls = _big_endian(values, 4)
    top, bottom = days == PG_DATE_INFINITY, days == PG_DATE_MINUS_INFINITY
    shifted = np.where(top | bottom, 0, days) + np.int32(EPOCH_DAYS)  # every finite date fits (5874897 AD)
    shifted = np.where(top, FILE_DATE_INFINITY, np.where(bottom, -FILE_DATE_INFINITY, shifted)).astype(np.int32)
    return pa.array(shifted, pa.int32(), mask=nulls).view(pa.date32())


def _timestamps(values: Sequence[Any], typed: m.Typed, column: int, outside: Outside) -> pa.Array:
    us, nulls = _big_endian(values, 8)
    top, bottom = us == PG_TIMESTAMP_INFINITY, us == PG_TIMESTAMP_MINUS_INFINITY
    over = (us > LAST_FITTING_US) & ~top
    if over.any():
        zone = typed.kind == m.TIMESTAMPTZ
        outside += [(int(i), column, pg_timestamp_text(int(us[i]), zone)) for i in np.flatnonzero(over)]
        nulls = over if nulls is None else nulls | over
    finite = np.where(top | bottom | over, 0, us) + np.int64(EPOCH_US)
    shifted = np.where(top, FILE_TIMESTAMP_INFINITY, np.where(bottom, -FILE_TIMESTAMP_INFINITY, finite))
    return pa.array(shifted.astype(np.int64), pa.int64(), mask=nulls).view(arrow_type(typed))


def _times(values: Sequence[Any], typed: m.Typed, column: int, outside: Outside) -> pa.Array:
    us, nulls = _big_endian(values, 8)
    return pa.array(us, pa.int64(), mask=nulls).view(pa.time64("us"))


def _decimals(values: Sequence[Any], typed: m.Typed, column: int, outside: Outside) -> pa.Array:
    """numeric text into decimal128(p,s); a NaN (the one value such a column holds that
    decimal128 cannot) is outside."""
    if "NaN" in values:
        outside += [(i, column, "NaN") for i, v in enumerate(values) if v == "NaN"]
        values = [None if v == "NaN" else v for v in values]
    return pa.array(values, pa.string()).cast(arrow_type(typed))


def _plain(values: Sequence[Any], typed: m.Typed, column: int, outside: Outside) -> pa.Array:
    return pa.array(values, arrow_type(typed))


_CONVERT: dict[str, Callable[[Sequence[Any], m.Typed, int, Outside], pa.Array]] = {
    m.DATE: _dates,
    m.TIMESTAMP: _timestamps,
    m.TIMESTAMPTZ: _timestamps,
    m.TIME: _times,
    m.DECIMAL: _decimals,
}


class BatchEncoder:
    """One table's records (the columns, then one value per array column: its text when the
    file's list cannot hold it, else None) as Arrow IPC messages of batch_schema()."""

    def __init__(self, columns: Sequence[tuple[str, str, m.Typed]]) -> None:
        self.columns = [typed for _, _, typed in columns]
        self.schema = batch_schema(columns)
        self.lists = [i for i, typed in enumerate(self.columns) if typed.depth]
        self.last_largest = 0

    def batch(self, records: Sequence[Sequence[Any]]) -> pa.RecordBatch:
        width = len(self.columns)
        values = list(zip(*records, strict=True)) if records else [() for _ in range(width + len(self.lists))]
        outside: Outside = []
        for extra, column in enumerate(self.lists):  # lists the file cannot hold: their text instead
            texts = values[width + extra]
            if any(texts):
                held = list(values[column])
                for row, text in enumerate(texts):
                    if text is not None:
                        outside.append((row, column, text))
                        held[row] = None
                values[column] = tuple(held)
        arrays = [
            _CONVERT.get(typed.kind if not typed.depth else "", _plain)(values[i], typed, i, outside)
            for i, typed in enumerate(self.columns)
        ]
        arrays.append(pa.array(_outside_column(outside, len(records)), pa.string()))
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)

    def encode(self, records: Sequence[Sequence[Any]]) -> bytes:
        batch = self.batch(records)
        self.last_largest = _largest_row(batch)
        body: bytes = batch.serialize().to_pybytes()
        return body

    def largest(self, body: bytes | bytearray, rows: int) -> int:
        """An upper bound of the largest row of the last batch encoded (for the fetch size)."""
        return len(body) if rows == 1 else self.last_largest


def _outside_column(outside: Outside, rows: int) -> list[str | None]:
    column: list[str | None] = [None] * rows
    if outside:
        by_row: dict[int, list[tuple[int, str]]] = {}
        for row, index, text in outside:
            by_row.setdefault(row, []).append((index, text))
        for row, found in by_row.items():
            column[row] = msgspec.json.encode(sorted(found)).decode()
    return column


def _largest_row(batch: pa.RecordBatch) -> int:
    """Bytes of the widest variable-width values, summed over columns, plus the fixed widths:
    no row of the batch is larger."""
    total = 0
    for array in batch.columns:
        while pa.types.is_list(array.type):
            total += 8 * (int(pc.max(pc.list_value_length(array)).as_py() or 0) + 1)
            array = array.flatten()
        if pa.types.is_string(array.type) or pa.types.is_binary(array.type):
            total += int(pc.max(pc.binary_length(array)).as_py() or 0) + 4
        else:
            total += 16
    return total


def outside_of(batch: pa.RecordBatch) -> list[tuple[int, int, str]]:
    """The (row in the batch, column, text) of the values outside the file's types."""
    column = batch.column(batch.num_columns - 1)
    if column.null_count == len(column):
        return []
    found = []
    for row, text in enumerate(column.to_pylist()):
        if text is not None:
            found += [(row, index, value) for index, value in msgspec.json.decode(text)]
    return found
