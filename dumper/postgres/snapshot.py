"""Reading in the run's snapshot: its one transaction exported, every reader
joined to it, the tables locked as pg_dump locks them, and the rows streamed
from a server-side cursor in batches sized by bytes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg

from ..core.errors import ConnectionLost, SnapshotLost
from ..core.settings import Settings
from .db import lock_wait_bound, stall_guard
from .sql import quote_literal
from .translate import LOST, table_error

# JIT compiling costs hundreds of milliseconds a statement where the planner's estimates are
# large (a catalog query over thousands of tables, a scan of a big table), and a dump's
# statements only scan and return columns: never worth it (pg_dump's COPY is not planned at
# all). PostgreSQL 10 has no such setting, hence the condition.
NO_JIT = (
    "SELECT pg_catalog.set_config('jit', 'off', false) WHERE "
    "pg_catalog.current_setting('server_version_num')::pg_catalog.int4 OPERATOR(pg_catalog.>=) 110000"
)


async def export_snapshot(conn: Any) -> str:
    """Start the run's one transaction and share its snapshot."""
    await conn.execute(f"BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; {NO_JIT}")
    return str(await conn.fetchval("SELECT pg_catalog.pg_export_snapshot()"))


async def import_snapshot(conn: Any, snapshot_id: str, settings: Settings) -> None:
    """Join the run's snapshot; SnapshotLost once its exporting transaction is gone."""
    try:
        async with stall_guard(settings.stall_timeout, f"while joining snapshot {snapshot_id}"):
            await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            await conn.execute("SET TRANSACTION SNAPSHOT " + quote_literal(snapshot_id))
            await conn.execute(f"SET LOCAL statement_timeout = {int(settings.statement_timeout * 1000)}; {NO_JIT}")
    except LOST as exc:
        raise ConnectionLost(f"the connection was lost while joining snapshot {snapshot_id}: {exc}") from exc
    except asyncpg.PostgresError as exc:
        raise SnapshotLost(
            f"could not join the run's snapshot {snapshot_id} (its transaction has "
            f"ended, e.g. the server restarted): {exc}"
        ) from exc


async def lock_table(conn: Any, relation_sql: str, table: str, settings: Settings) -> None:
    """ACCESS SHARE, as pg_dump takes: no DROP/ALTER until the run ends."""
    try:
        async with stall_guard(lock_wait_bound(settings), f"table {table}: while locking it"):
            await conn.execute(f"LOCK TABLE {relation_sql} IN ACCESS SHARE MODE")
    except LOST as exc:
        raise ConnectionLost(f"table {table}: the connection was lost while locking it: {exc}") from exc
    except asyncpg.PostgresError as exc:
        raise table_error(exc, table) from exc


async def stream(
    conn: Any, sql: str, table: str, next_size: Callable[[], int], stall_timeout: float
) -> AsyncIterator[list[Any]]:
    """Batches of records from a server-side cursor, each as large as
    `next_size()` says at that moment (so the caller can bound bytes, not rows).
    A fetch that gets no data for `stall_timeout` seconds ends the read."""
    where = f"table {table}"
    try:
        async with stall_guard(stall_timeout, where):
            cursor = await conn.cursor(sql)
        while True:
            size = next_size()
            async with stall_guard(stall_timeout, where):
                records = await cursor.fetch(size)
            last = len(records) < size  # before the caller sees (and may clear) the list
            if records:
                yield records
            if last:
                return
            del records  # not alive during the next fetch
    except LOST as exc:
        # Terminated backend, server restart, network: the connection object is
        # unusable now (InternalClientError when the notice came between fetches).
        raise ConnectionLost(
            f"table {table}: the connection to the server was lost ({type(exc).__name__}: {exc})"
        ) from exc
    except asyncpg.InterfaceError as exc:
        if "closed" not in str(exc):  # "the underlying connection is closed": lost, as above
            raise table_error(exc, table) from exc
        raise ConnectionLost(f"table {table}: the connection to the server was lost ({exc})") from exc
    except (asyncpg.PostgresError, OSError) as exc:
        raise table_error(exc, table) from exc
