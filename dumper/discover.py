"""Which tables a run dumps, their columns, and the SQL that reads them.

Identifiers are quoted here, once, and never interpolated any other way.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .encode import Kind, kind_for
from .errors import ConfigError


def quote_ident(name: str) -> str:
    """PostgreSQL identifier quoting: always quoted, so any name is safe."""
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # as format_type() shows it, e.g. "numeric(12,2)"
    kind: Kind
    domain_base: str | None = None  # quoted schema.typname of a domain's base type

    def select_sql(self) -> str:
        col = quote_ident(self.name)
        if self.kind is Kind.TO_JSON:
            return f"pg_catalog.to_json({col})"  # to_json resolves domains itself
        if self.domain_base:  # read a domain as its base type, so its codec applies
            return f"CAST({col} AS {self.domain_base})"
        return col


@dataclass(frozen=True)
class Table:
    schema: str
    name: str
    oid: int
    partitioned: bool
    pages: int
    columns: tuple[Column, ...]
    # Set by measured(), partitions summed:
    bytes: int = 0  # on disk with TOAST (pg_table_size)
    toast_bytes: int = 0  # out-of-line values: some value is larger than ~2 kB
    rows_estimate: float = -1.0  # reltuples (-1: never analyzed)

    def row_bytes(self) -> float:
        """Average bytes of one row on disk, TOAST included (0: unknown)."""
        return self.bytes / self.rows_estimate if self.rows_estimate > 0 else 0.0

    @property
    def qualified(self) -> str:
        """schema.table as users write it in --include/--exclude and logs."""
        return f"{self.schema}.{self.name}"

    def relation_sql(self) -> str:
        return f"{quote_ident(self.schema)}.{quote_ident(self.name)}"

    def select_sql(self, first_page: int | None = None, end_page: int | None = None) -> str:
        """All rows, or those on pages [first_page, end_page) (a TID range scan)."""
        # ONLY: rows of legacy inheritance children belong to the child's own
        # file. A partitioned root must be read without ONLY to see its rows.
        only = "" if self.partitioned else "ONLY "
        cols = ", ".join(c.select_sql() for c in self.columns)
        ranges = [f"ctid OPERATOR(pg_catalog.>=) '({first_page},0)'::pg_catalog.tid" if first_page is not None else "",
                  f"ctid OPERATOR(pg_catalog.<) '({end_page},0)'::pg_catalog.tid" if end_page is not None else ""]
        where = " AND ".join(r for r in ranges if r)
        return f"SELECT {cols} FROM {only}{self.relation_sql()}" + (f" WHERE {where}" if where else "")


def select_tables(
    names: Sequence[tuple[str, str]], include: Sequence[str], exclude: Sequence[str]
) -> list[tuple[str, str]]:
    """Filter (schema, table) pairs by glob patterns on 'schema.table'.

    An --include pattern that matches nothing is an error (a typo would
    otherwise silently dump nothing), like pg_dump --strict-names.
    """
    for pattern in include:
        if not any(fnmatch.fnmatchcase(f"{s}.{t}", pattern) for s, t in names):
            raise ConfigError(f"--include: {pattern!r} matches no table in the chosen schemas")
    chosen = []
    for schema, table in names:
        qualified = f"{schema}.{table}"
        if include and not any(fnmatch.fnmatchcase(qualified, p) for p in include):
            continue
        if any(fnmatch.fnmatchcase(qualified, p) for p in exclude):
            continue
        chosen.append((schema, table))
    return chosen


_TABLES_SQL = """
SELECT c.oid, n.nspname, c.relname, c.relkind OPERATOR(pg_catalog.=) 'p' AS partitioned,
       GREATEST(c.relpages, 0)::pg_catalog.int8 AS pages
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
WHERE n.nspname OPERATOR(pg_catalog.=) ANY($1::pg_catalog.text[])
  AND c.relkind IN ('r', 'p')
  AND NOT c.relispartition  -- a partition is dumped through its root
ORDER BY n.nspname, c.relname
"""

_COLUMNS_SQL = """
SELECT a.attrelid, a.attname, a.atttypid,
       pg_catalog.format_type(a.atttypid, a.atttypmod) AS type
FROM pg_catalog.pg_attribute a
WHERE a.attrelid OPERATOR(pg_catalog.=) ANY($1::pg_catalog.oid[]) AND a.attnum OPERATOR(pg_catalog.>) 0
  AND NOT a.attisdropped
ORDER BY a.attrelid, a.attnum
"""

# The size now, not relpages (0 until the first VACUUM or ANALYZE). Sizing
# takes a lock, so this runs once the run holds its own locks on the tables.
_PAGES_SQL = """
SELECT t.oid,
       pg_catalog.sum(pg_catalog.pg_relation_size(p.oid))::pg_catalog.int8
        OPERATOR(pg_catalog./) pg_catalog.current_setting('block_size')::pg_catalog.int8 AS pages,
       pg_catalog.sum(pg_catalog.pg_table_size(p.oid))::pg_catalog.int8 AS bytes,
       COALESCE(pg_catalog.sum(pg_catalog.pg_relation_size(p.reltoastrelid)), 0)::pg_catalog.int8 AS toast_bytes,
       pg_catalog.sum(GREATEST(p.reltuples, 0))::pg_catalog.float8 AS rows,
       pg_catalog.bool_or(p.reltuples OPERATOR(pg_catalog.>=) 0) AS analyzed
FROM pg_catalog.unnest($1::pg_catalog.oid[]) AS t(oid)
JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) t.oid
CROSS JOIN LATERAL (
    SELECT r.oid, r.reltuples, r.reltoastrelid FROM pg_catalog.pg_class r
    WHERE r.oid OPERATOR(pg_catalog.=) ANY (
        CASE WHEN c.relkind OPERATOR(pg_catalog.=) 'p'
             THEN ARRAY(SELECT pt.relid FROM pg_catalog.pg_partition_tree(t.oid) pt
                        WHERE pt.isleaf)
             ELSE ARRAY[t.oid] END)
) p
GROUP BY t.oid
"""

# Domain -> base type, following domains over domains.
_BASE_TYPES_SQL = """
WITH RECURSIVE chain(start, oid, typtype, typbasetype) AS (
    SELECT t.oid, t.oid, t.typtype, t.typbasetype
    FROM pg_catalog.pg_type t WHERE t.oid OPERATOR(pg_catalog.=) ANY($1::pg_catalog.oid[])
  UNION ALL
    SELECT chain.start, t.oid, t.typtype, t.typbasetype
    FROM chain JOIN pg_catalog.pg_type t ON t.oid OPERATOR(pg_catalog.=) chain.typbasetype
    WHERE chain.typtype OPERATOR(pg_catalog.=) 'd'
)
SELECT chain.start, chain.oid AS base,
       pg_catalog.quote_ident(n.nspname) OPERATOR(pg_catalog.||) '.' OPERATOR(pg_catalog.||)
       pg_catalog.quote_ident(t.typname) AS base_name
FROM chain
JOIN pg_catalog.pg_type t ON t.oid OPERATOR(pg_catalog.=) chain.oid
JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) t.typnamespace
WHERE chain.typtype OPERATOR(pg_catalog.<>) 'd'
"""


async def discover(conn: Any, schemas: Sequence[str], include: Sequence[str],
                   exclude: Sequence[str]) -> list[Table]:
    """Tables to dump, in catalog order, with their columns and read plans."""
    present = {r[0] for r in await conn.fetch(
        "SELECT nspname FROM pg_catalog.pg_namespace "
        "WHERE nspname OPERATOR(pg_catalog.=) ANY($1::pg_catalog.text[])", list(schemas))}
    missing = [s for s in schemas if s not in present]
    if missing:
        raise ConfigError(f"--schema: schema {missing[0]!r} does not exist in this database")

    rows = await conn.fetch(_TABLES_SQL, list(schemas))
    chosen = set(select_tables([(r["nspname"], r["relname"]) for r in rows], include, exclude))
    rows = [r for r in rows if (r["nspname"], r["relname"]) in chosen]
    oids = [r["oid"] for r in rows]

    col_rows = await conn.fetch(_COLUMNS_SQL, oids)
    type_oids = sorted({r["atttypid"] for r in col_rows})
    bases = {r["start"]: (r["base"], r["base_name"]) for r in await conn.fetch(_BASE_TYPES_SQL, type_oids)}

    columns: dict[int, list[Column]] = {oid: [] for oid in oids}
    for r in col_rows:
        base_oid, base_name = bases[r["atttypid"]]
        # Casting to the bare base type (no typmod) never changes a value.
        columns[r["attrelid"]].append(Column(
            name=r["attname"], type=r["type"], kind=kind_for(base_oid),
            domain_base=base_name if r["atttypid"] != base_oid else None,
        ))
    return [
        Table(schema=r["nspname"], name=r["relname"], oid=r["oid"], partitioned=r["partitioned"],
              pages=r["pages"], columns=tuple(columns[r["oid"]]))
        for r in rows
    ]


async def measured(conn: Any, tables: Sequence[Table]) -> list[Table]:
    """The tables with their current size (call with the tables locked)."""
    sizes = {r["oid"]: r for r in await conn.fetch(_PAGES_SQL, [t.oid for t in tables])}
    def sized(table: Table, row: Any) -> Table:
        return dataclasses.replace(table, pages=row["pages"] or 0, bytes=row["bytes"] or 0,
                                   toast_bytes=row["toast_bytes"],
                                   rows_estimate=row["rows"] if row["analyzed"] else -1.0)

    return [sized(t, sizes[t.oid]) if t.oid in sizes else t for t in tables]
