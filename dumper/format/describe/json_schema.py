"""`describe --as json-schema`: a JSON Schema (draft 2020-12) per table, that every
row of its file validates against (an element of the array with --format json)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from ..manifest import Manifest
from .columns import NOT_A_NUMBER, NUMERIC, Inexact, Shape, column_shape

DRAFT = "https://json-schema.org/draft/2020-12/schema"
_DAY = r"\d{4,}-\d{2}-\d{2}"
_CLOCK = r"T\d{2}:\d{2}:\d{2}(\.\d{1,6})?"
_INFINITE = "|infinity|-infinity"
PATTERNS = {  # the text to_json writes (BC years as PostgreSQL writes them: "0044-03-15 BC")
    "pg_catalog.date": f"^({_DAY}( BC)?{_INFINITE})$",
    "pg_catalog.timestamp": f"^({_DAY}{_CLOCK}( BC)?{_INFINITE})$",
    "pg_catalog.timestamptz": rf"^({_DAY}{_CLOCK}[+-]\d{{2}}:\d{{2}}(:\d{{2}})?( BC)?{_INFINITE})$",
    "pg_catalog.uuid": "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
    "pg_catalog.bytea": r"^\\x([0-9a-f]{2})*$",
}
NUMERIC_TEXT = r"^(-?\d+(\.\d+)?|NaN|Infinity|-Infinity)$"  # numeric's output (--as-text numeric)
_NOT_A_NUMBER = {"enum": list(NOT_A_NUMBER)}
_NULL = {"type": "null"}


class _Schema:
    """One table's schema; arrays are $defs (an element may itself be an array)."""

    def __init__(self) -> None:
        self.defs: dict[str, Any] = {}

    def value(self, found: Shape) -> dict[str, Any]:
        schema = self._non_null(found)
        return schema if found.not_null else {"anyOf": [schema, _NULL]}

    def _non_null(self, found: Shape) -> dict[str, Any]:
        if found.kind == "integer":
            return {"type": "integer", "minimum": -(2 ** (found.bits - 1)), "maximum": 2 ** (found.bits - 1) - 1}
        if found.kind in ("float", "numeric"):
            return {"anyOf": [{"type": "number"}, _NOT_A_NUMBER]}
        if found.kind == "boolean":
            return {"type": "boolean"}
        if found.kind in ("json", "any"):
            return {}
        if found.kind == "object":
            return {
                "type": "object",
                "properties": {name: self.value(field) for name, field in found.fields},
                "required": [name for name, _ in found.fields],
                "additionalProperties": False,
            }
        if found.kind == "array":
            return {"anyOf": [{"$ref": self._array(found)}, {"type": "string", "description": "lower bounds not 1"}]}
        return self._string(found)

    def _array(self, found: Shape) -> str:
        assert found.element is not None
        name = f"array{len(self.defs)}"
        ref = f"#/$defs/{name}"
        self.defs[name] = {}  # reserved before the element's own arrays
        item = {"anyOf": [self.value(found.element), {"$ref": ref}]}
        self.defs[name] = {"type": "array", "items": item}
        return ref

    @staticmethod
    def _string(found: Shape) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "string"}
        if found.text:  # the type's text (--as-text, an extension's type)
            return {**schema, "pattern": NUMERIC_TEXT} if found.type == NUMERIC else schema
        if found.labels is not None:
            schema["enum"] = list(found.labels)
        if found.type in PATTERNS:
            schema["pattern"] = PATTERNS[found.type]
        if found.length is not None and found.type in ("pg_catalog.varchar", "pg_catalog.bpchar"):
            schema["maxLength"] = found.length
        return schema


def render(manifest: Manifest, location: Callable[[str], str]) -> tuple[str, list[Inexact]]:
    """{"schema.table": its JSON Schema} for every table of the run."""
    tables = {}
    for table in manifest.tables:
        schema = _Schema()
        properties = {}
        for column in table.columns:
            found = column_shape(manifest, table, column)
            properties[column.name] = {**schema.value(found), "description": column.type}
        tables[table.qualified] = {
            "$schema": DRAFT,
            "title": table.qualified,
            "description": f"a row of {location(table.path)}",
            "type": "object",
            "properties": properties,
            "required": [c.name for c in table.columns],
            "additionalProperties": False,
            **({"$defs": schema.defs} if schema.defs else {}),
        }
    return orjson.dumps(tables, option=orjson.OPT_INDENT_2).decode() + "\n", []
