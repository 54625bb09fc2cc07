"""PostgreSQL values to JSON bytes, and JSON Lines / JSON array framing.

Pure: no database or filesystem code here. Every row must come out
semantically equal to PostgreSQL's own `to_json(row)` (session TimeZone=UTC).

Each column is read in the cheapest form that is still exact (its *kind*):

- NATIVE: asyncpg's binary codec already yields an exact JSON value
  (integers, bool, text types, and arrays of those).
- NUMBER: numeric/float text from the server, embedded verbatim as a JSON
  number; `NaN`/`Infinity` become strings, as `to_json` writes them.
- JSON: json/jsonb text embedded verbatim (never re-parsed, so 40-digit
  numbers survive). Also used for every value the server serialised with
  `to_json(column)` (the exact fallback for composites, ranges, intervals...).
- STRING: text output used as a JSON string (uuid, date, bytea as hex).
- TIMESTAMP / TIMESTAMPTZ: ISO text reshaped into `to_json`'s XSD form.

A json/jsonb value that is JSON's `null` is written as `null`, exactly as
`to_json` writes SQL NULL. So that a restore can tell them apart, the encoder
marks such a value with a NUL byte in front (JSON_NULL_MARK: a byte JSON output
never holds); the table's assembly (dump/assemble.py) removes the marks and
records the rows in the manifest (TableEntry.json_nulls).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import lru_cache, partial
from itertools import repeat, starmap
from operator import itemgetter
from typing import Any, Protocol

import msgspec


class Kind(enum.Enum):
    NATIVE = "native"
    NUMBER = "number"
    JSON = "json"
    STRING = "string"
    TIMESTAMP = "timestamp"
    TIMESTAMPTZ = "timestamptz"
    TO_JSON = "to_json"  # selected as to_json(column): arrives as JSON


# Built-in type OIDs (stable across PostgreSQL versions) and how to read them.
KIND_BY_OID: dict[int, Kind] = {
    16: Kind.NATIVE,  # bool
    19: Kind.NATIVE,  # name
    20: Kind.NATIVE,  # int8
    21: Kind.NATIVE,  # int2
    23: Kind.NATIVE,  # int4
    25: Kind.NATIVE,  # text
    1042: Kind.NATIVE,  # bpchar
    1043: Kind.NATIVE,  # varchar
    1000: Kind.NATIVE,  # bool[]
    1005: Kind.NATIVE,  # int2[]
    1007: Kind.NATIVE,  # int4[]
    1016: Kind.NATIVE,  # int8[]
    1009: Kind.NATIVE,  # text[]
    1015: Kind.NATIVE,  # varchar[]
    700: Kind.NUMBER,  # float4
    701: Kind.NUMBER,  # float8
    1700: Kind.NUMBER,  # numeric
    114: Kind.JSON,  # json
    3802: Kind.JSON,  # jsonb
    2950: Kind.STRING,  # uuid
    1082: Kind.STRING,  # date
    1114: Kind.TIMESTAMP,
    1184: Kind.TIMESTAMPTZ,
    17: Kind.STRING,  # bytea
}


def kind_for(base_type_oid: int) -> Kind:
    """How to read a column whose (domain-resolved) type has this OID."""
    return KIND_BY_OID.get(base_type_oid, Kind.TO_JSON)


# --- value decoders (called by the database driver, one call per value) ----


def number(text: str) -> msgspec.Raw | str:
    """numeric/float text: a JSON number when finite, else the string to_json writes."""
    return msgspec.Raw(text) if text[-1].isdigit() else text


JSON_NULL_MARK = "\x00"  # before a json/jsonb value that is JSON null; never in JSON output
_JSONB_NULL = msgspec.Raw(JSON_NULL_MARK + "null")


def json_text(text: str) -> msgspec.Raw:
    """json text, embedded as is. Raw CR/LF in valid JSON text can only be
    whitespace between tokens (inside strings they must be escaped), so turning
    them into spaces keeps the value and keeps one row per line. JSON null is marked."""
    if "\n" in text or "\r" in text:
        text = text.replace("\n", " ").replace("\r", " ")
    if text[-1] in "l \t" and text.strip() == "null":
        return msgspec.Raw(JSON_NULL_MARK + text)
    return msgspec.Raw(text)


def jsonb_text(text: str) -> msgspec.Raw:
    """jsonb text (its output escapes every control character and has no spaces
    around a scalar), embedded as is; JSON null is marked."""
    return _JSONB_NULL if text == "null" else msgspec.Raw(text)


def _split_bc(text: str) -> tuple[str, str]:
    return (text[:-3], " BC") if text.endswith(" BC") else (text, "")


def timestamp(text: str) -> str:
    """'2024-01-02 03:04:05.5' -> '2024-01-02T03:04:05.5' (also BC, infinity)."""
    if text[-1] == "y":  # infinity, -infinity
        return text
    return text.replace(" ", "T", 1)


def timestamptz(text: str) -> str:
    """ISO '2024-01-02 03:04:05+00' -> XSD '2024-01-02T03:04:05+00:00'."""
    # An AD value at a whole-hour offset ("+00" in the session's UTC): nearly every value.
    if text[-3] == "+":
        return text.replace(" ", "T", 1) + ":00"
    return _timestamptz_other(text)


def _timestamptz_other(text: str) -> str:
    if text[-1] == "y":  # infinity, -infinity
        return text
    core, bc = _split_bc(text)
    core = core.replace(" ", "T", 1)
    sign_at = max(core.rfind("+"), core.rfind("-"), core.find("T"))
    offset = core[sign_at + 1 :]
    if sign_at > core.find("T") and ":" not in offset:
        core += ":00"  # XSD offsets always carry minutes
    return core + bc


# Types read as the server's text, and how that text becomes JSON. C callables
# (str, msgspec.Raw) where the text is already exact: one Python call per
# value costs ~10% of a dump per column (json and jsonb pay it to mark JSON null).
TEXT_DECODERS: dict[str, Callable[[str], Any]] = {
    "numeric": number,
    "float4": number,
    "float8": number,
    "json": json_text,  # may hold raw newlines
    "jsonb": jsonb_text,
    "uuid": str,
    "date": str,
    "bytea": str,  # with bytea_output=hex the text is what to_json writes
    "timestamp": timestamp,
    "timestamptz": timestamptz,
}


# --- rows and framing -------------------------------------------------------

LARGE_ROW = 512 << 10  # bytes: once a row this large is seen, fetches are sized by the largest row (reader)
ARRAY_SEPARATOR = b",\n"  # between two rows (or two encoded batches) of a JSON array file


@lru_cache(maxsize=256)
def _row_maker(names: tuple[str, ...], extra: int = 0) -> Callable[[Iterable[Iterable[Any]]], Iterator[Any]]:
    """records -> row objects msgspec encodes as JSON objects with these keys.

    A Struct type made for the columns takes each record's values positionally:
    no dict per row (building the dicts was most of a row's encoding cost).
    `extra` values after the columns (the bounds of array columns) are fields
    that default to None and are left out of the JSON while None (RowEncoder
    moves any other value into its column first).
    msgspec refuses field names holding '"', '\\' or control characters; a table
    with such a column gets a dict per row instead (msgspec escapes dict keys).
    """
    fields: list[str | tuple[str, type, None]] = [f"c{i}" for i in range(len(names))]
    fields += [(f"extra{i}", object, None) for i in range(extra)]
    try:
        row = msgspec.defstruct(
            "Row",
            fields,
            gc=False,
            omit_defaults=bool(extra),  # values hold no cycles
            rename={f"c{i}": name for i, name in enumerate(names)},
        )
    except ValueError:
        return lambda records: map(dict, map(zip, repeat(names), records))  # zip stops at the columns
    return partial(starmap, row)


class RowEncoder:
    """One table's records to file bytes: JSON Lines ('row\\n' each), or for a
    JSON array the rows joined by ',\\n'. Keys in column order.

    The hot loop of the product, kept in C: ONE msgspec call per batch writes
    every row and its newline. Every '\\n' in that output ends a row (control
    characters in strings are escaped; json values come through json_text).
    """

    def __init__(self, names: Sequence[str], array: bool, bounds_of: Sequence[int] = ()) -> None:
        self._rows = _row_maker(tuple(names), len(bounds_of))
        self._array = array
        self._encoder = msgspec.json.Encoder()
        # Each record ends with one value per array column (Table.select_sql): None, or the
        # column's text form when its lower bounds are not 1, written instead of the array.
        self._width = len(names)
        self._bounds = [(column, itemgetter(self._width + i)) for i, column in enumerate(bounds_of)]

    def _with_bounds(self, records: Sequence[Sequence[Any]]) -> Sequence[Sequence[Any]]:
        """The records, with an array that has lower bounds other than 1 replaced by its text
        form (rare: every batch is looked at by one C-level pass per array column)."""
        found = [(column, get) for column, get in self._bounds if any(map(get, records))]
        if not found:
            return records
        fixed = []
        for record in records:
            values = list(record)[: self._width]
            for column, get in found:
                text = get(record)
                if text is not None:
                    values[column] = text
            fixed.append(values)
        return fixed

    def largest(self, body: bytes | bytearray, rows: int) -> int:
        """The largest row of an encoded batch: only a batch of LARGE_ROW or more can hold a
        large one (so most batches are never split); one row is its own size."""
        if rows == 1 or len(body) < LARGE_ROW:
            return len(body)
        return max(map(len, body.split(b"\n")))

    def encode(self, records: Sequence[Sequence[Any]]) -> bytes:
        if self._bounds:
            records = self._with_bounds(records)
        if not self._array:
            return self._encoder.encode_lines(self._rows(records))
        if len(records) == 1:  # a huge document, perhaps: no copy
            return self._encoder.encode(next(self._rows(records)))
        lines = self._encoder.encode_lines(self._rows(records))
        return lines[:-1].replace(b"\n", ARRAY_SEPARATOR)


class TableFraming(Protocol):
    """What a table's Assembly writes through: a Framer, or parquet/write.py's ParquetFramer
    (which `encodes` each batch into file bytes: encode() and footer() run off the event loop)."""

    rows: int
    encodes: bool

    def header(self) -> bytes: ...

    def separator(self, rows: int) -> bytes: ...

    def encode(self, body: bytes | bytearray) -> bytes: ...

    def footer(self) -> bytes: ...


class Framer:
    """Turns encoded rows into a JSON Lines or a streamed JSON array file.

    JSON array layout, one row per line so files can be counted by lines:
    '[\\n' row ',\\n' row ... '\\n]\\n' (empty table: '[\\n]\\n').
    """

    encodes = False  # the batches are the file's bytes already

    def __init__(self, fmt: str) -> None:
        self.array = fmt == "json"
        self.rows = 0

    def encode(self, body: bytes | bytearray) -> bytes:
        raise AssertionError("a JSON batch is stored as it is")

    def header(self) -> bytes:
        return b"[\n" if self.array else b""

    def separator(self, rows: int) -> bytes:
        """What goes before the next `rows` rows (a RowEncoder.encode of them), which are then counted."""
        if not rows:
            return b""
        first = self.rows == 0
        self.rows += rows
        return b"" if first or not self.array else ARRAY_SEPARATOR

    def footer(self) -> bytes:
        if not self.array:
            return b""
        return b"\n]\n" if self.rows else b"]\n"


def rows_in(newlines: int, fmt: str) -> int:
    """Row count of a file written by Framer, from its number of '\\n' bytes."""
    return newlines - 2 if fmt == "json" else newlines
