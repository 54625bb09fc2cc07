"""How a column's values are written in a table file, as a tree of shapes.

The file is `to_json(row)` (format/encode.py): PostgreSQL's json.c decides each type's
JSON: integers and floating point and numeric are JSON numbers (NaN and the
infinities strings), bool a JSON boolean, json/jsonb the value itself, arrays JSON
arrays (nested for more dimensions; an array whose lower bounds are not all 1 is
its text form, a string), composites JSON objects with their fields, everything
else (dates, timestamps, bytea, uuid, enums, ranges, ...) the type's text as a
string. Domains are written as their base type. A column the manifest says was
`written` as text is its type's text (an array of texts for an array); `cast`, an
extension's cast to json, can be any JSON.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ...core.errors import VerifyError
from ..manifest import Column, Manifest, TableEntry, TypeInfo

INTEGER_BITS = {"pg_catalog.int2": 16, "pg_catalog.int4": 32, "pg_catalog.int8": 64}
FLOATS = {"pg_catalog.float4": 32, "pg_catalog.float8": 64}
NUMERIC = "pg_catalog.numeric"
JSON_TYPES = ("pg_catalog.json", "pg_catalog.jsonb")
NOT_A_NUMBER = ("NaN", "Infinity", "-Infinity")  # to_json's strings for the values JSON has no number for


@dataclass(frozen=True)
class Shape:
    """One value's JSON, with the PostgreSQL type it comes from."""

    kind: str  # integer | float | numeric | boolean | string | json | array | object | any
    type: str  # the (domain-resolved) type's name, "pg_catalog.int4"; "" for any
    bits: int = 0  # integer, float
    precision: int | None = None  # numeric's; fractional second digits of times
    scale: int | None = None
    length: int | None = None  # varchar(n), char(n)
    labels: tuple[str, ...] | None = None  # an enum's
    element: Shape | None = None  # an array's
    fields: tuple[tuple[str, Shape], ...] = ()  # an object's (a composite)
    not_null: bool = False  # a domain declared NOT NULL
    text: bool = False  # written as the type's text, a JSON string (columns[].written: text)


@dataclass(frozen=True)
class Inexact:
    """A column a client cannot hold exactly as this dump wrote it, and why."""

    table: str
    column: str
    why: str

    def __str__(self) -> str:
        return f"{self.table}{'.' if self.column else ''}{self.column}: {self.why}"


def _type(types: dict[str, TypeInfo], key: str, table: str, column: str) -> TypeInfo:
    info = types.get(key)
    if info is None:
        raise VerifyError(
            f"{table}.{column}: the manifest does not describe type {key!r} (a dump from before the manifest's "
            "`types`): dump again with this version to describe it"
        )
    return info


def shape(types: dict[str, TypeInfo], key: str, table: str = "", column: str = "") -> Shape:
    """The JSON of a value of type `key` (a key of the manifest's types) as to_json writes it."""
    info = _type(types, key, table, column)
    if info.kind == "domain":
        assert info.base is not None
        inner = shape(types, info.base, table, column)
        return dataclasses.replace(inner, not_null=inner.not_null or info.not_null)
    if info.kind == "array":
        assert info.element is not None
        return Shape("array", info.name, element=shape(types, info.element, table, column))
    if info.kind == "composite":
        fields = tuple((f.name, shape(types, f.type, table, column)) for f in info.fields or ())
        return Shape("object", info.name, fields=fields)
    if info.kind == "enum":
        return Shape("string", info.name, labels=tuple(info.labels or ()))
    if info.kind != "base":  # range, multirange, pseudo: their text
        return Shape("string", info.name)
    if info.name in INTEGER_BITS:
        return Shape("integer", info.name, bits=INTEGER_BITS[info.name])
    if info.name in FLOATS:
        return Shape("float", info.name, bits=FLOATS[info.name])
    if info.name == NUMERIC:
        return Shape("numeric", info.name, precision=info.precision, scale=info.scale)
    if info.name == "pg_catalog.bool":
        return Shape("boolean", info.name)
    if info.name in JSON_TYPES:
        return Shape("json", info.name)
    return Shape("string", info.name, precision=info.precision, length=info.length)


def _as_text(found: Shape) -> Shape:
    return Shape("string", found.type, precision=found.precision, scale=found.scale, text=True)


def json_as_text(manifest: Manifest, table: TableEntry) -> dict[str, str]:
    """The json/jsonb columns written as their text (--as-text json): name -> type, for a restore to
    make the value of the string again."""
    found: dict[str, str] = {}
    if "json" not in manifest.as_text:  # (and a manifest from before `types` is never asked)
        return found
    for column in table.columns:
        if column.written == "text" and column_shape(manifest, table, column).type in JSON_TYPES:
            found[column.name] = column.type
    return found


def column_shape(manifest: Manifest, table: TableEntry, column: Column) -> Shape:
    """How `column`'s values are written in `table`'s file."""
    if column.written == "cast":
        return Shape("any", "")
    found = shape(manifest.types, column.type, table.qualified, column.name)
    if column.written == "text":  # the type's text (--as-text, an extension's type): strings of `type`
        if found.kind == "array" and found.element is not None:
            found = Shape("array", found.type, element=_as_text(found.element))
        else:
            found = _as_text(found)
    if column.not_null:
        found = dataclasses.replace(found, not_null=True)
    return found


@dataclass(frozen=True)
class Scalar:
    """A column as a client with SQL types but no PostgreSQL ones reads it (Athena, Spark): the
    exact type it has, or a string; and why that string may not be exact."""

    kind: str  # integer | float | decimal | boolean | string
    bits: int = 0
    precision: int = 0
    scale: int = 0
    why: str | None = None


DECIMAL_DIGITS = 38  # what DECIMAL holds in DuckDB, Athena, Spark
_FIX = " (dump with --as-text "


def fits_decimal(found: Shape) -> bool:
    p, s = found.precision, found.scale
    return p is not None and s is not None and 0 <= s <= p <= DECIMAL_DIGITS


def scalar(found: Shape) -> Scalar:
    """The exact SQL type for a value of this shape, or a string (PostgreSQL's text, or the JSON text
    of json, arrays and composites, as the client's reader gives it)."""
    if found.text:
        return Scalar("string")
    if found.kind in ("integer", "float", "boolean"):
        why = "-0 (negative zero) may read as 0" if found.kind == "float" else None
        return Scalar(found.kind, bits=found.bits, why=why)
    if found.kind == "numeric":
        if fits_decimal(found):
            assert found.precision is not None and found.scale is not None
            return Scalar("decimal", precision=found.precision, scale=found.scale)
        return Scalar("string", why=f"numeric without precision <= 38: the reader's text of a number{_FIX}numeric)")
    if found.kind == "json":
        return Scalar("string", why=f"the reader's text of a JSON value, JSON null as NULL{_FIX}json)")
    return Scalar("string")


def scalar_name(found: Scalar, sized: dict[str, dict[int, str]]) -> str:
    """A Scalar in a Hive-like type system (Athena, Spark): `sized` names integers and floats by bits;
    decimal(p,s), boolean and string are spelled alike in both."""
    if found.kind in sized:
        return sized[found.kind][found.bits]
    if found.kind == "decimal":
        return f"decimal({found.precision},{found.scale})"
    return found.kind


def distinct(names: list[str]) -> list[str]:
    """Names for a client whose names ignore case (DuckDB; Athena's are lower case): a name that
    equals an earlier one but for case gets `_2`, `_3`... (never one that is taken)."""
    taken: set[str] = set()
    out = []
    for name in names:
        given, n = name, 1
        while given.lower() in taken:
            n += 1
            given = f"{name}_{n}"
        taken.add(given.lower())
        out.append(given)
    return out
