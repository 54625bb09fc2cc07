"""A stored Parquet table file read back: its row count (verify), and its rows as JSON objects
of PostgreSQL's text forms, the values a restore hands to json_populate_recordset (each
type's input function reads them back exactly) and a drill compares.

The file is read in one pass into an unnamed private temporary file, counted and hashed on
the way (so a file changed after `verify` is still caught before its table is committed), then
read a few MB of rows at a time. Values outside the file's types (the manifest's
`outside`) take their place in their rows.
"""

from __future__ import annotations

import bisect
import collections
import decimal
import math
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import lru_cache
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ...core.errors import VerifyError
from ..stored import StoredStats, Tally, check_read
from .arrow import ROWS_KEY
from .values import DAY_US, date_text, time_text, timestamp_text

MAGIC = b"PAR1"
MAX_FOOTER = 64 << 20  # bytes of a file's end kept while it is hashed: its footer is in them
BATCH_BYTES = 4 << 20  # rows per batch: about this much Arrow data
# What Arrow's own cast writes the way PostgreSQL reads it: years 1 to 9999.
FIRST_DAY, LAST_DAY = -719_162, 2_932_896  # 0001-01-01, 9999-12-31 (days since 1970)
FIRST_US, LAST_US = FIRST_DAY * DAY_US, (LAST_DAY + 1) * DAY_US - 1


def read_stats(chunks: Iterable[bytes]) -> StoredStats:
    """Size and sha256 of a stored Parquet file, and its rows (as its footer says); `newlines`
    holds the rows. VerifyError when the end of the file is not a Parquet footer."""
    tally = Tally(chunks)
    tail: collections.deque[bytes] = collections.deque()
    kept = 0
    for chunk in tally:
        tail.append(chunk)
        kept += len(chunk)
        while tail and kept - len(tail[0]) >= MAX_FOOTER:
            kept -= len(tail.popleft())
    end = b"".join(tail)
    return StoredStats(tally.bytes, tally.sha256, rows_of(_footer(end)))


def rows_of(meta: pq.FileMetaData) -> int:
    """The file's rows (a table of no columns: as its metadata says, Parquet counts none)."""
    if meta.num_columns == 0:
        return int((meta.metadata or {}).get(ROWS_KEY, b"0"))
    return int(meta.num_rows)


def _footer(end: bytes) -> pq.FileMetaData:
    if len(end) < 12 or end[-4:] != MAGIC:
        raise VerifyError("not a Parquet file (no footer: truncated?)")
    size = int.from_bytes(end[-8:-4], "little")
    if size + 8 > len(end):
        raise VerifyError(f"a Parquet footer of {size} bytes: larger than this reader takes ({MAX_FOOTER})")
    try:
        return pq.read_metadata(pa.BufferReader(end[-(size + 8) :]))
    except (pa.ArrowException, OSError) as exc:
        raise VerifyError(f"not a valid Parquet footer: {exc}") from None


# --- values as PostgreSQL's text -------------------------------------------------------


def _ranged(array: pa.Array, numbers: pa.DataType, low: int, high: int, slow: Any) -> list[str | None]:
    """Arrow's own text where it writes PostgreSQL's (low..high), `slow(number)` elsewhere."""
    raw = array.view(numbers)
    outside = pc.or_(pc.less(raw, low), pc.greater(raw, high))
    if not pc.any(outside).as_py():
        texts: list[str | None] = pc.cast(array, pa.string()).to_pylist()
        return texts
    inside = pc.if_else(outside, pa.scalar(None, array.type), array)
    texts = pc.cast(inside, pa.string()).to_pylist()
    flags, values = outside.to_pylist(), raw.to_pylist()
    for i, flag in enumerate(flags):
        if flag:
            texts[i] = slow(values[i])
    return texts


def _binary(array: pa.Array) -> list[str | None]:
    return ["\\x" + v.hex() if v is not None else None for v in array.to_pylist()]


def _float_text(value: float, digits: str, fixed_below: int) -> str:
    """A float as PostgreSQL writes it (float8out/float4out: shortest exact digits, `digits`
    as Python or numpy gives them; positional for exponents -4 to fixed_below - 1)."""
    if value != value:
        return "NaN"
    if value in (math.inf, -math.inf):
        return "Infinity" if value > 0 else "-Infinity"
    number = decimal.Decimal(digits).normalize()
    sign, figures, exponent = number.as_tuple()
    assert isinstance(exponent, int)
    power = len(figures) - 1 + exponent
    if -4 <= power < fixed_below:
        return format(number, "f")
    mantissa = str(figures[0]) + ("." + "".join(map(str, figures[1:])) if len(figures) > 1 else "")
    return f"{'-' if sign else ''}{mantissa}e{'-' if power < 0 else '+'}{abs(power):02d}"


def _float8(value: float) -> str:
    return _float_text(value, repr(value), 15)


def _float4(value: float) -> str:
    shortest = np.format_float_scientific(np.float32(value), unique=True) if math.isfinite(value) else "0"
    return _float_text(value, shortest, 6)


_NEEDS_QUOTES = re.compile(r'[{}",\\ \t\n\r\v\f]|^$|^[Nn][Uu][Ll][Ll]$')  # array_out's test (ASCII spaces)


def _quoted(text: str) -> str:
    """An array element's text as array_out writes it: quoted when it must be."""
    if _NEEDS_QUOTES.search(text) is None:
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _element_text(kind: pa.DataType) -> Any:
    if pa.types.is_boolean(kind):
        return lambda v: "t" if v else "f"
    if pa.types.is_float64(kind):
        return _float8
    if pa.types.is_float32(kind):
        return _float4
    if pa.types.is_string(kind):
        return _quoted
    return str  # integers


def _literal(value: Any, element: Any) -> str:
    """A nested list as PostgreSQL's array text, exactly as array_out writes it (so that a
    list and an array's text from the manifest compare equal)."""
    if value is None:
        return "NULL"
    if isinstance(value, list):
        return "{" + ",".join(_literal(v, element) for v in value) + "}"
    text: str = element(value)
    return text


def texts(array: pa.Array) -> list[str | None]:
    """A column's values as PostgreSQL's text (None for NULL)."""
    kind = array.type
    if pa.types.is_list(kind):
        inner = kind
        while pa.types.is_list(inner):
            inner = inner.value_type
        element = _element_text(inner)
        return [None if v is None else _literal(v, element) for v in array.to_pylist()]
    if pa.types.is_string(kind):
        values: list[str | None] = array.to_pylist()
        return values
    if pa.types.is_binary(kind):
        return _binary(array)
    if pa.types.is_date32(kind):
        return _ranged(array, pa.int32(), FIRST_DAY, LAST_DAY, date_text)
    if pa.types.is_timestamp(kind):
        zone = kind.tz is not None
        return _ranged(array, pa.int64(), FIRST_US, LAST_US, lambda us: timestamp_text(us, zone))
    if pa.types.is_time64(kind):
        return _ranged(array, pa.int64(), 0, DAY_US - 1, time_text)
    found: list[str | None] = pc.cast(array, pa.string()).to_pylist()  # bool, integers, floats, decimals
    return found


@lru_cache(maxsize=64)
def _row_type(names: tuple[str, ...]) -> Any:
    """A Struct of the columns (all text or null), encoded as a JSON object with these keys."""
    try:
        fields = [(f"c{i}", str | None) for i in range(len(names))]
        return msgspec.defstruct("Row", fields, rename={f"c{i}": name for i, name in enumerate(names)}, gc=False)
    except ValueError:
        return None  # names msgspec refuses as field names: a dict per row


class ParquetRows:
    """Iterate over lists of row texts (JSON objects of the values' text), about BATCH_BYTES of
    data each; after the last, `check()` compares what was read with the manifest entry."""

    def __init__(self, chunks: Iterable[bytes], name: str, columns: Sequence[str], outside: Mapping[str, Any]) -> None:
        self._tally = Tally(chunks)
        self._name = name
        self._columns = list(columns)
        self._outside = {
            column: sorted((int(row), str(text)) for row, text in pairs) for column, pairs in outside.items() if pairs
        }
        self._encoder = msgspec.json.Encoder()
        self.rows = 0

    def _file(self) -> Any:
        spool = tempfile.TemporaryFile()  # noqa: SIM115 - closed by __iter__
        for chunk in self._tally:
            spool.write(chunk)
        spool.seek(0)
        return spool

    def __iter__(self) -> Iterator[list[bytes]]:
        with self._file() as spool:
            try:
                parquet = pq.ParquetFile(spool)
            except (pa.ArrowException, OSError) as exc:
                raise VerifyError(f"{self._name}: not a valid Parquet file: {exc}") from None
            names = parquet.schema_arrow.names
            if names != self._columns:
                raise VerifyError(f"{self._name}: the file's columns are {names}, the manifest's {self._columns}")
            meta = parquet.metadata
            if not names:
                yield from self._no_columns(rows_of(meta))
                return
            per_row = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups)) / max(1, meta.num_rows)
            size = max(1, min(65_536, int(BATCH_BYTES // max(per_row, 1.0))))
            for batch in parquet.iter_batches(batch_size=size, use_threads=False):
                yield self._texts(batch)

    def _no_columns(self, rows: int) -> Iterator[list[bytes]]:
        for first in range(0, rows, 65_536):
            count = min(65_536, rows - first)
            self.rows += count
            yield [b"{}"] * count

    def _texts(self, batch: pa.RecordBatch) -> list[bytes]:
        first, count = self.rows, batch.num_rows
        columns = [texts(batch.column(i)) for i in range(batch.num_columns)]
        for index, name in enumerate(self._columns):
            pairs = self._outside.get(name)
            if pairs:
                at = bisect.bisect_left(pairs, (first, ""))
                while at < len(pairs) and pairs[at][0] < first + count:
                    columns[index][pairs[at][0] - first] = pairs[at][1]
                    at += 1
        self.rows += count
        row = _row_type(tuple(self._columns))
        values = zip(*columns, strict=True)
        if row is None:
            return [self._encoder.encode(dict(zip(self._columns, v, strict=True))) for v in values]
        return self._encoder.encode_lines([row(*v) for v in values]).split(b"\n")[:-1]

    def check(self, rows: int, stored_bytes: int, sha256: str) -> None:
        """The file as read equals the manifest's entry (call after the last batch)."""
        check_read(self._tally, self.rows, self._name, rows, stored_bytes, sha256)
