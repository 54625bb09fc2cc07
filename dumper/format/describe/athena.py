"""`describe --as athena`: CREATE EXTERNAL TABLE per table, over its folder (--layout folders:
Athena reads a table from a prefix), with the OpenX JSON SerDe.

Athena's names are lower case letters, digits and '_': each table is `<schema>__<table>` and each
column its name made so, mapped back to the JSON key by the SerDe's `mapping.` properties (with
`case.insensitive` off, so keys that differ only in case stay apart). Types from Athena's list
(docs.aws.amazon.com/athena/latest/ug/data-types.html): exact ones where Athena has them
(integers, floating point, decimal(p<=38,s), boolean), `string` for the rest: PostgreSQL's text,
exact, where Athena's own date, timestamp and binary would read BC years, infinities and bytea's
hex wrongly or as NULL.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from ...core.errors import ConfigError
from ..manifest import Manifest, TableEntry
from .columns import Inexact, column_shape, distinct, scalar, scalar_name

SERDE = "org.openx.data.jsonserde.JsonSerDe"
_NAMES = {"integer": {16: "smallint", 32: "int", 64: "bigint"}, "float": {32: "float", 64: "double"}}
_NOT_A_NAME = re.compile(r"[^a-z0-9_]+")


def athena_name(name: str) -> str:
    """Lower case letters, digits and '_' (what Athena allows), never empty."""
    return _NOT_A_NAME.sub("_", name.lower()).strip("_") or "_"


def _literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def table_ddl(manifest: Manifest, table: TableEntry, folder_url: str, name: str) -> tuple[str, list[Inexact]]:
    columns = distinct([athena_name(c.name) for c in table.columns])
    defs, mapping, inexact = [], [], []
    for column, athena in zip(table.columns, columns, strict=True):
        found = scalar(column_shape(manifest, table, column))
        defs.append(f"  `{athena}` {scalar_name(found, _NAMES)}")
        mapping.append(f"  {_literal('mapping.' + athena)} = {_literal(column.name)}")
        if found.why:
            inexact.append(Inexact(table.qualified, column.name, found.why))
    properties = ",\n".join([f"  {_literal('case.insensitive')} = 'false'", *mapping])
    text = (
        f"-- {table.qualified}: {table.rows} rows\n"
        f"CREATE EXTERNAL TABLE IF NOT EXISTS `{name}` (\n" + ",\n".join(defs) + "\n)\n"
        f"ROW FORMAT SERDE {_literal(SERDE)}\n"
        f"WITH SERDEPROPERTIES (\n{properties}\n)\n"
        f"LOCATION {_literal(folder_url.rstrip('/') + '/')};\n"
    )
    return text, inexact


def render(manifest: Manifest, location: Callable[[str], str]) -> tuple[str, list[Inexact]]:
    if manifest.layout != "folders" or manifest.format != "jsonl":
        raise ConfigError(
            "--as athena: Athena reads a table from a prefix of JSON Lines files: describe a dump taken "
            f"with --layout folders --format jsonl (this one is --layout {manifest.layout} --format {manifest.format})"
        )
    names = distinct([f"{athena_name(t.schema)}__{athena_name(t.table)}" for t in manifest.tables])
    out = [f"-- dumper describe --as athena: run {manifest.run_id}; run in the Athena database of your choice\n"]
    inexact: list[Inexact] = []
    for table, name in zip(manifest.tables, names, strict=True):
        text, missed = table_ddl(manifest, table, location(table.path.rpartition("/")[0]), name)
        out.append("\n" + text)
        inexact += missed
    return "".join(out), inexact
