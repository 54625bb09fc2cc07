"""`describe --as duckdb` of a Parquet dump: a view per table over read_parquet.

DuckDB reads the file's own types exactly: integers, floats (NaN, infinities, -0), decimals,
text, bytea (BLOB), dates and timestamps including BC years and the infinities (the file holds
DuckDB's own infinity values), times (24:00:00 too), lists. Columns written as their type's
text (format/parquet/mapping.py) stay VARCHAR, but for uuid (UUID); json and jsonb are their
exact text. What the file cannot hold (the manifest's `outside`: NULL in the file) is named.
"""

from __future__ import annotations

from collections.abc import Callable

from ..manifest import Manifest, TableEntry
from . import duckdb
from .columns import Inexact, distinct
from .duckdb import ident, literal

_TEXT_CASTS = {"uuid": "UUID"}  # columns written as text that DuckDB reads exactly as its own type


def view(manifest: Manifest, table: TableEntry, url: str, name: str) -> tuple[str, list[Inexact]]:
    if not table.columns:
        return f"-- {name} has no columns ({table.rows} rows): no view\n", []
    keys = [c.name for c in table.columns]
    shown = distinct(keys)
    inexact: list[Inexact] = []
    selects = []
    # DuckDB's names ignore case: columns that differ only in case are read by position.
    positional = shown != keys
    for number, (column, as_name) in enumerate(zip(table.columns, shown, strict=True), start=1):
        value = f"#{number}" if positional else ident(column.name)
        cast = _TEXT_CASTS.get(column.type) if column.written == "text" else None
        selects.append(f"{f'CAST({value} AS {cast})' if cast else value} AS {ident(as_name)}")
        if as_name != column.name:
            inexact.append(Inexact(table.qualified, column.name, f"is {as_name} in DuckDB (its names ignore case)"))
        if table.outside.get(column.name):
            count = len(table.outside[column.name])
            inexact.append(
                Inexact(
                    table.qualified,
                    column.name,
                    f"{count} value(s) the file's type cannot hold are NULL in the file; their text is in "
                    "the manifest's `outside`",
                )
            )
    comments = "".join(f"-- not exact: {i.column}: {i.why}\n" for i in inexact)
    select = ",\n       ".join(selects)
    text = f"{comments}CREATE OR REPLACE VIEW {name} AS\nSELECT {select}\nFROM read_parquet({literal(url)});\n"
    return text, inexact


def render(manifest: Manifest, location: Callable[[str], str]) -> tuple[str, list[Inexact]]:
    return duckdb.render(manifest, location, view)
