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
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from itertools import repeat
from typing import Any

import orjson


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


def number(text: str) -> orjson.Fragment | str:
    """numeric/float text: a JSON number when finite, else the string to_json writes."""
    return orjson.Fragment(text) if text[-1].isdigit() else text


def json_text(text: str) -> orjson.Fragment:
    """json/jsonb text, embedded as is. Raw CR/LF in valid JSON text can only be
    whitespace between tokens (inside strings they must be escaped), so turning
    them into spaces keeps the value and keeps one row per line."""
    if "\n" in text or "\r" in text:
        text = text.replace("\n", " ").replace("\r", " ")
    return orjson.Fragment(text)


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
# (str, orjson.Fragment) where the text is already exact: one Python call per
# value costs ~10% of a dump per column.
TEXT_DECODERS: dict[str, Callable[[str], Any]] = {
    "numeric": number, "float4": number, "float8": number,
    "json": json_text,  # may hold raw newlines
    "jsonb": orjson.Fragment,  # jsonb output escapes every control character
    "uuid": str, "date": str,
    "bytea": str,  # with bytea_output=hex the text is what to_json writes
    "timestamp": timestamp, "timestamptz": timestamptz,
}


# --- rows and framing -------------------------------------------------------

_dumps_line = partial(orjson.dumps, option=orjson.OPT_APPEND_NEWLINE)
ARRAY_SEPARATOR = b",\n"  # between two rows (or two encoded batches) of a JSON array file
# Rows are serialised as one list with this between them. Every "\n" in the
# result is one of these (orjson escapes control characters in strings; json
# values come through json_text), so a comma orjson writes beside it can be
# found and dropped without parsing.
_ROW_END = orjson.Fragment(b"\n")
_LINES_END = re.compile(rb",\n[,\]]")  # '{a},\n,{b},\n]' -> '{a}\n{b}\n'
_ARRAY_SEP = re.compile(rb"\n,")  # '{a},\n,{b}' -> '{a},\n{b}'


def encode_rows(names: Sequence[str], records: Sequence[Iterable[Any]], array: bool) -> bytes:
    """The records as one piece of a file body: JSON Lines ('row\\n' each), or
    for a JSON array the rows joined by ',\\n'. Keys in column order.

    The hot loop of the product, kept in C: one dict per row (map/zip), then
    ONE orjson call for the whole batch (a call per row cost ~3x as much).
    A single row (a huge document, perhaps) is serialised directly: no copy.
    """
    if not records:
        return b""
    rows = map(dict, map(zip, repeat(names), records))
    if len(records) == 1:
        return orjson.dumps(next(rows)) if array else _dumps_line(next(rows))
    items: list[Any] = [_ROW_END] * (2 * len(records) - array)
    items[::2] = rows
    out = memoryview(orjson.dumps(items))
    return _ARRAY_SEP.sub(b"\n", out[1:-1]) if array else _LINES_END.sub(b"\n", out[1:])


class Framer:
    """Turns encoded rows into a JSON Lines or a streamed JSON array file.

    JSON array layout, one row per line so files can be counted by lines:
    '[\\n' row ',\\n' row ... '\\n]\\n' (empty table: '[\\n]\\n').
    """

    def __init__(self, fmt: str) -> None:
        self.array = fmt == "json"
        self.rows = 0

    def header(self) -> bytes:
        return b"[\n" if self.array else b""

    def separator(self, rows: int) -> bytes:
        """What goes before the next `rows` rows (an encode_rows() of them), which are then counted."""
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
