"""A table file's rows (JSON objects, as format/readback.py reads them) as COPY data, so that a
restore hands the server the cheapest parse it has: COPY's CSV format, written with
`FORMAT csv, ESCAPE '\\', NULL 'null'` (OPTIONS).

Exact by construction: the server turns each field into its column's value with the type's
input function, the same function json_populate_recordset calls on a JSON scalar, given the
same text. With those options a JSON scalar already is a CSV field: a number, true or false is
its own (unquoted) text, null is the NULL marker (a quoted "null" is the string), and a string
is a quoted field whose escapes \\" and \\\\ mean what they mean to CSV's ESCAPE. So a row is
its values joined by commas, each as the file holds it (msgspec.Raw, never re-printed); JSON's
other escapes in a column that has them become the bytes they stand for (raw newlines and tabs
are data in a quoted field; \\uXXXX is decoded). Only what is not a scalar is converted: a json
value becomes a quoted field of its JSON text, an array PostgreSQL's array text
('{"a",NULL,{1,2}}'; a nested JSON array is its next dimension, as json_populate_record reads
it, json[] too), a composite's JSON object its record text ('(1,"x y",)', field by field in the
composite's order: the manifest's types). A column at a time, on its values joined into one
bytes object (C-level replaces and splits), where that can be done; a value at a time where not.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import attrgetter, itemgetter
from typing import Any

import msgspec

from ..core.errors import VerifyError
from .describe.columns import Shape, column_shape
from .manifest import Column as ManifestColumn
from .manifest import Manifest, TableEntry

OPTIONS = {"format": "csv", "escape": "\\", "null": "null"}  # asyncpg's copy_to_table keywords
NULL = b"null"  # the NULL marker (a quoted "null" is the string)
_SEP = b"\x00"  # between a column's values while they are converted together; likewise never in JSON
_HELD = b"\x02"  # an escaped backslash while JSON's other escapes are rewritten
_NULL_VALUE = b"\x00null\x00"
_NULL_HELD = b"\x00\x03\x00"
# JSON's escapes but \" and \\ (which mean the same to CSV), as the bytes they stand for.
_ESCAPES = ((b"\\n", b"\n"), (b"\\t", b"\t"), (b"\\r", b"\r"), (b"\\b", b"\x08"), (b"\\f", b"\x0c"), (b"\\/", b"/"))


def quoted(text: bytes) -> bytes:
    """Text as one quoted field: of CSV (with ESCAPE '\\'), and of array and record text alike."""
    return b'"' + text.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


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
    """One value as a CSV field. A JSON string is the type's text whatever the column's shape
    (an array whose bounds are not 1; every value of a Parquet dump)."""
    if raw[:1] == b'"' and not (shape.kind == "json" and not shape.text):
        return quoted(msgspec.json.decode(raw, type=str).encode())
    text = _text(raw, shape)
    return NULL if text is None else quoted(text) if raw[:1] in (b"{", b"[") or shape.kind == "json" else text


# --- a column at a time (the fields taken out of a batch's rows) --------------------------


def _joined(values: Sequence[Any]) -> bytes:
    return _SEP + _SEP.join(values) + _SEP


def _held_nulls(joined: bytes) -> bytes:
    """Every null value (not one inside a value) held aside, as \\x03 (twice: nulls side by side)."""
    joined = joined.replace(_NULL_VALUE, _NULL_HELD)
    return joined.replace(_NULL_VALUE, _NULL_HELD) if _NULL_VALUE in joined else joined


def _quoted_fields(joined: bytes) -> list[bytes]:
    """`joined` (SEP, values, SEP; nulls held) as quoted CSV fields, nulls as the NULL marker."""
    if b"\\" in joined:
        joined = joined.replace(b"\\", b"\\\\")
    if b'"' in joined:
        joined = joined.replace(b'"', b'\\"')
    joined = b'"' + joined[1:-1].replace(_SEP, b'"\x00"') + b'"'
    return joined.replace(b'"\x03"', NULL).split(_SEP)


def jsons(values: list[Any], shape: Shape) -> list[bytes]:
    """json values: their JSON text, quoted."""
    return _quoted_fields(_held_nulls(_joined(values)))


def arrays(values: list[Any], shape: Shape) -> list[bytes]:
    """Arrays of scalars: JSON's brackets and nulls outside the strings become array text."""
    joined = _joined(values)
    if b"\\" in joined or b'\x00"' in joined:  # escapes, or an array's text: value by value
        return [field(bytes(v), shape) for v in values]
    joined = _held_nulls(joined)
    arrays = len(values) - joined.count(b"\x03")
    if b"null" not in joined and joined.count(b"[") == arrays and joined.count(b"]") == arrays:
        # one bracket pair an array, so none in a string and no next dimension; no null element
        return _quoted_fields(joined.replace(b"[", b"{").replace(b"]", b"}"))
    parts = joined.split(b'"')  # outside the strings (even parts): JSON's brackets and nulls
    outside = b'"'.join(parts[0::2]).replace(b"[", b"{").replace(b"]", b"}").replace(b"null", b"NULL")
    parts[0::2] = outside.split(b'"')  # (no quote outside a string: the same parts again)
    return _quoted_fields(b'"'.join(parts))


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


# Types whose text output never holds a backslash (but bytea's leading one, written \\\\), a double
# quote or a control character: their JSON strings are CSV fields as they are, unlooked at.
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
        """A scalar whose values hold no JSON escape but \\\\ (PLAIN)."""
        return self.kind == SCALAR and self.shape.type in PLAIN


def _escapes_rewritten(text: bytes) -> bytes | None:
    """Scalar fields as CSV: JSON's escapes but \\" and \\\\ as the bytes they stand for (None: a
    \\uXXXX, which only a decoder reads)."""
    text = text.replace(b"\\\\", _HELD)
    if b"\\u" in text:
        return None
    for escape, byte in _ESCAPES:
        if escape in text:
            text = text.replace(escape, byte)
    return text.replace(_HELD, b"\\\\")


def other_escapes(text: bytes) -> bool:
    """JSON text holds an escape other than \\\\ and \\" (which mean the same to CSV's ESCAPE). Each
    escaped backslash taken out (left to right, as JSON pairs them), a backslash left is an
    escape of the character after it: of a quote, or of something else."""
    if b"\\" not in text:
        return False
    if b'\\\\"' not in text:  # no run of backslashes before a quote but single ones: counting is enough
        return text.count(b"\\") != 2 * text.count(b"\\\\") + text.count(b'\\"')
    text = text.replace(b"\\\\", b"")
    return text.count(b"\\") != text.count(b'\\"')


def _run(getter: Callable[..., Any], fields: list[str]) -> list[Part]:
    """The part of a run of scalar columns: none, one column's values, or a row's values of them."""
    return [(getter(*fields), len(fields), None)] if fields else []


def scalars(values: Sequence[Any]) -> Sequence[Any]:
    """A column of JSON scalars as CSV fields: themselves, but for JSON's escapes other than \\\\
    and \\" (other_escapes)."""
    joined = _SEP.join(values)
    if not other_escapes(joined):
        return values
    rewritten = _escapes_rewritten(joined)
    if rewritten is None:
        return [field(bytes(v), _TEXT) for v in values]
    return rewritten.split(_SEP)


Part = tuple[Callable[[Any], Any], int, "Column | None"]  # a run's getter and width, or a column's getter


class CopyRows:
    """Blocks of row texts (JSON objects) as COPY data (CSV) of the columns whose kind is not
    SKIP, in the order `loaded` names them (the COPY's column list): first the scalars, then
    the columns converted from JSON's shapes. A JSON scalar is its own CSV field (with OPTIONS):
    the scalars are joined by commas a row at a time straight from the decoded values; the
    other columns are taken out, converted a column at a time, and joined after them. A string
    column is looked at for JSON's other escapes when the block's strings have some (other_escapes)."""

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
        # Blocks whose strings hold no escape but \\ and \": every scalar is a CSV field as it is.
        self._clean = [*_run(getter, plain + texts), *after]
        self._parts = [*_run(getter, plain), *((getter(f), 1, by_field[f]) for f in texts), *after]
        self._texts = [getter(f) for f in texts]

    def convert(self, block: bytes | memoryview, json_nulls: dict[str, list[int]] | None = None) -> bytes:
        """A block of rows (JSON objects, each ending in a newline) as CSV lines. `json_nulls`: per
        json column, the rows (1-based positions in the block) whose value is JSON null, a quoted
        "null" (not the NULL marker)."""
        rows = self._decoder.decode_lines(block)
        if not self.loaded:  # no column to load: a row is an empty line (the text format)
            return b"\n" * len(rows)
        parts = self._parts if self._texts and other_escapes(self._joined_texts(rows)) else self._clean
        pieces = []
        for get, width, column in parts:
            values = list(map(get, rows))
            if width > 1:
                pieces.append(list(map(b",".join, values)))
            elif column is None:
                pieces.append(values)
            else:
                pieces.append(self._converted(column, values, (json_nulls or {}).get(column.name, ())))
        lines = pieces[0] if len(pieces) == 1 else map(b",".join, zip(*pieces, strict=True))
        return b"\n".join(itertools.chain(lines, (b"",)))  # each line ends in a newline, no copy to add one

    def _joined_texts(self, rows: list[Any]) -> bytes:
        return _SEP.join(itertools.chain.from_iterable(map(get, rows) for get in self._texts))

    @staticmethod
    def _converted(column: Column, values: list[Any], json_nulls: Sequence[int]) -> list[Any]:
        if column.kind == SCALAR:  # a string column: JSON's other escapes, where it has them
            return list(scalars(values))
        converted = CONVERT[column.kind](values, column.shape)
        for position in json_nulls:
            converted[position - 1] = b'"null"'
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
