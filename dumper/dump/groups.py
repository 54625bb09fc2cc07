"""Small tables read together.

A table read alone costs its own round trips (the lock, preparing the query,
the fetch, the end of its subtransaction) and the server's work for each; in
a schema-per-tenant catalog of thousands of small tables that is most of the
run. Small tables whose rows read alike (the same column types, in order:
catalog.Table.row_type) are read by one query instead, a reader.Group: each
keeps its own file, lock, checks and log lines.

A group is at most GROUP_TABLES tables, fewer when the lock table is small:
while a group is read its tables' locks (and their indexes', taken by the
planner) are held together on the reading connection.
"""

from __future__ import annotations

from collections.abc import Iterable

from .reader import Group, Piece

GROUP_TABLES = 100  # tables of one grouped read, at most
SMALL_PAGES = 8  # a table of at most this many pages (64 kB) on disk is small
LOCKS_PER_TABLE = 3  # the table, an index, a TOAST table
LOCK_SHARE = 20  # the run's groups hold at most 1/LOCK_SHARE of the lock budget at once


def size_for(budget: int, jobs: int) -> int:
    """Tables per group for a run of `jobs` connections under a lock budget of `budget`
    (locks.LockTable.budget); below 2, tables are read one by one."""
    return max(1, min(GROUP_TABLES, budget // (max(1, jobs) * LOCKS_PER_TABLE * LOCK_SHARE)))


def small(piece: Piece) -> bool:
    """A whole table, small on disk, read by a plain scan (no extension's filter, no
    partitions, no out-of-line values)."""
    t = piece.table
    return (
        piece.count == 1
        and not t.partitioned
        and not t.extension
        and not t.condition
        and not t.toast_bytes
        and t.pages <= SMALL_PAGES
    )


def grouped(pieces: Iterable[Piece], size: int) -> list[Piece | Group]:
    """`pieces` in order, small tables alike gathered into groups of up to `size` (each
    where its last member was); a table with no small table like it stays alone."""
    result: list[Piece | Group] = []
    gathering: dict[tuple[object, ...], list[Piece]] = {}
    for piece in pieces:
        if size < 2 or not small(piece):
            result.append(piece)
            continue
        members = gathering.setdefault(piece.table.row_type(), [])
        members.append(piece)
        if len(members) == size:
            result.append(Group(tuple(members), piece.lock))
            del gathering[piece.table.row_type()]
    for members in gathering.values():
        result.append(members[0] if len(members) == 1 else Group(tuple(members), members[0].lock))
    return result
