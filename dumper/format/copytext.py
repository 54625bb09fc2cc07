"""A table file's rows (JSON objects, as format/readback.py reads them) as COPY data, so that a
restore hands the server the cheapest parse it has: COPY's text format, with `NULL 'null'`
(OPTIONS). Measured on the bench's mixed table, the server spends ~15% less CPU on it than on
the same rows as CSV (it is what pg_restore sends).

Exact by construction: the server turns each field into its column's value with the type's
input function, the same function json_populate_recordset calls on a JSON scalar, given the
same text. A JSON scalar is nearly a text-format field already: a number, true or false is its
own text, null is the NULL marker, and a string's content between its quotes is the field,
since JSON's escapes mean to COPY what they mean to JSON (\\\\, \\", \\/, \\b, \\f, \\n, \\r, \\t) but for
\\uXXXX, which COPY does not know (a value holding one is decoded). So a row is its values joined
by tabs, each as the file holds it (msgspec.Raw, never re-printed), and the strings' quotes are
taken off the whole block at once (a string that is "null" becomes nul\\l, which COPY reads as
the text null, not as the NULL marker). Only what is not a scalar is converted: a json value is
its JSON text, an array PostgreSQL's array text ('{"a",NULL,{1,2}}'; a nested JSON array is its
next dimension, as json_populate_record reads it, json[] too), a composite's JSON object its
record text ('(1,"x y",)', field by field in the composite's order: the manifest's types); then
escaped for COPY, its double quotes held as _QUOTE while the strings' quotes are taken off.
A column at a time, on its values joined into one bytes object (C-level replaces and splits),
where that can be done; a value at a time where not.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import attrgetter, itemgetter
from typing import Any

import msgspec

from ..core.errors import VerifyError
from .describe.columns import Shape, column_shape
from .manifest import Column as ManifestColumn
from .manifest import Manifest, TableEntry

OPTIONS = {"format": "text", "null": "null"}  # asyncpg's copy_to_table keywords
NULL = b"null"  # the NULL marker
NULL_TEXT = b"nul\\l"  # the text null: COPY reads a backslash before l as the l, and matches NULL before that
_SEP = b"\x00"  # between a column's values while they are converted together; never in JSON
_QUOTE = b"\x01"  # a converted value's double quote while the strings' quotes are taken off
_HELD = b"\x02"  # an escaped backslash while the strings' quotes are taken off
_NULL_VALUE = b"\x00null\x00"
_NULL_HELD = b"\x00\x03\x00"
_TO_QUOTE = bytes.maketrans(b'"', _QUOTE)
_FROM_QUOTE = bytes.maketrans(_QUOTE, b'"')
_BRACES = bytes.maketrans(b"[]", b"{}")
# Looked for in whole blocks: sre finds a literal's first byte with memchr, 3x faster here than `in`.
_STRING_NULL = re.compile(rb'"null"')
_BACKSLASH_QUOTE = re.compile(rb'\\"')
_BACKSLASH_U = re.compile(rb"\\u")
# What COPY's text format reads specially, and the two bytes standing in above: escaped.
_COPY_ESCAPES = ((b"\t", b"\\t"), (b"\n", b"\\n"), (b"\r", b"\\r"), (_QUOTE, b"\\x01"), (_HELD, b"\\x02"))


def quoted(text: bytes) -> bytes:
    """Text as one quoted element of array or record text."""
    return b'"' + text.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def escaped(text: bytes) -> bytes:
    """Text as a converted value: COPY's text escapes, double quotes as _QUOTE, the text null
    as NULL_TEXT."""
    if b"\\" in text:
        text = text.replace(b"\\", b"\\\\")
    for byte, escape in _COPY_ESCAPES:
        if byte in text:
            text = text.replace(byte, escape)
    return NULL_TEXT if text == NULL else text.translate(_TO_QUOTE)


def unquoted(data: bytes) -> bytes:
    """COPY data of JSON scalars as the file holds them and converted values: the strings'
    quotes taken off (their escapes are COPY's), the converted values' quotes put back."""
    if _STRING_NULL.search(data):  # the string null, or "null" at the end of a string holding a quote
        data = data.replace(b'"null"', b'"' + NULL_TEXT + b'"')
    if not _BACKSLASH_QUOTE.search(data):  # no string holds a quote or ends in a backslash
        return data.translate(_FROM_QUOTE, b'"')
    data = data.replace(b"\\\\", _HELD).replace(b'\\"', _QUOTE)
    return data.translate(_FROM_QUOTE, b'"').replace(_HELD, b"\\\\")


def unicode_escapes(text: bytes) -> bool:
    """JSON text (or COPY data made of it) holds a \\uXXXX escape: each escaped backslash
    taken out (left to right, as JSON pairs them), a backslash before u is one."""
    return _BACKSLASH_U.search(text) is not None and _BACKSLASH_U.search(text.replace(b"\\\\", b"")) is not None


# --- a value at a time ----------------------------------------------------------------

_MEMBERS = msgspec.json.Decoder(dict[str, msgspec.Raw])
_ELEMENTS = msgspec.json.Decoder(list[msgspec.Raw])


def _text(raw: bytes, shape: Shape) -> bytes | None:
    """A JSON value as the text PostgreSQL's input reads for a value of `shape` (None: SQL NULL),
    as json_populate_record reads it: a nested JSON array is an array's next dimension."""
    if raw == b"null":
        return None
    if shape.kind == "array" and shape.element is not None and raw[:1] == b"[":
        return _array_text(raw, shape.element)
    if shape.kind == "object" and raw[:1] == b"{":
        return _record_text(raw, shape)
    if shape.kind == "json" and not shape.text:
        return raw  # a json value: its JSON text
    if raw[:1] == b'"':
        return msgspec.json.decode(raw, type=str).encode()
    return raw  # a number, true, false


def _array_text(raw: bytes, element: Shape) -> bytes:
    parts = []
    for item in _ELEMENTS.decode(raw):
        value = bytes(item)
        if value[:1] == b"[":  # the array's next dimension
            parts.append(_array_text(value, element))
        else:
            text = _text(value, element)
            parts.append(b"NULL" if text is None else quoted(text))
    return b"{" + b",".join(parts) + b"}"


def _record_text(raw: bytes, shape: Shape) -> bytes:
    """A composite's JSON object (to_json: every field, in order) as record text: (a,"b",)."""
    members = _MEMBERS.decode(raw)
    parts = []
    for name, field in shape.fields:
        text = _text(bytes(members[name]), field) if name in members else None
        parts.append(b"" if text is None else quoted(text))
    return b"(" + b",".join(parts) + b")"


def field(raw: bytes, shape: Shape) -> bytes:
    """One value as a converted value. A JSON string is the type's text whatever the column's
    shape (an array whose bounds are not 1; every value of a Parquet dump)."""
    if raw[:1] == b'"' and not (shape.kind == "json" and not shape.text):
        return escaped(msgspec.json.decode(raw, type=str).encode())
    text = _text(raw, shape)
    return NULL if text is None else escaped(text)


# --- a column at a time (the fields taken out of a batch's rows) --------------------------


def _joined(values: Sequence[Any]) -> bytes:
    return _SEP + _SEP.join(values) + _SEP


def _held_nulls(joined: bytes) -> bytes:
    """Every null value (not one inside a value) held aside, as \\x03 (twice: nulls side by side)."""
    joined = joined.replace(_NULL_VALUE, _NULL_HELD)
    return joined.replace(_NULL_VALUE, _NULL_HELD) if _NULL_VALUE in joined else joined


def jsons(values: list[Any], shape: Shape) -> list[bytes]:
    """json values: their JSON text (a null value, SQL NULL, is the NULL marker as it is)."""
    joined = _joined(values)
    if b"\\" in joined:
        joined = joined.replace(b"\\", b"\\\\")
    if b"\t" in joined:  # whitespace a json value may hold (a newline or CR cannot be in the file)
        joined = joined.replace(b"\t", b"\\t")
    return joined[1:-1].translate(_TO_QUOTE).split(_SEP)


def arrays(values: list[Any], shape: Shape) -> list[bytes]:
    """Arrays of scalars: JSON's brackets and nulls outside the strings become array text."""
    joined = _joined(values)
    if b"\\" in joined or b'\x00"' in joined:  # escapes, or an array's text: value by value
        return [field(bytes(v), shape) for v in values]
    joined = _held_nulls(joined)
    count = len(values) - joined.count(b"\x03")
    if b"null" not in joined and joined.count(b"[") == count and joined.count(b"]") == count:
        # one bracket pair an array, so none in a string and no next dimension; no null element
        joined = joined.translate(_BRACES)
    else:
        parts = joined.split(b'"')  # outside the strings (even parts): JSON's brackets and nulls
        outside = b'"'.join(parts[0::2]).translate(_BRACES).replace(b"null", b"NULL")
        parts[0::2] = outside.split(b'"')  # (no quote outside a string: the same parts again)
        joined = b'"'.join(parts)
    return joined[1:-1].replace(b"\x03", NULL).translate(_TO_QUOTE).split(_SEP)


def values(values: list[Any], shape: Shape) -> list[bytes]:
    """Composites, arrays of json or composites: a value at a time."""
    return [field(bytes(v), shape) for v in values]


SCALAR = "scalar"  # a JSON scalar or string: numbers, booleans, every type written as its text
JSON = "json"  # a json/jsonb value written as JSON
ARRAY = "array"  # an array of scalars written as a JSON array (or, bounds not 1, as its text)
VALUE = "value"  # converted a value at a time by its shape: composites, arrays of json or of composites
SKIP = "skip"  # in the file, not loaded
CONVERT: dict[str, Callable[[list[Any], Shape], list[bytes]]] = {
    JSON: jsons,
    ARRAY: arrays,
    VALUE: values,
}
_TEXT = Shape("string", "", text=True)


# Types whose text output never holds a character JSON writes as \\uXXXX: their values are
# COPY fields as they are (their quotes taken off), unlooked at.
PLAIN = frozenset(
    f"pg_catalog.{name}"
    for name in [
        "int2",
        "int4",
        "int8",
        "float4",
        "float8",
        "numeric",
        "bool",
        "date",
        "time",
        "timetz",
        "timestamp",
        "timestamptz",
        "interval",
        "uuid",
        "bytea",
        "inet",
        "cidr",
        "macaddr",
        "macaddr8",
        "bit",
        "varbit",
        "pg_lsn",
        "oid",
        "xid",
        "xid8",
        "cid",
        "money",
    ]
)


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # SCALAR, or a key of CONVERT
    shape: Shape = _TEXT  # how its values are written (format/describe/columns.py)

    @property
    def plain(self) -> bool:
        """A scalar whose values hold no \\uXXXX escape (PLAIN)."""
        return self.kind == SCALAR and self.shape.type in PLAIN


def _run(getter: Callable[..., Any], fields: list[str]) -> list[Part]:
    """The part of a run of scalar columns: none, one column's values, or a row's values of them."""
    return [(getter(*fields), len(fields), None)] if fields else []


def scalars(values: Sequence[Any]) -> Sequence[Any]:
    """A column of JSON scalars: themselves, but a string holding a \\uXXXX escape, decoded."""
    if not unicode_escapes(_SEP.join(values)):
        return values
    return [field(value, _TEXT) if b"\\u" in value else value for value in map(bytes, values)]


Part = tuple[Callable[[Any], Any], int, "Column | None"]  # a run's getter and width, or a column's getter


class CopyRows:
    """Blocks of row texts (JSON objects) as COPY data (text format) of the columns whose kind is
    not SKIP, in the order `loaded` names them (the COPY's column list): first the scalars, then
    the columns converted from JSON's shapes. The scalars are joined by tabs a row at a time
    straight from the decoded values; the other columns are taken out, converted a column at a
    time, and joined after them; then the block's strings lose their quotes (unquoted). A
    string column is looked at value by value in a block whose strings hold a \\uXXXX escape."""

    def __init__(self, columns: Sequence[Column]) -> None:
        self.columns = list(columns)
        names = [c.name for c in self.columns]
        fields = [f"c{i}" for i in range(len(names))]
        try:
            row = msgspec.defstruct(
                "Row", [(f, msgspec.Raw) for f in fields], rename=dict(zip(fields, names, strict=True)), gc=False
            )
            self._decoder: Any = msgspec.json.Decoder(row)
            getter: Callable[..., Any] = attrgetter
        except ValueError:  # a name msgspec refuses as a field: a dict per row
            self._decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])
            getter, fields = itemgetter, names
        by_field = dict(zip(fields, self.columns, strict=True))
        plain = [f for f, c in by_field.items() if c.plain]
        texts = [f for f, c in by_field.items() if c.kind == SCALAR and not c.plain]
        shaped = [f for f, c in by_field.items() if c.kind not in (SCALAR, SKIP)]
        self.loaded = [by_field[f].name for f in (*plain, *texts, *shaped)]
        after = [(getter(f), 1, by_field[f]) for f in shaped]
        # Blocks whose strings hold no \uXXXX escape: every scalar is a field as it is.
        self._clean = [*_run(getter, plain + texts), *after]
        self._parts = [*_run(getter, plain), *((getter(f), 1, by_field[f]) for f in texts), *after]
        self._texts = bool(texts)

    def convert(self, block: bytes | memoryview, json_nulls: dict[str, list[int]] | None = None) -> bytes:
        """A block of rows (JSON objects, each ending in a newline) as COPY lines. `json_nulls`: per
        json column, the rows (1-based positions in the block) whose value is JSON null (the text
        null, not the NULL marker)."""
        rows = self._decoder.decode_lines(block)
        if not self.loaded:  # no column to load: a row is an empty line
            return b"\n" * len(rows)
        json_nulls = json_nulls or {}
        data = self._lines(rows, self._clean, json_nulls)
        if self._texts and unicode_escapes(data):  # (a converted value's backslashes are pairs)
            data = self._lines(rows, self._parts, json_nulls)
        return unquoted(data)

    @staticmethod
    def _lines(rows: list[Any], parts: list[Part], json_nulls: dict[str, list[int]]) -> bytes:
        pieces = []
        for get, width, column in parts:
            values = list(map(get, rows))
            if width > 1:
                pieces.append(list(map(b"\t".join, values)))
            elif column is None:
                pieces.append(values)
            else:
                pieces.append(CopyRows._converted(column, values, json_nulls.get(column.name, ())))
        lines = pieces[0] if len(pieces) == 1 else map(b"\t".join, zip(*pieces, strict=True))
        return b"\n".join(itertools.chain(lines, (b"",)))  # each line ends in a newline, no copy to add one

    @staticmethod
    def _converted(column: Column, values: list[Any], json_nulls: Sequence[int]) -> list[Any]:
        if column.kind == SCALAR:  # a string column: decoded where it holds a \uXXXX escape
            return list(scalars(values))
        converted = CONVERT[column.kind](values, column.shape)
        for position in json_nulls:
            converted[position - 1] = NULL_TEXT
        return converted


def _kind(found: Shape) -> str | None:
    if found.kind in ("integer", "float", "numeric", "boolean", "string"):
        return SCALAR
    if found.kind == "json":
        return JSON
    if found.kind == "array" and found.element is not None and found.element.kind not in ("object", "json", "any"):
        return ARRAY
    if found.kind in ("object", "array") and not _through_cast(found):
        return VALUE
    return None  # a value through an extension's cast (refused before anything loads)


def _through_cast(found: Shape) -> bool:
    inner = [found.element] if found.element is not None else [f for _, f in found.fields]
    return found.kind == "any" or any(_through_cast(s) for s in inner)


def _text_of(manifest: Manifest, table: TableEntry, column: ManifestColumn) -> Shape:
    """A column read back as its type's text: a string of its type (for PLAIN)."""
    try:
        found = column_shape(manifest, table, column)
    except VerifyError:
        return _TEXT
    return Shape("string", found.type if found.kind not in ("array", "object") else "", text=True)


def copy_columns(manifest: Manifest, table: TableEntry, load: Sequence[str]) -> list[Column] | str:
    """How each column of the table's file is turned into COPY data (those not in `load`: SKIP); or,
    when one cannot be, why (the table is then loaded through the server's JSON parser)."""
    loaded = set(load)
    if manifest.format == "parquet":  # read back as each value's text (format/parquet/read.py)
        return [
            Column(c.name, SCALAR if c.name in loaded else SKIP, _text_of(manifest, table, c)) for c in table.columns
        ]
    columns = []
    for column in table.columns:
        if column.name not in loaded:
            columns.append(Column(column.name, SKIP))
            continue
        try:
            found = column_shape(manifest, table, column)
        except VerifyError:
            return "the manifest does not describe its types (a dump from before `types`)"
        kind = _kind(found)
        if kind is None:
            return f"column {column.name!r} ({column.type}) has no COPY conversion here"
        columns.append(Column(column.name, kind, found))
    return columns


@functools.lru_cache(maxsize=64)
def _rows_for(columns: tuple[Column, ...]) -> CopyRows:
    return CopyRows(columns)


def convert_block(columns: tuple[Column, ...], block: bytes, json_nulls: dict[str, list[int]] | None) -> bytes:
    """CopyRows(columns).convert(block, json_nulls): what a converting process (restore/converters.py)
    is asked, its CopyRows kept for the next block of the same table."""
    return _rows_for(columns).convert(block, json_nulls)
