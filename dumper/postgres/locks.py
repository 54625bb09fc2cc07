"""The run's table locks and the server's lock table.

A table is locked ACCESS SHARE before it is read, as pg_dump locks it, so
that no DROP or ALTER changes it under the run. PostgreSQL keeps every lock a
transaction takes until the transaction ends, in one shared lock table of
about max_locks_per_transaction x (max_connections + max_prepared_transactions)
entries (6,400 with RDS's defaults on a small instance); a run that locks more
tables than that at once fails with "out of shared memory".

So the run plans its locks against the lock table (`plan`):

- **upfront** (the default while the tables fit): every table is locked by
  the run's first connection before any is read, and held to the end, as
  pg_dump does; DDL on a dumped table waits for the run. A reader asks for
  the table again with NOWAIT: a DDL request queued behind the run's lock
  would hold the read up while it waits for the run, so the run starts again
  and lets it go first (`reading`, LockQueued).
- **while-read** (when they do not fit, or asked for): each table is locked
  only while it is read, by the connection reading it, in a subtransaction
  whose end releases the lock and keeps the snapshot. DDL on a table not yet
  read can commit; a table rewritten since the snapshot (TRUNCATE, a rewriting
  ALTER TABLE, VACUUM FULL, CLUSTER) or dropped and made again is detected
  once its lock is held (`changed`), and the run starts again with a fresh
  snapshot: never a silently empty or wrong table.

Whatever the plan, every read and every sizing of tables runs in a
subtransaction (`reading`, `released`), so the locks they take (indexes while planning,
TOAST tables, sequences) end with them.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from ..core.errors import ConfigError, ConnectionLost, LockQueued, TableChanged
from ..core.settings import Settings
from .db import lock_wait_bound, stall_guard
from .translate import LOST, is_lost, table_error

UPFRONT, WHILE_READ = "upfront", "while-read"
SAVEPOINT = "dumper_scope"
_END_SCOPE = f"ROLLBACK TO SAVEPOINT {SAVEPOINT}; RELEASE SAVEPOINT {SAVEPOINT}"  # its locks end, the snapshot stays
HEADROOM = 0.25  # of the lock table, left to the rest of the server (and each reader's few locks)
LOCK_BATCH = 500  # tables per LOCK TABLE statement when locking up front

_SETTINGS_SQL = """
SELECT pg_catalog.current_setting('max_locks_per_transaction')::pg_catalog.int4,
       pg_catalog.current_setting('max_connections')::pg_catalog.int4,
       pg_catalog.current_setting('max_prepared_transactions')::pg_catalog.int4,
       (SELECT pg_catalog.count(*) FROM pg_catalog.pg_locks
        WHERE locktype OPERATOR(pg_catalog.=) 'relation' AND NOT fastpath)::pg_catalog.int4
"""


@dataclass(frozen=True)
class LockTable:
    """The server's shared lock table, as its settings size it."""

    per_transaction: int  # max_locks_per_transaction
    connections: int  # max_connections
    prepared: int  # max_prepared_transactions
    in_use: int  # relation locks other sessions hold in it now

    @property
    def size(self) -> int:
        return self.per_transaction * (self.connections + self.prepared)

    @property
    def budget(self) -> int:
        """Locks this run may hold at once, leaving the rest of the server its share."""
        return max(0, int(self.size * (1 - HEADROOM)) - self.in_use)

    def described(self) -> str:
        return (
            f"the server's lock table holds about {self.size:,} locks (max_locks_per_transaction "
            f"{self.per_transaction} x (max_connections {self.connections} + max_prepared_transactions "
            f"{self.prepared})), {self.in_use:,} in use"
        )


async def lock_table(conn: Any) -> LockTable:
    row = await conn.fetchrow(_SETTINGS_SQL)
    return LockTable(int(row[0]), int(row[1]), int(row[2]), int(row[3]))


@dataclass(frozen=True)
class LockPlan:
    mode: str  # UPFRONT or WHILE_READ
    relations: int  # what locking every table up front takes (partitions count)
    table: LockTable

    def described(self) -> str:
        how = (
            "every table is locked before any is read and held to the end, as pg_dump does"
            if self.mode == UPFRONT
            else "each table is locked only while it is read (a table changed since the snapshot starts the run again)"
        )
        return f"the run locks {self.relations:,} tables; {self.table.described()}: {how}"


def plan(relations: int, table: LockTable, asked: str) -> LockPlan:
    """Up front while the tables fit in the lock table's budget (or as --table-locks asks)."""
    if asked == UPFRONT and relations > table.budget:
        raise ConfigError(
            f"--table-locks upfront: the run would lock {relations:,} tables at once; {table.described()}; "
            "raise max_locks_per_transaction (a restart), or use --table-locks auto or while-read"
        )
    fits = relations <= table.budget
    return LockPlan(UPFRONT if asked == UPFRONT or (asked == "auto" and fits) else WHILE_READ, relations, table)


@contextlib.asynccontextmanager
async def released(conn: Any) -> AsyncIterator[None]:
    """A subtransaction: the locks taken inside end with it, the snapshot stays.
    On an error the connection is left as it is (the caller drops it)."""
    await conn.execute(f"SAVEPOINT {SAVEPOINT}")
    yield
    await conn.execute(_END_SCOPE)


Named = tuple[int, str, str]  # a table's oid, its relation_sql and its schema.table


async def lock_upfront(conn: Any, tables: Sequence[Named], settings: Settings) -> None:
    """ACCESS SHARE on every table, a batch of tables per statement (--lock-timeout bounds
    each lock's wait); a lock that cannot be had fails the run naming its table."""
    for start in range(0, len(tables), LOCK_BATCH):
        batch = tables[start : start + LOCK_BATCH]
        names = ", ".join(sql for _, sql, _ in batch)
        try:
            async with stall_guard(lock_wait_bound(settings), "while locking the tables"):
                await conn.execute(f"SAVEPOINT {SAVEPOINT}; LOCK TABLE {names} IN ACCESS SHARE MODE")
            await conn.execute(f"RELEASE SAVEPOINT {SAVEPOINT}")  # the locks stay with the run's transaction
        except LOST as exc:
            raise ConnectionLost(f"the connection was lost while locking the tables: {exc}") from exc
        except asyncpg.PostgresError as exc:
            await conn.execute(f"ROLLBACK TO SAVEPOINT {SAVEPOINT}")
            raise table_error(exc, await _blocked(conn, batch)) from exc


_HELD_SQL = """
SELECT l.relation FROM pg_catalog.pg_locks l
WHERE l.relation OPERATOR(pg_catalog.=) ANY($1::pg_catalog.oid[])
  AND l.pid OPERATOR(pg_catalog.<>) pg_catalog.pg_backend_pid()
  AND l.mode OPERATOR(pg_catalog.=) 'AccessExclusiveLock'
ORDER BY l.granted DESC
LIMIT 1
"""


_UNREADABLE_SQL = """
SELECT t.oid FROM pg_catalog.unnest($1::pg_catalog.oid[]) WITH ORDINALITY AS t(oid, n)
WHERE NOT pg_catalog.has_table_privilege(t.oid, 'SELECT')
ORDER BY t.n
LIMIT 1
"""


async def _blocked(conn: Any, batch: Sequence[Named]) -> str:
    """The table of `batch` whose lock could not be had: the first the run's role may not
    read, else the one another session holds (or waits for) ACCESS EXCLUSIVE on; the
    batch, if that session is gone by now."""
    oids = [oid for oid, _, _ in batch]
    with contextlib.suppress(asyncpg.PostgresError):
        culprit = await conn.fetchval(_UNREADABLE_SQL, oids) or await conn.fetchval(_HELD_SQL, oids)
        for oid, _, name in batch:
            if oid == culprit:
                return name
    return f"{batch[0][2]} (or another of the {len(batch)} tables locked with it)"


# Which of the tables (each a root: its partitions are checked too) no longer is what the
# snapshot saw: its storage (relfilenode) swapped since, its name now another relation's,
# or partitions attached since.
_CHANGED_SQL = """
WITH RECURSIVE tree(root, oid) AS (
    SELECT t.oid, t.oid FROM pg_catalog.unnest($1::pg_catalog.oid[]) AS t(oid)
  UNION ALL
    SELECT tree.root, i.inhrelid
    FROM tree
    JOIN pg_catalog.pg_class p ON p.oid OPERATOR(pg_catalog.=) tree.oid
    JOIN pg_catalog.pg_inherits i ON i.inhparent OPERATOR(pg_catalog.=) tree.oid
    WHERE p.relkind OPERATOR(pg_catalog.=) 'p'
)
SELECT tree.root FROM tree
LEFT JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) tree.oid
WHERE pg_catalog.pg_relation_filenode(tree.oid) IS DISTINCT FROM NULLIF(c.relfilenode, 0)
UNION
SELECT t.oid
FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.oid[]), pg_catalog.unnest($2::pg_catalog.text[])) AS t(oid, name)
WHERE pg_catalog.to_regclass(t.name) IS DISTINCT FROM t.oid
UNION
SELECT t.oid FROM pg_catalog.unnest($1::pg_catalog.oid[]) AS t(oid)
JOIN pg_catalog.pg_class r ON r.oid OPERATOR(pg_catalog.=) t.oid AND r.relkind OPERATOR(pg_catalog.=) 'p'
CROSS JOIN LATERAL pg_catalog.pg_partition_tree(t.oid) pt
WHERE pt.relid OPERATOR(pg_catalog.<>) ALL (
    ARRAY(SELECT tree.oid FROM tree WHERE tree.root OPERATOR(pg_catalog.=) t.oid))
"""


async def changed(conn: Any, tables: Sequence[Named]) -> None:
    """TableChanged naming the first of `tables` (each locked by now) that the run's
    snapshot cannot read as it was: the run then starts again."""
    if not tables:
        return
    found = {r[0] for r in await conn.fetch(_CHANGED_SQL, [t[0] for t in tables], [t[1] for t in tables])}
    for oid, _, name in tables:
        if oid in found:
            raise TableChanged(
                f"table {name} was rewritten or replaced after the run's snapshot (TRUNCATE, a rewriting "
                "ALTER TABLE, VACUUM FULL or CLUSTER; dropped and created again; or a partition attached): "
                "the snapshot cannot read it as it was"
            )


def called(tables: Sequence[Named]) -> str:
    """How an error names the tables one read locks: the table, or the first of a group."""
    first = tables[0][2]
    return first if len(tables) == 1 else f"{first} (or another of the {len(tables)} tables read with it)"


@contextlib.asynccontextmanager
async def reading(conn: Any, tables: Sequence[Named], settings: Settings, *, lock: bool) -> AsyncIterator[None]:
    """The subtransaction a piece of a table (or a group of small tables, read by one
    query) is read in: the locks the read takes (indexes', TOAST's and, while-read, the
    tables' own) end with it, the snapshot stays.

    `lock` (while-read): wait for ACCESS SHARE, then check each table is the one the
    snapshot saw. Up front, the run's transaction holds the tables already, and the read
    asks with NOWAIT (as pg_dump's workers do): only another session's ACCESS EXCLUSIVE
    request, queued behind the run's lock since, can stand in its way, and that session
    waits for the run to end while the read would wait for it. The run starts again
    instead (LockQueued): its locks end, the waiting command goes first."""
    name = called(tables)
    relations = ", ".join(sql for _, sql, _ in tables)
    with _lost_as_connection_lost(f"table {name}: the connection was lost while locking it"):
        try:
            if lock:
                async with stall_guard(settings.stall_timeout, f"table {name}: while starting its read"):
                    await conn.execute(f"SAVEPOINT {SAVEPOINT}")
                await lock_while_read(conn, tables, settings)
            else:
                async with stall_guard(settings.stall_timeout, f"table {name}: while starting its read"):
                    await conn.execute(f"SAVEPOINT {SAVEPOINT}; LOCK TABLE {relations} IN ACCESS SHARE MODE NOWAIT")
        except asyncpg.LockNotAvailableError as exc:
            if len(tables) > 1:  # which of the group: the subtransaction undone, ask the server
                with contextlib.suppress(asyncpg.PostgresError):
                    await conn.execute(f"ROLLBACK TO SAVEPOINT {SAVEPOINT}")
                    name = await _blocked(conn, tables)
            raise LockQueued(
                f"table {name}: another session asked for an ACCESS EXCLUSIVE lock on it (DDL, VACUUM FULL) "
                f"after the run had locked it ({exc}); that session waits for the run to end and the run's read "
                "would wait for it, so the run starts again and lets it go first"
            ) from exc
    yield
    # The rows are in; a connection lost now is still lost (the caller reads on, or the run starts again).
    with _lost_as_connection_lost(f"table {name}: the connection was lost as its read ended"):
        async with stall_guard(settings.stall_timeout, f"table {name}: while ending its read"):
            await conn.execute(_END_SCOPE)


@contextlib.contextmanager
def _lost_as_connection_lost(what: str) -> Iterator[None]:
    """A lost connection, whatever asyncpg or the socket raised, as ConnectionLost saying `what`."""
    try:
        yield
    except Exception as exc:
        if is_lost(exc):
            raise ConnectionLost(f"{what}: {exc}") from exc
        raise


async def lock_while_read(conn: Any, tables: Sequence[Named], settings: Settings) -> None:
    """Inside the reading subtransaction: ACCESS SHARE on the tables, then check each is
    still the table the snapshot saw."""
    name = called(tables)
    relations = ", ".join(sql for _, sql, _ in tables)
    try:
        async with stall_guard(lock_wait_bound(settings), f"table {name}: while locking it"):
            await conn.execute(f"LOCK TABLE {relations} IN ACCESS SHARE MODE")
        await changed(conn, tables)
    except LOST as exc:
        raise ConnectionLost(f"table {name}: the connection was lost while locking it: {exc}") from exc
    except asyncpg.PostgresError as exc:
        raise table_error(exc, name) from exc
