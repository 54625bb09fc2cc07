"""`describe --as spark`: a Spark schema (StructType's JSON) per table, with the file and
the reader options that make Spark refuse, not null, a value its type cannot hold.

Spark types (spark.apache.org/docs/latest/sql-ref-datatypes.html) where they are exact:
integers, float/double (Spark's JSON reader takes the strings "NaN", "Infinity"),
decimal(p<=38,s), boolean; `string` for the rest: PostgreSQL's text (dates and
timestamps, where Spark reads BC years as AD and infinity as NULL; bytea's hex, where
BinaryType reads NULL), or for json, arrays and composites their JSON text.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from ..manifest import Manifest
from .columns import Inexact, column_shape, scalar, scalar_name

_NAMES = {"integer": {16: "short", 32: "integer", 64: "long"}, "float": {32: "float", 64: "double"}}


def render(manifest: Manifest, location: Callable[[str], str]) -> tuple[str, list[Inexact]]:
    """{"schema.table": {"path", "format", "options", "schema"}}: spark.read.schema(StructType.fromJson(
    schema)).options(**options).json(path)."""
    tables: dict[str, Any] = {}
    inexact: list[Inexact] = []
    options = {"mode": "FAILFAST", "multiLine": "true" if manifest.format == "json" else "false"}
    for table in manifest.tables:
        fields = []
        for column in table.columns:
            found = scalar(column_shape(manifest, table, column))
            metadata = {"postgres_type": column.type}
            fields.append(
                {"name": column.name, "type": scalar_name(found, _NAMES), "nullable": True, "metadata": metadata}
            )
            if found.why:
                inexact.append(Inexact(table.qualified, column.name, found.why))
        tables[table.qualified] = {
            "path": location(table.path),
            "format": "json",
            "options": options,
            "schema": {"type": "struct", "fields": fields},
        }
    return orjson.dumps(tables, option=orjson.OPT_INDENT_2).decode() + "\n", inexact
