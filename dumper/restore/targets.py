"""The target of a restore, checked before anything changes: its tables and
columns against the manifest's (names, types), what --create-tables would
create, the tables that already hold rows, the foreign keys between the
chosen tables, what a cycle of keys needs, what --truncate needs, columns
that cannot come back (written through a cast).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from ..core.errors import ConfigError, PermissionDenied
from ..format.manifest import TableEntry
from ..postgres.sql import quote_ident
from . import loadplan

JSON, JSON_ARRAY = 114, 199  # type OIDs

_TARGETS_SQL = """
SELECT w.i, c.oid
FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.text[]), pg_catalog.unnest($2::pg_catalog.text[]))
     WITH ORDINALITY AS w(nspname, relname, i)
JOIN pg_catalog.pg_namespace n ON n.nspname OPERATOR(pg_catalog.=) w.nspname
JOIN pg_catalog.pg_class c ON c.relnamespace OPERATOR(pg_catalog.=) n.oid
                          AND c.relname OPERATOR(pg_catalog.=) w.relname
WHERE c.relkind IN ('r', 'p')
"""

_COLUMNS_SQL = """
SELECT a.attrelid, a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod) AS type,
       a.attgenerated OPERATOR(pg_catalog.<>) '' AS generated,
       a.attidentity OPERATOR(pg_catalog.=) 'a' AS identity_always,
       CASE WHEN ty.typtype OPERATOR(pg_catalog.=) 'd' THEN ty.typbasetype ELSE ty.oid END AS base
FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_type ty ON ty.oid OPERATOR(pg_catalog.=) a.atttypid
WHERE a.attrelid OPERATOR(pg_catalog.=) ANY($1::pg_catalog.oid[]) AND a.attnum OPERATOR(pg_catalog.>) 0
  AND NOT a.attisdropped
ORDER BY a.attrelid, a.attnum
"""

# Keys of partitions are clones of their root's (conparentid <> 0): one edge per key, between roots.
_KEYS_SQL = """
SELECT COALESCE(pg_catalog.pg_partition_root(co.conrelid)::pg_catalog.oid, co.conrelid) AS child,
       COALESCE(pg_catalog.pg_partition_root(co.confrelid)::pg_catalog.oid, co.confrelid) AS parent,
       co.condeferrable, co.conname
FROM pg_catalog.pg_constraint co
WHERE co.contype OPERATOR(pg_catalog.=) 'f' AND co.conparentid OPERATOR(pg_catalog.=) 0
"""

# Without SELECT on a table its rows cannot be counted; a table never written to has no pages.
_SIZE_SQL = """
SELECT COALESCE((SELECT pg_catalog.sum(pg_catalog.pg_relation_size(p.relid))::pg_catalog.int8
                 FROM pg_catalog.pg_partition_tree($1::pg_catalog.oid::pg_catalog.regclass) p),
                pg_catalog.pg_relation_size($1::pg_catalog.oid::pg_catalog.regclass))
"""


@dataclass(frozen=True)
class Target:
    entry: TableEntry  # the manifest's
    oid: int  # 0: created by --create-tables
    columns: tuple[str, ...]  # the manifest's columns the server does not generate
    overriding: bool  # an identity column GENERATED ALWAYS: keep the dump's values
    json_columns: dict[str, int] = field(default_factory=dict)  # name -> JSON or JSON_ARRAY
    json_text: dict[str, str] = field(default_factory=dict)  # json/jsonb written as text: name -> its type

    @property
    def qualified(self) -> str:
        return f"{self.entry.schema}.{self.entry.table}"

    @property
    def relation_sql(self) -> str:
        return f"{quote_ident(self.entry.schema)}.{quote_ident(self.entry.table)}"

    def _value(self, column: str, prefix: str) -> str:
        """A loaded record's value of `column`; a json value written as its text, the JSON string
        json_populate_record gives, is that text again (#>> '{}': the string's contents)."""
        value = f"{prefix}{quote_ident(column)}"
        if column in self.json_text:
            return f"CAST(({value} OPERATOR(pg_catalog.#>>) '{{}}'::pg_catalog.text[]) AS {self.json_text[column]})"
        return value

    def insert_sql(self, source: str, prefix: str = "", instead: dict[str, str] | None = None) -> str:
        """INSERT of the rows `source` yields as records of this table's row type
        (a column named in `instead` takes that expression)."""
        instead = instead or {}
        cols = f" ({', '.join(quote_ident(c) for c in self.columns)})" if self.columns else ""  # none: defaults
        picked = ", ".join(instead.get(c) or self._value(c, prefix) for c in self.columns)
        overriding = " OVERRIDING SYSTEM VALUE" if self.overriding else ""
        return f"INSERT INTO {self.relation_sql}{cols}{overriding} SELECT {picked} FROM {source}"


async def inspect(conn: Any, entries: Sequence[TableEntry], create: bool) -> tuple[list[Target], list[str]]:
    """The target tables, checked against the manifest; and the SQL that
    creates the missing ones (--create-tables). Raises before any change."""
    found = {
        r["i"] - 1: r for r in await conn.fetch(_TARGETS_SQL, [e.schema for e in entries], [e.table for e in entries])
    }
    columns: dict[int, list[Any]] = {}
    for r in await conn.fetch(_COLUMNS_SQL, [r["oid"] for r in found.values()]):
        columns.setdefault(r["attrelid"], []).append(r)
    targets: list[Target] = []
    missing: list[str] = []
    problems: list[str] = []
    for i, entry in enumerate(entries):
        name = f"{entry.schema}.{entry.table}"
        if i not in found:
            missing.append(name)
            names = tuple(c.name for c in entry.columns)
            json_columns = {
                c.name: {"json": JSON, "json[]": JSON_ARRAY}[c.type]
                for c in entry.columns
                if c.type in ("json", "json[]")
            }
            targets.append(Target(entry, 0, names, False, json_columns))
            continue
        row = found[i]
        have = {c["attname"]: c for c in columns.get(row["oid"], [])}
        for col in entry.columns:
            got = have.get(col.name)
            if got is None:
                problems.append(f"table {name}: has no column {col.name!r} ({col.type}) that the dump holds")
            elif got["type"] != col.type:
                problems.append(f"table {name}: column {col.name!r} is {got['type']}, the dump's is {col.type}")
        kept = tuple(c.name for c in entry.columns if c.name in have and not have[c.name]["generated"])
        overriding = any(have[c]["identity_always"] for c in kept)
        json_columns = {c: have[c]["base"] for c in kept if have[c]["base"] in (JSON, JSON_ARRAY)}
        targets.append(Target(entry, row["oid"], kept, overriding, json_columns))
    if problems:
        raise ConfigError(
            "the target tables do not match the dump: "
            + "; ".join(problems)
            + " (create them from the same schema, e.g. the application's migrations or "
            "pg_dump --schema-only)"
        )
    if missing and not create:
        raise ConfigError(
            f"{len(missing)} table(s) of the dump do not exist in the target: {', '.join(missing)}; "
            "create them first (the application's migrations, pg_dump --schema-only), or give "
            "--create-tables to create plain tables (no constraints) from the manifest"
        )
    creating = [t for t in targets if not t.oid]
    return targets, await _create_sql(conn, creating)


async def _create_sql(conn: Any, targets: list[Target]) -> list[str]:
    """CREATE statements for --create-tables; every type must exist in the target."""
    statements: list[str] = []
    problems: list[str] = []
    for schema in sorted({t.entry.schema for t in targets}):
        statements.append(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}")
    for target in targets:
        defs = []
        for col in target.entry.columns:
            try:  # to_regtype parses exactly one type name: nothing else can ride along into the DDL
                known = await conn.fetchval("SELECT pg_catalog.to_regtype($1) IS NOT NULL", col.type)
            except asyncpg.PostgresError:
                known = False
            if not known:
                problems.append(f"type {col.type} of column {target.qualified}.{col.name}")
            defs.append(f"{quote_ident(col.name)} {col.type}")
        statements.append(f"CREATE TABLE {target.relation_sql} ({', '.join(defs)})")
    if problems:
        raise ConfigError(
            "--create-tables: the target lacks "
            + "; ".join(problems)
            + "; create these types first (an enum, a domain or a composite comes from the "
            "application's schema), or create the tables themselves"
        )
    return statements


async def holding_rows(conn: Any, targets: list[Target]) -> list[str]:
    """The existing target tables that are not empty (an extension's configuration table
    holds the extension's own rows: only the user's are in the dump)."""
    holding = []
    for target in targets:
        if not target.oid or target.entry.extension:
            continue
        try:
            full = await conn.fetchval(f"SELECT EXISTS (SELECT FROM {target.relation_sql})")
        except asyncpg.InsufficientPrivilegeError:
            full = bool(await conn.fetchval(_SIZE_SQL, target.oid))
            if full:
                holding.append(
                    f"{target.qualified} (has pages; this role cannot read it to see whether they hold rows)"
                )
            continue
        if full:
            holding.append(target.qualified)
    return holding


async def keys(conn: Any, targets: list[Target]) -> list[loadplan.ForeignKey]:
    by_oid = {t.oid: t.qualified for t in targets if t.oid}
    return [
        loadplan.ForeignKey(by_oid[r["child"]], by_oid[r["parent"]], r["condeferrable"], r["conname"])
        for r in await conn.fetch(_KEYS_SQL)
        if r["child"] in by_oid and r["parent"] in by_oid
    ]


# Tables with a foreign key or a trigger of their own: a statement loading them ends with that work.
_CHECKED_SQL = """
SELECT co.conrelid AS oid FROM pg_catalog.pg_constraint co WHERE co.contype OPERATOR(pg_catalog.=) 'f'
UNION
SELECT tg.tgrelid FROM pg_catalog.pg_trigger tg WHERE NOT tg.tgisinternal
"""


async def checked_at_end(conn: Any, targets: list[Target]) -> frozenset[str]:
    """The targets (a partitioned table: any of its partitions) whose loading ends with foreign-key
    checks or triggers."""
    checked = {r["oid"] for r in await conn.fetch(_CHECKED_SQL)}
    if not checked:
        return frozenset()
    tree = await conn.fetch(
        "SELECT t.oid AS target, p.relid FROM pg_catalog.unnest($1::pg_catalog.oid[]) AS t(oid) "
        "CROSS JOIN LATERAL pg_catalog.pg_partition_tree(t.oid) p",
        [t.oid for t in targets if t.oid],
    )
    found = {r["target"] for r in tree if r["relid"] in checked}
    return frozenset(t.qualified for t in targets if t.oid in found)


async def may_disable_triggers(conn: Any) -> bool:
    """Whether this role may set session_replication_role (superuser,
    rds_superuser, or GRANT SET ON PARAMETER): tried, then rolled back."""
    await conn.execute("BEGIN")
    try:
        await conn.execute("SET LOCAL session_replication_role = replica")
        return True
    except asyncpg.InsufficientPrivilegeError:
        return False
    finally:
        await conn.execute("ROLLBACK")


# --- loading --------------------------------------------------------------------


def refuse_cast_columns(entries: Sequence[TableEntry]) -> None:
    """Columns written through an extension's cast to json (--extension-types cast) do not load back
    exactly (GeoJSON drops what it cannot say, an hstore object is not hstore's input): refused."""
    cast = [f"{e.schema}.{e.table}.{c.name} ({c.type})" for e in entries for c in e.columns if c.written == "cast"]
    if cast:
        raise ConfigError(
            f"{len(cast)} column(s) of the dump were written through their type's cast to json "
            f"(--extension-types cast), which does not come back exactly: {', '.join(cast)}; nothing was "
            "loaded (leave these tables out with --exclude, or restore a dump taken with "
            "--extension-types text)"
        )


# Of the target tables, those this role may not TRUNCATE; and the extension filter of a configuration table.
_TRUNCATE_SQL = """
SELECT t.oid, pg_catalog.has_table_privilege(t.oid, 'TRUNCATE') AS truncate,
       pg_catalog.has_table_privilege(t.oid, 'DELETE') AS delete,
       (SELECT COALESCE(e.extcondition[pg_catalog.array_position(e.extconfig, t.oid)], '')
        FROM pg_catalog.pg_extension e WHERE t.oid OPERATOR(pg_catalog.=) ANY (e.extconfig)) AS condition
FROM pg_catalog.unnest($1::pg_catalog.oid[]) AS t(oid)
"""


async def emptying(conn: Any, targets: list[Target], user: str) -> list[str]:
    """--truncate: the statements that empty the target tables, checked before anything
    changes: one TRUNCATE (tables that reference each other empty together), and for an
    extension's configuration table a DELETE of its user rows only (the extension's filter)."""
    existing = [t for t in targets if t.oid]
    rows = {r["oid"]: r for r in await conn.fetch(_TRUNCATE_SQL, [t.oid for t in existing])}
    plain = [t for t in existing if rows[t.oid]["condition"] is None]
    config = [t for t in existing if rows[t.oid]["condition"] is not None]
    refused = [f"{t.qualified} (TRUNCATE)" for t in plain if not rows[t.oid]["truncate"]]
    refused += [f"{t.qualified} (DELETE)" for t in config if not rows[t.oid]["delete"]]
    if refused:
        raise PermissionDenied(
            f"--truncate: {user} may not empty {', '.join(refused)}; nothing was changed. GRANT TRUNCATE ON "
            f"<table> TO {user} (pg_write_all_data grants INSERT, UPDATE and DELETE, not TRUNCATE), or empty the "
            "tables another way and restore without --truncate"
        )
    statements = ["TRUNCATE " + ", ".join(t.relation_sql for t in plain)] if plain else []
    statements += [f"DELETE FROM ONLY {t.relation_sql} {rows[t.oid]['condition']}".rstrip() for t in config]
    return statements


@dataclass(frozen=True)
class Plan:
    """What a restore loads, and in which order; `checked_at_end`: the tables whose load ends
    with the server's foreign-key checks or triggers (work that may take long and send nothing)."""

    targets: list[Target]
    units: list[loadplan.Unit]
    checked_at_end: frozenset[str] = frozenset()


def refuse_holding(holding: Sequence[str], truncate: bool) -> None:
    if holding and not truncate:
        raise ConfigError(
            f"{len(holding)} target table(s) already hold rows: {', '.join(holding)}; nothing was "
            "changed (restore into empty tables, or give --truncate to empty them first)"
        )


def refuse_cycles(cycles: Sequence[loadplan.Unit], may_disable: bool, user: str) -> None:
    if cycles and not may_disable:
        named = "; ".join(" <-> ".join(u.tables) for u in cycles)
        raise PermissionDenied(
            f"foreign keys that are not DEFERRABLE form a cycle ({named}): no load order satisfies them, so "
            f"they must be off during the load (session_replication_role = replica), which {user} "
            f"may not set; nothing was changed. Restore as a superuser or rds_superuser, or GRANT SET ON "
            f"PARAMETER session_replication_role TO {user} (PostgreSQL 15+)"
        )
