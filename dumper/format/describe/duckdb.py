"""`describe --as duckdb`: SQL that makes a DuckDB view per table over its file.

Each view reads the file with read_json and the column types below, then turns the
text DuckDB cannot read itself into its values: BC dates and timestamps (PostgreSQL
writes "0044-03-15 BC", DuckDB wants "0044-03-15 (BC)" and has no BC timestamp
literal), bytea's "\\x..." hex. A type DuckDB has no exact reading of, in the file as
written, is named in the script and returned: DuckDB's JSON reader makes a double of
every JSON number it does not read as an integer or a DECIMAL(p<=38), and re-prints
JSON values (json, jsonb, arrays, composites) from those doubles.
"""

from __future__ import annotations

from collections.abc import Callable

from ..manifest import Manifest, TableEntry
from .columns import JSON_TYPES, NUMERIC, Inexact, Shape, column_shape, distinct, fits_decimal

MAX_OBJECT_BYTES = 1 << 30  # read_json's limit on one row (its default, 16 MiB, is smaller than a jsonb value)
_FIX = ": dump with --as-text "
_INTEGERS = {16: "SMALLINT", 32: "INTEGER", 64: "BIGINT"}
_FLOATS = {32: "FLOAT", 64: "DOUBLE"}
_AS_IS = {  # string types DuckDB reads exactly from PostgreSQL's text
    "pg_catalog.uuid": "UUID",
    "pg_catalog.time": "TIME",
    "pg_catalog.timetz": "TIMETZ",
}
_BC_DAY = "CAST(split_part({c}, 'T', 1) || ' (BC)' AS DATE)"
_BC_CLOCK = "CAST(replace(split_part(replace({c}, ' BC', ''), 'T', 2), '+00:00', '') AS TIME)"  # a dump is UTC
_CONVERT = {  # string types read as VARCHAR, then made values
    "pg_catalog.date": "CAST(replace({c}, ' BC', ' (BC)') AS DATE)",
    "pg_catalog.timestamp": (
        f"CASE WHEN {{c}} LIKE '% BC' THEN CAST({_BC_DAY} + {_BC_CLOCK} AS TIMESTAMP) ELSE CAST({{c}} AS TIMESTAMP) END"
    ),
    "pg_catalog.timestamptz": (
        f"CASE WHEN {{c}} LIKE '% BC' THEN timezone('UTC', {_BC_DAY} + {_BC_CLOCK}) ELSE CAST({{c}} AS TIMESTAMPTZ) END"
    ),
    "pg_catalog.bytea": "from_hex(substr({c}, 3))",
}


def ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _numbers_inside(found: Shape) -> bool:
    """Whether a JSON value of this shape can hold a number a double does not keep."""
    if found.kind in ("numeric", "json", "any"):
        return True
    if found.element is not None:
        return _numbers_inside(found.element)
    return any(_numbers_inside(field) for _, field in found.fields)


def _text(found: Shape) -> tuple[str, str, str | None]:
    """A value written as its type's text (--as-text): the string, read exactly; numeric(p<=38) a DECIMAL
    (a NaN fails the cast: DECIMAL has none), json/jsonb DuckDB's JSON (its text kept as written)."""
    if found.type == NUMERIC and fits_decimal(found):
        return "VARCHAR", f"CAST({{c}} AS DECIMAL({found.precision},{found.scale}))", None
    if found.type in JSON_TYPES:
        return "VARCHAR", "CAST({c} AS JSON)", None
    return "VARCHAR", "{c}", None


def _column(found: Shape) -> tuple[str, str, str | None]:
    """(read_json's type, the view's expression of it with {c}, why it is not exact or None)."""
    if found.kind == "integer":
        return _INTEGERS[found.bits], "{c}", None
    if found.kind == "float":  # to_json writes negative zero "-0", which JSON readers take for the integer 0
        return _FLOATS[found.bits], "{c}", "-0 (negative zero) reads as 0"
    if found.kind == "boolean":
        return "BOOLEAN", "{c}", None
    if found.kind == "numeric":
        if fits_decimal(found):  # NaN fails the read (DECIMAL has none): loud, not rounded
            return f"DECIMAL({found.precision},{found.scale})", "{c}", None
        return "DOUBLE", "{c}", f"numeric without a precision of at most 38 is read as DOUBLE (~17 digits){_FIX}numeric"
    if found.kind in ("json", "array", "object", "any"):
        why = "JSON numbers re-printed from doubles by DuckDB" if _numbers_inside(found) else None
        if found.kind == "json":
            why = f"{why}; JSON null reads as SQL NULL{_FIX}json"
        return "JSON", "{c}", why
    if found.text:
        return _text(found)
    if found.type in _AS_IS:
        return _AS_IS[found.type], "{c}", None
    return "VARCHAR", _CONVERT.get(found.type, "{c}"), None


_EXACT_BY_KEY = ("VARCHAR", "BOOLEAN", "SMALLINT", "INTEGER", "BIGINT", "UUID", "TIME", "TIMETZ")


def _by_key(key: str, kind: str) -> str:
    """A row's member `key` as `kind`, from the row read whole as JSON."""
    pointer = literal(_pointer(key))
    if kind == "JSON":
        return f'json_extract("json", {pointer})'
    return f'CAST(json_extract_string("json", {pointer}) AS {kind})'


def _pointer(key: str) -> str:
    """A JSON pointer to a member (RFC 6901)."""
    return "/" + key.replace("~", "~0").replace("/", "~1")


def view(manifest: Manifest, table: TableEntry, url: str, name: str) -> tuple[str, list[Inexact]]:
    """CREATE VIEW `name` over the table's file. Columns whose names differ only in case cannot be
    read_json's columns (DuckDB's names ignore case): such a table is read a row at a time as JSON, each
    value taken by its key (numbers then pass through DuckDB's doubles)."""
    if not table.columns:  # read_json needs a column, a view one to select
        return f"-- {name} has no columns ({table.rows} rows): no view\n", []
    keys = [c.name for c in table.columns]
    shown = distinct(keys)
    whole_rows = shown != keys
    reads, selects, inexact = [], [], []
    for column, as_name in zip(table.columns, shown, strict=True):
        kind, expression, why = _column(column_shape(manifest, table, column))
        if whole_rows:
            value = _by_key(column.name, kind)
            if kind not in _EXACT_BY_KEY:
                why = why or "read through DuckDB's JSON functions (its names ignore case), numbers as doubles"
        else:
            reads.append(f"{literal(column.name)}: {literal(kind)}")
            value = ident(column.name)
        selects.append(f"{expression.format(c=value)} AS {ident(as_name)}")
        if as_name != column.name:
            inexact.append(Inexact(table.qualified, column.name, f"is {as_name} in DuckDB (its names ignore case)"))
        if why:
            inexact.append(Inexact(table.qualified, column.name, why))
    columns = "{'json': 'JSON'}, records = false" if whole_rows else f"{{{', '.join(reads)}}}"
    options = [
        literal(url),
        f"format = {literal('newline_delimited' if manifest.format == 'jsonl' else 'array')}",
        f"compression = {literal('gzip' if manifest.compression == 'gzip' else 'none')}",
        f"columns = {columns}",
        f"maximum_object_size = {MAX_OBJECT_BYTES}",
    ]
    comments = "".join(f"-- not exact: {i.column}: {i.why}\n" for i in inexact)
    select = ",\n       ".join(selects)
    text = f"{comments}CREATE OR REPLACE VIEW {name} AS\nSELECT {select}\nFROM read_json({', '.join(options)});\n"
    return text, inexact


ViewOf = Callable[[Manifest, TableEntry, str, str], tuple[str, list[Inexact]]]


def render(
    manifest: Manifest, location: Callable[[str], str], view_of: ViewOf | None = None
) -> tuple[str, list[Inexact]]:
    """A schema and a view per table (`view_of(manifest, table, its file, the view's name)`: by
    default over read_json; describe/parquet.py's over read_parquet)."""
    view_of = view_of or view
    out = [f"-- dumper describe --as duckdb: run {manifest.run_id}, {len(manifest.tables)} tables\n"]
    schemas = {s.lower(): s for s in reversed([t.schema for t in manifest.tables])}  # the first spelling
    out += [f"CREATE SCHEMA IF NOT EXISTS {ident(s)};\n" for s in sorted(schemas.values())]
    pairs = distinct([f"{schemas[t.schema.lower()]}\0{t.table}" for t in manifest.tables])
    inexact: list[Inexact] = []
    for table, pair in zip(manifest.tables, pairs, strict=True):
        schema, _, view_name = pair.partition("\0")
        if (schema, view_name) != (table.schema, table.table):
            shown = f"{schema}.{view_name}"
            inexact.append(Inexact(table.qualified, "", f"is the view {shown} in DuckDB (its names ignore case)"))
        text, missed = view_of(manifest, table, location(table.path), f"{ident(schema)}.{ident(view_name)}")
        out.append("\n" + text)
        inexact += missed
    return "".join(out), inexact
