"""Which Parquet (Arrow) type holds each PostgreSQL column, and how it is read for it.

Pure, and without pyarrow: the catalog asks here while it plans the SQL (postgres/catalog.py),
the worker processes and the file's reader build Arrow types from the answer (arrow.py).

| PostgreSQL (domains as their base) | Arrow / Parquet | read as |
|---|---|---|
| boolean, smallint, integer, bigint | bool, int16, int32, int64 | asyncpg's binary codecs |
| real, double precision | float32, float64 (NaN, infinities kept) | binary (exact) |
| numeric(p,s), p <= 38, 0 <= s <= p | decimal128(p,s) (a NaN: outside, below) | its text |
| text, varchar, char(n), name | string | binary |
| bytea | binary | binary |
| date | date32 (+-infinity: DuckDB's, +-(2^31-1)) | binary (days) |
| timestamp, timestamptz | timestamp[us], timestamp[us, UTC] (+-infinity: +-(2^63-1)) | binary (microseconds) |
| time | time64[us] | binary (microseconds) |
| json, jsonb | string: the value's text (JSON null is "null") | its text |
| arrays of bool, integers, floats, text types | list<...> (nested, as deep as declared) | binary |
| everything else, and other arrays | string: the type's text output ('{2024-01-01,infinity}') | as text |

A value the column's type cannot hold (a numeric NaN in a decimal128, a timestamp after 294247
AD, an array whose lower bounds are not 1 or whose dimensions are not the column's) is NULL in
the file and its text is in the manifest (TableEntry.outside), so a backup stays exact.
"""

from __future__ import annotations

from dataclasses import dataclass

# Kinds of Parquet column.
BOOL, INT16, INT32, INT64 = "bool", "int16", "int32", "int64"
FLOAT32, FLOAT64 = "float32", "float64"
DECIMAL, STRING, BINARY = "decimal", "string", "binary"
DATE, TIMESTAMP, TIMESTAMPTZ, TIME = "date", "timestamp", "timestamptz", "time"
JSON = "json"  # json/jsonb: their text in a string
TEXT = "text"  # any other type: its text output in a string

_BY_OID = {
    16: BOOL,
    21: INT16,
    23: INT32,
    20: INT64,
    700: FLOAT32,
    701: FLOAT64,
    25: STRING,  # text
    1043: STRING,  # varchar
    1042: STRING,  # bpchar
    19: STRING,  # name
    17: BINARY,  # bytea
    1082: DATE,
    1114: TIMESTAMP,
    1184: TIMESTAMPTZ,
    1083: TIME,
    114: JSON,
    3802: JSON,
}
NUMERIC_OID = 1700
MAX_DECIMAL_DIGITS = 38  # decimal128
LIST_ELEMENTS = frozenset({BOOL, INT16, INT32, INT64, FLOAT32, FLOAT64, STRING})  # typed lists; else text
AS_TEXT = ("json",)  # what a Parquet file always writes as text, in --as-text's names (the manifest's as_text)
# How the session reads (postgres/db.py's codecs): these types as their text, these as their raw
# binary values (arrow.py takes them apart); every other type with asyncpg's own codec.
TEXT_READ = ("numeric", "json", "jsonb")
RAW_READ = ("date", "timestamp", "timestamptz", "time")


@dataclass(frozen=True)
class Typed:
    """A column's Parquet type: `kind` (of the column, or of a list's elements), with a
    decimal's precision and scale, and `depth` > 0 for a list (nested that deep)."""

    kind: str
    precision: int = 0
    scale: int = 0
    depth: int = 0

    @property
    def as_text(self) -> bool:
        """Read as its text output (CAST AS text)."""
        return self.kind == TEXT

    @property
    def written(self) -> str:
        """The manifest's columns[].written: text (the type's text in a string) or typed."""
        return "text" if self.kind in (TEXT, JSON) else "typed"


def _numeric(typmod: int, as_text: bool) -> Typed:
    """decimal128(p,s) when the typmod fits it (PostgreSQL 15 allows a negative scale or s > p)."""
    if as_text or typmod < 0:
        return Typed(TEXT)
    packed = typmod - 4
    precision, scale = (packed >> 16) & 0xFFFF, ((packed & 0x7FF) ^ 1024) - 1024
    if precision > MAX_DECIMAL_DIGITS or not 0 <= scale <= precision:
        return Typed(TEXT)
    return Typed(DECIMAL, precision, scale)


def typed(
    base_oid: int, typmod: int, element_oid: int = 0, dimensions: int = 0, numeric_as_text: bool = False
) -> Typed:
    """The Parquet type of a column whose (domain-resolved) type is `base_oid`; for an array,
    `element_oid` is its element's (domain-resolved) type and `dimensions` its declared ones."""
    if element_oid:
        element = _BY_OID.get(element_oid, TEXT)
        return Typed(element, depth=max(1, dimensions)) if element in LIST_ELEMENTS else Typed(TEXT)
    if base_oid == NUMERIC_OID:
        return _numeric(typmod, numeric_as_text)
    return Typed(_BY_OID.get(base_oid, TEXT))
