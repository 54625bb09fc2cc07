"""Groups of schemas for the schema files of a catalog larger than one pg_dump may
lock: pg_dump locks every table it dumps until it ends, so each group holds no
more tables than the lock table's budget, and the groups come in an order in
which each needs only objects of groups before it (a type, a table a view or a
foreign key names, a partitioned table): their sections, concatenated in that
order, restore as one pg_dump's would. Schemas that need each other (a cycle)
stay in one group."""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from typing import Any

from ..core.errors import ConfigError

# Tables pg_dump would lock, per schema.
_TABLES_SQL = """
SELECT n.nspname, pg_catalog.count(*)::pg_catalog.int4
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
WHERE n.nspname OPERATOR(pg_catalog.=) ANY($1::pg_catalog.text[]) AND c.relkind IN ('r', 'p')
GROUP BY n.nspname
"""

# Which dumped schema holds an object that needs an object of another dumped schema.
_NEEDS_SQL = """
WITH obj(classid, objid, nsp) AS (
    SELECT 'pg_catalog.pg_class'::pg_catalog.regclass, c.oid, c.relnamespace FROM pg_catalog.pg_class c
  UNION ALL
    SELECT 'pg_catalog.pg_type'::pg_catalog.regclass, t.oid, t.typnamespace FROM pg_catalog.pg_type t
  UNION ALL
    SELECT 'pg_catalog.pg_proc'::pg_catalog.regclass, p.oid, p.pronamespace FROM pg_catalog.pg_proc p
  UNION ALL
    SELECT 'pg_catalog.pg_constraint'::pg_catalog.regclass, o.oid, o.connamespace FROM pg_catalog.pg_constraint o
  UNION ALL
    SELECT 'pg_catalog.pg_operator'::pg_catalog.regclass, o.oid, o.oprnamespace FROM pg_catalog.pg_operator o
  UNION ALL
    SELECT 'pg_catalog.pg_collation'::pg_catalog.regclass, o.oid, o.collnamespace FROM pg_catalog.pg_collation o
  UNION ALL
    SELECT 'pg_catalog.pg_rewrite'::pg_catalog.regclass, r.oid, c.relnamespace
    FROM pg_catalog.pg_rewrite r JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) r.ev_class
  UNION ALL
    SELECT 'pg_catalog.pg_attrdef'::pg_catalog.regclass, a.oid, c.relnamespace
    FROM pg_catalog.pg_attrdef a JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) a.adrelid
  UNION ALL
    SELECT 'pg_catalog.pg_trigger'::pg_catalog.regclass, g.oid, c.relnamespace
    FROM pg_catalog.pg_trigger g JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) g.tgrelid
  UNION ALL
    SELECT 'pg_catalog.pg_policy'::pg_catalog.regclass, y.oid, c.relnamespace
    FROM pg_catalog.pg_policy y JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) y.polrelid
)
SELECT DISTINCT a.nspname, b.nspname
FROM pg_catalog.pg_depend d
JOIN obj oa ON oa.classid OPERATOR(pg_catalog.=) d.classid AND oa.objid OPERATOR(pg_catalog.=) d.objid
JOIN obj ob ON ob.classid OPERATOR(pg_catalog.=) d.refclassid AND ob.objid OPERATOR(pg_catalog.=) d.refobjid
JOIN pg_catalog.pg_namespace a ON a.oid OPERATOR(pg_catalog.=) oa.nsp
JOIN pg_catalog.pg_namespace b ON b.oid OPERATOR(pg_catalog.=) ob.nsp
WHERE a.nspname OPERATOR(pg_catalog.=) ANY($1::pg_catalog.text[])
  AND b.nspname OPERATOR(pg_catalog.=) ANY($1::pg_catalog.text[])
  AND a.nspname OPERATOR(pg_catalog.<>) b.nspname
  AND d.deptype IN ('n', 'a')
"""


async def groups(conn: Any, schemas: Sequence[str], budget: int) -> list[list[str]]:
    """[] when one pg_dump may lock every table of `schemas`; else the groups, in order.
    ConfigError, before anything is written, when one schema (or cycle) alone is too large."""
    tables = {r[0]: r[1] for r in await conn.fetch(_TABLES_SQL, list(schemas))}
    if sum(tables.values()) <= budget:
        return []
    needs = [(r[0], r[1]) for r in await conn.fetch(_NEEDS_SQL, list(schemas))]
    return pack(list(schemas), needs, tables, budget)


def pack(
    schemas: list[str], needs: Sequence[tuple[str, str]], tables: Mapping[str, int], budget: int
) -> list[list[str]]:
    """Schemas in groups of at most `budget` tables, each group after those it needs
    (`needs`: (schema, schema it needs)); schemas in a cycle stay together."""
    units = _cycles(schemas, needs)  # each a list of schemas that must stay together
    unit_of = {s: i for i, unit in enumerate(units) for s in unit}
    after: dict[int, set[int]] = {i: set() for i in range(len(units))}
    for schema, needed in needs:
        if unit_of[schema] != unit_of[needed]:
            after[unit_of[schema]].add(unit_of[needed])
    result: list[list[str]] = []
    weight = 0
    for i in _ordered(after):
        unit = units[i]
        size = sum(tables.get(s, 0) for s in unit)
        if size > budget:
            named = (
                f"schema {unit[0]} holds"
                if len(unit) == 1
                else f"schemas {', '.join(unit)} (which need each other) hold"
            )
            raise ConfigError(
                f"the schema files: {named} {size:,} tables, more than one pg_dump may lock at once on this "
                f"server (about {budget:,}): raise max_locks_per_transaction (a restart), dump "
                "those schemas without schema files (--schema-files off), or dump fewer tables"
            )
        if not result or weight + size > budget:
            result.append([])
            weight = 0
        result[-1] += unit
        weight += size
    return result


def _cycles(schemas: list[str], needs: Sequence[tuple[str, str]]) -> list[list[str]]:
    """The strongly connected components of the needs graph (Kosaraju), each in --schema
    order, in --schema order of their first schema."""
    edges: dict[str, list[str]] = {s: [] for s in schemas}
    back: dict[str, list[str]] = {s: [] for s in schemas}
    for schema, needed in needs:
        edges[schema].append(needed)
        back[needed].append(schema)
    seen: set[str] = set()
    order = [node for s in schemas if s not in seen for node in _postorder(s, edges, seen)]
    seen = set()
    found = [_postorder(s, back, seen) for s in reversed(order) if s not in seen]
    position = {s: i for i, s in enumerate(schemas)}
    return sorted((sorted(c, key=position.__getitem__) for c in found), key=lambda c: position[c[0]])


def _postorder(start: str, edges: Mapping[str, list[str]], seen: set[str]) -> list[str]:
    """The nodes reachable from `start` and not yet `seen`, in depth-first post-order."""
    out: list[str] = []
    seen.add(start)
    stack = [(start, iter(edges[start]))]
    while stack:
        node, rest = stack[-1]
        nxt = next((n for n in rest if n not in seen), None)
        if nxt is None:
            stack.pop()
            out.append(node)
        else:
            seen.add(nxt)
            stack.append((nxt, iter(edges[nxt])))
    return out


def _ordered(after: Mapping[int, set[int]]) -> list[int]:
    """Units in an order where each comes after every unit it needs; ties in --schema order
    (Kahn's algorithm; the needs between units have no cycle)."""
    waiting = {i: len(needed) for i, needed in after.items()}
    needed_by: dict[int, list[int]] = {i: [] for i in after}
    for i, needed in after.items():
        for j in needed:
            needed_by[j].append(i)
    ready = [i for i, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        unit = heapq.heappop(ready)
        order.append(unit)
        for i in needed_by[unit]:
            waiting[i] -= 1
            if waiting[i] == 0:
                heapq.heappush(ready, i)
    return order
