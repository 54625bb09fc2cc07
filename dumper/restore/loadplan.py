"""The order a restore loads tables in, from their foreign keys.

Pure: table names and foreign-key edges in, load units out. A unit is one
table, or the tables of one foreign-key cycle, loaded in one transaction.
Parents load before children; how a unit gets past its own references:

- plain: no reference inside the unit; batches of rows, one INSERT each.
- one_statement: the table references itself; every row goes through a
  temporary table into one INSERT, so the checks run when all rows are in.
- deferred: every foreign key inside the unit is DEFERRABLE; checked at COMMIT.
- replica: a cycle of non-deferrable keys; loaded with
  session_replication_role = replica (foreign-key checks and triggers off),
  which needs superuser, rds_superuser or SET on that parameter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ForeignKey:
    child: str  # schema.table that holds the key
    parent: str  # schema.table it references
    deferrable: bool
    name: str


@dataclass(frozen=True)
class Unit:
    tables: tuple[str, ...]  # in the order given to plan()
    method: str  # plain | one_statement | deferred | replica
    after: frozenset[int]  # indices of the units that must be committed first


def _components(nodes: Sequence[str], parents: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components, each after every component it references
    (Tarjan's algorithm, iterative: a long chain of keys must not hit the recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(sorted(parents[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(parents[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    found.append(component)
    return found


def plan(tables: Sequence[str], keys: Sequence[ForeignKey]) -> list[Unit]:
    """Load units, parents first. Keys to or from tables outside `tables` are
    ignored (the server checks them against what the target already holds)."""
    chosen = set(tables)
    keys = [k for k in keys if k.child in chosen and k.parent in chosen]
    parents: dict[str, set[str]] = {t: set() for t in tables}
    for key in keys:
        parents[key.child].add(key.parent)
    position = {t: i for i, t in enumerate(tables)}
    unit_of: dict[str, int] = {}
    units: list[Unit] = []
    for component in _components(tables, parents):
        members = set(component)
        inside = [k for k in keys if k.child in members and k.parent in members]
        if not inside:
            method = "plain"
        elif all(k.deferrable for k in inside):
            method = "deferred"
        elif len(members) == 1:
            method = "one_statement"
        else:
            method = "replica"
        after = frozenset(unit_of[p] for t in members for p in parents[t] if p not in members)
        for table in members:
            unit_of[table] = len(units)
        units.append(Unit(tuple(sorted(members, key=position.__getitem__)), method, after))
    return units
