"""Which tables a run dumps, their columns, and the SQL that reads them.

Identifiers are quoted here, once, and never interpolated any other way.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..core.errors import ConfigError
from ..format.encode import Kind, kind_for
from ..format.parquet import mapping
from ..postgres.schemadeps import Extension
from . import locks
from .sql import quote_ident

# How a column's values are written (the manifest's columns[].written):
WRITTEN_JSON = "json"  # to_json's own form (every built-in type, and types without a cast to json)
WRITTEN_TEXT = "text"  # the type's text output as a JSON string: a type with an extension's cast to json
WRITTEN_CAST = "cast"  # through that cast (--extension-types cast): GeoJSON, objects; not restorable exactly
WRITTEN = (WRITTEN_JSON, WRITTEN_TEXT, WRITTEN_CAST)
# --as-text NAME: the (domain-resolved) type OIDs it writes as WRITTEN_TEXT. numeric[] too (an array of
# strings); json/jsonb[] not: a restore could not tell a JSON string element from a value's text.
AS_TEXT_OIDS = {"numeric": (1700, 1231), "json": (114, 3802)}

# Any lower bound of an array other than 1 (JSON arrays have none: to_json drops them). One
# dimension, the common case, costs two header reads; more dimensions a look at array_dims.
_NOT_ONE_BASED = (
    "(pg_catalog.array_lower({c}, 1) OPERATOR(pg_catalog.<>) 1 OR (pg_catalog.array_ndims({c}) "
    "OPERATOR(pg_catalog.>) 1 AND pg_catalog.array_dims({c}) OPERATOR(pg_catalog.~) '\\[(?!1:)'))"
)


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # as format_type() shows it, e.g. "numeric(12,2)"
    kind: Kind
    domain_base: str | None = None  # quoted schema.typname of a domain's base type
    written: str = WRITTEN_JSON
    array: bool = False  # an array (or a domain over one): its lower bounds are checked
    type_oid: int = 0  # with typmod: what postgres/typeinfo.py describes for the manifest
    typmod: int = -1
    not_null: bool = False
    dimensions: int = 0  # attndims: declared, not enforced
    parquet: mapping.Typed | None = None  # with --format parquet: the column's type in the file

    def select_sql(self) -> str:
        col = quote_ident(self.name)
        if self.parquet is not None:
            return self._parquet_sql(col)
        if self.written == WRITTEN_TEXT:  # the type's text form: text, or an array of texts
            return f"CAST({col} AS pg_catalog.text{'[]' if self.array else ''})"
        if self.kind is Kind.TO_JSON:
            return f"pg_catalog.to_json({col})"  # to_json resolves domains itself
        if self.domain_base:  # read a domain as its base type, so its codec applies
            return f"CAST({col} AS {self.domain_base})"
        return col

    def _parquet_sql(self, col: str) -> str:
        assert self.parquet is not None
        if self.parquet.as_text:  # the type's text output
            return f"CAST({col} AS pg_catalog.text)"
        if self.domain_base:
            return f"CAST({col} AS {self.domain_base})"
        return col

    @property
    def bounded(self) -> bool:
        """Read with its bounds_sql(): an array written as a JSON array, or as a Parquet list."""
        return self.parquet.depth > 0 if self.parquet is not None else self.array

    def bounds_sql(self) -> str:
        """An array whose lower bounds are not all 1 as PostgreSQL's text form of it
        ('[0:1]={7,8}'), else NULL: the value written instead of the JSON array. In a Parquet
        file also an array of other dimensions than the column's list."""
        col = quote_ident(self.name)
        when = _NOT_ONE_BASED.format(c=col)
        if self.parquet is not None:
            when += f" OR pg_catalog.array_ndims({col}) OPERATOR(pg_catalog.<>) {int(self.parquet.depth)}"
        return f"CASE WHEN {when} THEN CAST({col} AS pg_catalog.text) END"


@dataclass(frozen=True)
class Table:
    schema: str
    name: str
    oid: int
    partitioned: bool
    pages: int
    columns: tuple[Column, ...]
    relations: int = 1  # what locking it locks: the table, or a partitioned table's whole tree
    extension: str | None = None  # a configuration table of this extension: only its user rows are dumped
    condition: str = ""  # the extension's filter of those rows ("WHERE ..."), "" for all of them
    # Set by measured(), partitions summed:
    bytes: int = 0  # its rows on disk: the heap and its TOAST table (not free space maps or indexes)
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

    def select_sql(self, first_page: int | None = None, end_page: int | None = None, tag: int | None = None) -> str:
        """All rows, or those on pages [first_page, end_page) (a TID range scan). With `tag`,
        each row starts with that number (a member of a grouped read: reader.Group)."""
        # ONLY: rows of legacy inheritance children belong to the child's own
        # file. A partitioned root must be read without ONLY to see its rows.
        only = "" if self.partitioned else "ONLY "
        # After the columns: each array column's text form when its bounds are not 1 (encode.RowEncoder).
        cols = ", ".join(
            ([] if tag is None else [str(int(tag))])
            + [c.select_sql() for c in self.columns]
            + [c.bounds_sql() for c in self.columns if c.bounded]
        )
        ranges = [
            f"ctid OPERATOR(pg_catalog.>=) '({first_page},0)'::pg_catalog.tid" if first_page is not None else "",
            f"ctid OPERATOR(pg_catalog.<) '({end_page},0)'::pg_catalog.tid" if end_page is not None else "",
        ]
        where = " AND ".join(r for r in ranges if r)
        if self.condition:  # the extension's own filter, as pg_dump applies it (never split: see plan_pieces)
            return f"SELECT {cols} FROM {only}{self.relation_sql()} {self.condition}"
        return f"SELECT {cols} FROM {only}{self.relation_sql()}" + (f" WHERE {where}" if where else "")

    def row_type(self) -> tuple[tuple[str, str, str, str | None, bool, mapping.Typed | None], ...]:
        """What the columns read as, in order: tables alike in this read in one UNION ALL."""
        return tuple((c.type, c.kind.name, c.written, c.domain_base, c.array, c.parquet) for c in self.columns)

    def parquet_columns(self) -> list[tuple[str, str, mapping.Typed]]:
        """(name, type, its Parquet type) per column: what a Parquet file of the table holds."""
        return [(c.name, c.type, c.parquet or mapping.Typed(mapping.TEXT)) for c in self.columns]

    @property
    def arrays(self) -> tuple[int, ...]:
        """Positions of the bounded array columns (their bounds follow the columns, in this order)."""
        return tuple(i for i, c in enumerate(self.columns) if c.bounded)


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
       GREATEST(c.relpages, 0)::pg_catalog.int8 AS pages,
       CASE WHEN c.relkind OPERATOR(pg_catalog.=) 'p'
            THEN (SELECT pg_catalog.count(*) FROM pg_catalog.pg_partition_tree(c.oid))::pg_catalog.int4
            ELSE 1 END AS relations
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
WHERE n.nspname OPERATOR(pg_catalog.=) ANY($1::pg_catalog.text[])
  AND c.relkind IN ('r', 'p')
  AND NOT c.relispartition  -- a partition is dumped through its root
  AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d  -- an extension's own table (its CREATE EXTENSION makes it)
                  WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
                    AND d.objid OPERATOR(pg_catalog.=) c.oid AND d.deptype OPERATOR(pg_catalog.=) 'e')
ORDER BY n.nspname, c.relname
"""

_CONFIG_TABLES_SQL = """
SELECT c.oid, n.nspname, c.relname, c.relkind OPERATOR(pg_catalog.=) 'p' AS partitioned,
       GREATEST(c.relpages, 0)::pg_catalog.int8 AS pages,
       CASE WHEN c.relkind OPERATOR(pg_catalog.=) 'p'
            THEN (SELECT pg_catalog.count(*) FROM pg_catalog.pg_partition_tree(c.oid))::pg_catalog.int4
            ELSE 1 END AS relations
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
WHERE c.oid OPERATOR(pg_catalog.=) ANY($1::pg_catalog.oid[]) AND c.relkind IN ('r', 'p')
ORDER BY n.nspname, c.relname
"""

_COLUMNS_SQL = """
SELECT a.attrelid, a.attname, a.atttypid, a.atttypmod, a.attnotnull, a.attndims,
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
       (pg_catalog.sum(pg_catalog.pg_relation_size(p.oid))
        OPERATOR(pg_catalog.+) COALESCE(pg_catalog.sum(pg_catalog.pg_relation_size(p.reltoastrelid)), 0)
       )::pg_catalog.int8 AS bytes,
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
       pg_catalog.quote_ident(t.typname) AS base_name,
       t.typlen OPERATOR(pg_catalog.=) -1 AND t.typelem OPERATOR(pg_catalog.<>) 0 AS array,
       t.typelem AS element
FROM chain
JOIN pg_catalog.pg_type t ON t.oid OPERATOR(pg_catalog.=) chain.oid
JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) t.typnamespace
WHERE chain.typtype OPERATOR(pg_catalog.<>) 'd'
"""


# Types that hold, at any depth (array element, domain base, composite field), a type that is not
# built in and has a cast to json or jsonb: to_json would write those values through the cast.
_CAST_TYPES_SQL = """
WITH RECURSIVE parts(top, t) AS (
    SELECT u.t, u.t FROM pg_catalog.unnest($1::pg_catalog.oid[]) AS u(t)
  UNION
    SELECT p.top, c.child
    FROM parts p
    JOIN pg_catalog.pg_type ty ON ty.oid OPERATOR(pg_catalog.=) p.t
    CROSS JOIN LATERAL (
        SELECT ty.typelem AS child WHERE ty.typlen OPERATOR(pg_catalog.=) -1 AND ty.typelem OPERATOR(pg_catalog.<>) 0
        UNION ALL SELECT ty.typbasetype WHERE ty.typtype OPERATOR(pg_catalog.=) 'd'
        UNION ALL SELECT a.atttypid FROM pg_catalog.pg_attribute a
                  WHERE ty.typtype OPERATOR(pg_catalog.=) 'c' AND a.attrelid OPERATOR(pg_catalog.=) ty.typrelid
                    AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped
    ) c
)
SELECT DISTINCT p.top FROM parts p
WHERE p.t OPERATOR(pg_catalog.>=) 16384  -- FirstNormalObjectId: not built in
  AND EXISTS (SELECT FROM pg_catalog.pg_cast c WHERE c.castsource OPERATOR(pg_catalog.=) p.t
              AND c.casttarget OPERATOR(pg_catalog.=) ANY ('{114,3802}'::pg_catalog.oid[]))  -- json, jsonb
"""


def _written(base_oid: int, text_bases: set[int]) -> str:
    return WRITTEN_TEXT if base_oid in text_bases else WRITTEN_JSON


async def discover(
    conn: Any,
    schemas: Sequence[str],
    include: Sequence[str],
    exclude: Sequence[str],
    extension_types: str = WRITTEN_TEXT,
    extensions: Sequence[Extension] = (),
    as_text: Sequence[str] = (),
    parquet: bool = False,
) -> list[Table]:
    """Tables to dump, in catalog order, with their columns and read plans; then the
    configuration tables of the dumped `extensions` (their user rows). With `parquet`, each
    column's type in a Parquet file (format/parquet/mapping.py) decides how it is read."""
    present = {
        r[0]
        for r in await conn.fetch(
            "SELECT nspname FROM pg_catalog.pg_namespace "
            "WHERE nspname OPERATOR(pg_catalog.=) ANY($1::pg_catalog.text[])",
            list(schemas),
        )
    }
    missing = [s for s in schemas if s not in present]
    if missing:
        raise ConfigError(f"--schema: schema {missing[0]!r} does not exist in this database")

    rows = list(await conn.fetch(_TABLES_SQL, list(schemas)))
    config = {table.oid: (ext.name, table.condition) for ext in extensions for table in ext.config}
    if config:
        rows += await conn.fetch(_CONFIG_TABLES_SQL, list(config))
    chosen = set(select_tables([(r["nspname"], r["relname"]) for r in rows], include, exclude))
    rows = [r for r in rows if (r["nspname"], r["relname"]) in chosen]
    oids = [r["oid"] for r in rows]

    col_rows = await conn.fetch(_COLUMNS_SQL, oids)
    type_oids = sorted({r["atttypid"] for r in col_rows})
    bases = {r["start"]: r for r in await conn.fetch(_BASE_TYPES_SQL, type_oids)}
    cast = {r[0] for r in await conn.fetch(_CAST_TYPES_SQL, type_oids)}
    text_bases = {oid for name in as_text for oid in AS_TEXT_OIDS[name]}
    elements = await _element_bases(conn, bases.values()) if parquet else {}

    columns: dict[int, list[Column]] = {oid: [] for oid in oids}
    for r in col_rows:
        base = bases[r["atttypid"]]
        base_oid, array = base["base"], base["array"]
        typed = (
            mapping.typed(
                base_oid,
                r["atttypmod"],
                elements.get(base["element"], 0) if array else 0,
                r["attndims"],
                "numeric" in as_text,
            )
            if parquet
            else None
        )
        written = extension_types if r["atttypid"] in cast else _written(base_oid, text_bases)
        # Casting to the bare base type (no typmod) never changes a value.
        columns[r["attrelid"]].append(
            Column(
                name=r["attname"],
                type=r["type"],
                kind=kind_for(base_oid),
                domain_base=base["base_name"] if r["atttypid"] != base_oid else None,
                written=typed.written if typed else written,
                parquet=typed,
                array=array,
                type_oid=r["atttypid"],
                typmod=r["atttypmod"],
                not_null=r["attnotnull"],
                dimensions=r["attndims"],
            )
        )
    return [
        Table(
            schema=r["nspname"],
            name=r["relname"],
            oid=r["oid"],
            partitioned=r["partitioned"],
            pages=r["pages"],
            columns=tuple(columns[r["oid"]]),
            relations=r["relations"],
            extension=config.get(r["oid"], (None, ""))[0],
            condition=config.get(r["oid"], (None, ""))[1],
        )
        for r in rows
    ]


async def _element_bases(conn: Any, bases: Iterable[Any]) -> dict[int, int]:
    """Each array element type's own base type (an array of a domain is one of its base)."""
    elements = sorted({r["element"] for r in bases if r["array"]})
    return {r["start"]: r["base"] for r in await conn.fetch(_BASE_TYPES_SQL, elements)} if elements else {}


SIZING_BATCH = 500  # relations sized per statement: each is locked while it is sized


async def measured(conn: Any, tables: Sequence[Table]) -> list[Table]:
    """The tables with their current size. Sizing locks each relation (and its TOAST
    table): a batch at a time, in a subtransaction that releases those locks."""
    batches: list[list[int]] = [[]]
    weight = 0
    for table in tables:
        if weight >= SIZING_BATCH:
            batches.append([])
            weight = 0
        batches[-1].append(table.oid)
        weight += table.relations
    sizes: dict[int, Any] = {}
    for batch in batches:
        if batch:
            async with locks.released(conn):
                sizes.update({r["oid"]: r for r in await conn.fetch(_PAGES_SQL, batch)})

    def sized(table: Table, row: Any) -> Table:
        return dataclasses.replace(
            table,
            pages=row["pages"] or 0,
            bytes=row["bytes"] or 0,
            toast_bytes=row["toast_bytes"],
            rows_estimate=row["rows"] if row["analyzed"] else -1.0,
        )

    return [sized(t, sizes[t.oid]) if t.oid in sizes else t for t in tables]
