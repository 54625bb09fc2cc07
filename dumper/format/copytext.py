"""A table file's rows (JSON objects, as format/readback.py reads them) as the lines of
PostgreSQL's COPY text format, so that a restore hands the server the cheapest parse it has.

Exact by construction: the server turns each field into its column's value with the type's
input function, the same function json_populate_recordset calls on a JSON scalar, given the
same text. A JSON number, true or false is its own text; a JSON string is its contents, and
JSON's escapes are COPY's (\\\\ \\" \\/ \\b \\f \\n \\r \\t mean the same in both), but for \\uXXXX,
which COPY does not know: such a string is decoded and escaped again. null is \\N. A json or
jsonb value written as JSON is its JSON text, backslashes and tabs escaped. An array written
as a JSON array becomes PostgreSQL's array text ('{"a",NULL,{1,2}}'), a nested JSON array its
next dimension (as json_populate_record reads it, json[] included); a composite's JSON object
its record text ('(1,"x y",)'), field by field in the composite's order (the manifest's types).
Only a value written through an extension's cast has no such text (such dumps are refused),
and a dump from before the manifest's `types` is loaded through the server's JSON parser.

Most of the work is done a column at a time on the column's values joined into one bytes
object (C-level replace and split), not a value at a time in Python; composites, arrays of
json and arrays with escapes go a value at a time.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

import msgspec

from ..core.errors import VerifyError
from .describe.columns import Shape, column_shape
from .manifest import Manifest, TableEntry

NULL = b"\\N"
_SEP = b"\x00"  # between a column's values while they are converted together: never in JSON text
_NULL_VALUE = b"\x00null\x00"
_NULL_FIELD = b"\x00\\N\x00"


def _copy_escaped(text: bytes) -> bytes:
    """Text as a COPY field: backslash, newline, carriage return and tab escaped."""
    if b"\\" in text:
        text = text.replace(b"\\", b"\\\\")
    if b"\n" in text or b"\r" in text or b"\t" in text:
        text = text.replace(b"\n", b"\\n").replace(b"\r", b"\\r").replace(b"\t", b"\\t")
    return text


def _string(raw: bytes) -> bytes:
    """A JSON string with a \\u escape: decoded, then written as COPY text."""
    text: str = msgspec.json.decode(raw)
    return _copy_escaped(text.encode())


def _scalar(raw: bytes) -> bytes:
    if raw == b"null":
        return NULL
    if raw[:1] == b'"':
        return raw[1:-1] if b"\\u" not in raw else _string(raw)
    return raw


_MEMBERS = msgspec.json.Decoder(dict[str, msgspec.Raw])
_ELEMENTS = msgspec.json.Decoder(list[msgspec.Raw])


def _quoted(text: bytes) -> bytes:
    """An element of array or record text, always quoted (so that any text is one element)."""
    return b'"' + text.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


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
            parts.append(b"NULL" if text is None else _quoted(text))
    return b"{" + b",".join(parts) + b"}"


def _record_text(raw: bytes, shape: Shape) -> bytes:
    """A composite's JSON object (to_json: every field, in order) as record text: (a,"b",)."""
    members = _MEMBERS.decode(raw)
    parts = []
    for name, field in shape.fields:
        text = _text(bytes(members[name]), field) if name in members else None
        parts.append(b"" if text is None else _quoted(text))
    return b"(" + b",".join(parts) + b")"


def _by_shape(raw: bytes, shape: Shape) -> bytes:
    """A column's value, a value at a time (composites, arrays with escapes, arrays of json)."""
    if raw[:1] == b'"' and shape.kind != "json":  # a string: the type's text (an array's, bounds not 1)
        return _scalar(raw)
    text = _text(raw, shape)
    return NULL if text is None else _copy_escaped(text)


def _joined(values: Sequence[Any]) -> bytes:
    return _SEP + _SEP.join(values) + _SEP


def _nulls(joined: bytes) -> bytes:
    """Every JSON null value (not one inside a value) as \\N (again for nulls side by side)."""
    joined = joined.replace(_NULL_VALUE, _NULL_FIELD)
    return joined.replace(_NULL_VALUE, _NULL_FIELD) if _NULL_VALUE in joined else joined


def _cells(joined: bytes, end: bytes) -> list[bytes]:
    """The column's fields, each followed by `end` (a tab, or the newline after a row's last)."""
    return (joined[1:-1].replace(_SEP, end + _SEP) + end).split(_SEP)


def _ended(fields: list[bytes], end: bytes) -> list[bytes]:
    return [field + end for field in fields]


def scalars(values: Sequence[Any], _: Shape, end: bytes) -> list[bytes]:
    joined = _joined(values)
    if b"\\u" in joined:  # rare: a string COPY cannot take as it is
        return _ended([_scalar(bytes(v)) for v in values], end)
    joined = _nulls(joined)
    if b'"' in joined:  # strings without their quotes
        joined = joined.replace(b'\x00"', _SEP).replace(b'"\x00', _SEP)
    return _cells(joined, end)


def jsons(values: Sequence[Any], _: Shape, end: bytes) -> list[bytes]:
    joined = _joined(values)
    if b"\\" in joined:
        joined = joined.replace(b"\\", b"\\\\")
    if b"\t" in joined:
        joined = joined.replace(b"\t", b"\\t")
    return _cells(_nulls(joined), end)


def arrays(values: Sequence[Any], shape: Shape, end: bytes) -> list[bytes]:
    joined = _joined(values)
    if b"\\" in joined or b'\x00"' in joined:  # escapes, or an array's text: value by value
        return _ended([_by_shape(bytes(v), shape) for v in values], end)
    parts = _nulls(joined).split(b'"')  # outside the strings (even parts): JSON's brackets and nulls
    outside = b'"'.join(parts[0::2]).replace(b"[", b"{").replace(b"]", b"}").replace(b"null", b"NULL")
    parts[0::2] = outside.split(b'"')  # (no quote outside a string: the same parts again)
    return _cells(b'"'.join(parts), end)


def values(values: Sequence[Any], shape: Shape, end: bytes) -> list[bytes]:
    return _ended([_by_shape(bytes(v), shape) for v in values], end)


SCALAR = "scalar"  # a JSON scalar or string: numbers, booleans, every type written as its text
JSON = "json"  # a json/jsonb value written as JSON
ARRAY = "array"  # an array of scalars written as a JSON array (or, bounds not 1, as its text)
VALUE = "value"  # converted a value at a time by its shape: composites, arrays of json or of composites
CONVERT: dict[str, Callable[[Sequence[Any], Shape, bytes], list[bytes]]] = {
    SCALAR: scalars,
    JSON: jsons,
    ARRAY: arrays,
    VALUE: values,
}
_TEXT = Shape("string", "", text=True)


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # a key of CONVERT
    shape: Shape = _TEXT  # how its values are written (format/describe/columns.py)


class CopyRows:
    """Batches of row texts (JSON objects) as COPY text: the `columns`, in this order."""

    def __init__(self, columns: Sequence[Column]) -> None:
        self.columns = list(columns)
        names = [c.name for c in self.columns]
        self._convert = [(CONVERT[c.kind], c.shape) for c in self.columns]
        try:
            fields = [(f"c{i}", msgspec.Raw) for i in range(len(names))]
            row = msgspec.defstruct("Row", fields, rename={f"c{i}": n for i, n in enumerate(names)}, gc=False)
            self._decoder: Any = msgspec.json.Decoder(row)
            self._values: Any = attrgetter(*(f"c{i}" for i in range(len(names)))) if names else tuple
        except ValueError:  # a name msgspec refuses as a field: a dict per row
            self._decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])
            self._values = (
                (lambda row: row[names[0]]) if len(names) == 1 else (lambda row: tuple(map(row.__getitem__, names)))
            )
        self._single = len(names) == 1

    def convert(self, batch: Sequence[bytes], json_nulls: dict[str, list[int]] | None = None) -> bytes:
        """COPY text lines of the batch's rows. `json_nulls`: per json column, the rows (1-based
        positions in the batch) whose value is JSON null, written null (not \\N)."""
        if not self.columns:  # a row of no columns is an empty line
            return b"\n" * len(batch)
        rows = self._decoder.decode_lines(b"\n".join(batch))
        if self._single:  # attrgetter of one name gives the value itself
            columns: list[Any] = [list(map(self._values, rows))]
        else:
            columns = list(zip(*map(self._values, rows), strict=True))
        last = len(columns) - 1
        cells = [
            convert(column, shape, b"\n" if i == last else b"\t")
            for i, ((convert, shape), column) in enumerate(zip(self._convert, columns, strict=True))
        ]
        for name, positions in (json_nulls or {}).items():
            index = next((i for i, c in enumerate(self.columns) if c.name == name), None)
            if index is not None:
                for position in positions:
                    cells[index][position - 1] = b"null" + (b"\n" if index == last else b"\t")
        return b"".join(itertools.chain.from_iterable(zip(*cells, strict=True)))


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
    inner = [found.element] if found.element is not None else [field for _, field in found.fields]
    return found.kind == "any" or any(_through_cast(s) for s in inner)


def copy_columns(manifest: Manifest, table: TableEntry, load: Sequence[str]) -> list[Column] | str:
    """How each column of `load` (the manifest's names, in the order to load) is turned into
    COPY text; or, when one cannot be, why (the table is then loaded through JSON)."""
    if manifest.format == "parquet":  # read back as each value's text (format/parquet/read.py)
        return [Column(name, SCALAR) for name in load]
    by_name = {c.name: c for c in table.columns}
    columns = []
    for name in load:
        try:
            found = column_shape(manifest, table, by_name[name])
        except VerifyError:
            return "the manifest does not describe its types (a dump from before `types`)"
        kind = _kind(found)
        if kind is None:
            return f"column {name!r} ({by_name[name].type}) has no COPY text conversion here"
        columns.append(Column(name, kind, found))
    return columns
