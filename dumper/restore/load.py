"""Loading the rows of a verified dump: units of tables (loadplan) in order,
each in its own transaction (or all in one), batches of rows through
json_populate_recordset, so the server turns each JSON value back into its
column's type with the type's own input function. A unit whose connection
is lost is rolled back and loaded again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg

from ..core.errors import (
    ConnectionLost,
    DumperError,
    LoadError,
    OutputError,
    VerifyError,
    first_error,
)
from ..core.logs import current_table, log
from ..core.retry import failing_with, retrying
from ..core.settings import Settings
from ..format.copytext import SKIP, CopyRows, copy_columns
from ..format.describe.columns import json_as_text
from ..format.jsonnulls import JsonNulls, per_row
from ..format.manifest import Manifest
from ..format.readback import (
    holds_nul,
    join_object,
    json_array,
    may_hold_nul,
    split_object,
    table_blocks,
    table_rows,
)
from ..postgres import db
from ..postgres.sql import quote_ident
from ..postgres.translate import LOST, load_error
from ..storage.output import FAILURES, Output
from . import converters as converting
from . import loadplan
from .converters import Converters
from .copying import TableCopy
from .targets import JSON, Plan, Target

UNIT_ATTEMPTS = 3  # a unit whose connection dies is loaded again (its transaction rolled back)

BATCH_SQL = "pg_catalog.json_populate_recordset(NULL::{rel}, {json})"
ROW_SQL = "pg_catalog.json_populate_record(NULL::{rel}, {json}) r"
# A batch with JSON nulls (manifest json_nulls): its rows numbered, so that those rows' json values
# become JSON null (json_populate_record makes SQL NULL of a JSON null).
NUMBERED_SQL = (
    "pg_catalog.json_array_elements({json}) WITH ORDINALITY AS e(doc, n)"
    " CROSS JOIN LATERAL pg_catalog.json_populate_record(NULL::{rel}, e.doc) r"
)


def _json_null_when(number: str, column: str, param: int) -> str:
    """The column's value, JSON null where the row's number is in array parameter $param."""
    return (
        f"CASE WHEN {number} OPERATOR(pg_catalog.=) ANY (${param}::pg_catalog.int8[]) "
        f"THEN 'null' ELSE r.{quote_ident(column)} END"
    )


def _json_nulls_sql(number: str, columns: list[str], first_param: int) -> dict[str, str]:
    return {c: _json_null_when(number, c, first_param + i) for i, c in enumerate(columns)}


def _json_param(n: int) -> str:
    """Parameter $n, sent as bytes (no decoding in Python), as json."""
    return f"pg_catalog.convert_from(${n}::pg_catalog.bytea, 'UTF8')::pg_catalog.json"


Prepare = Callable[[Any, int], tuple[bytes | None, int]]


def _json_payload(batch: list[bytes], _: int) -> tuple[bytes | None, int]:
    return None if any(map(may_hold_nul, batch)) else json_array(batch), len(batch)


@dataclass(frozen=True)
class Restored:
    schema: str
    table: str
    rows: int
    bytes: int
    seconds: float


@dataclass
class RestoreOutcome:
    tables: list[Restored]
    target: str
    sequences: int = 0  # sequences set to the dump's positions

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.tables)


class Loader:
    """Loads units of tables; one instance per restore."""

    def __init__(
        self,
        settings: Settings,
        source: Output,
        doc: Manifest,
        targets: list[Target],
        checked_at_end: frozenset[str] = frozenset(),
        converters: Converters | None = None,
    ) -> None:
        self.checked_at_end = checked_at_end
        self.converters = converters
        self.settings = settings
        self.source = source
        self.doc = doc
        self.by_name = {t.qualified: dataclasses.replace(t, json_text=json_as_text(doc, t.entry)) for t in targets}
        self.restored: dict[str, Restored] = {}
        self.bound = db.lock_wait_bound(settings)

    async def statement(self, conn: Any, sql: str, table: str, *args: Any, bounded: bool = True) -> str:
        try:
            async with db.stall_guard(self.bound if bounded else 0, f"table {table}"):
                return str(await conn.execute(sql, *args))
        except DumperError:
            raise
        except (asyncpg.PostgresError, asyncpg.InterfaceError, *LOST) as exc:
            raise load_error(exc, table) from exc

    async def batches(
        self, target: Target, prepare: Prepare | None = None, blocks: bool = False
    ) -> AsyncIterator[tuple[Any, bytes | None]]:
        """The table's rows, a batch at a time (a list of row texts; with `blocks`, a block of rows and
        its row count), with what `prepare(batch, first row)` makes of it (and the batch's rows): by
        default the batch as one JSON array (None when a row may hold a NUL escape). The next batch is
        read and prepared in a thread while the caller's statement sends this one."""
        name = f"{target.qualified} ({target.entry.path})"
        if prepare is None:
            prepare = _json_payload
        first_row = 0

        def step(action: Callable[[], Any]) -> asyncio.Future[Any]:
            def guarded() -> Any:
                try:
                    return action()
                except (VerifyError, OutputError):
                    raise
                except FAILURES as exc:
                    raise self.source.reading_error(exc, target.entry.path) from exc

            return asyncio.ensure_future(asyncio.to_thread(guarded))

        def prepared() -> tuple[Any, bytes | None] | None:
            nonlocal first_row
            batch = next(rows, None)
            if batch is None:
                return None
            payload, count = prepare(batch, first_row)
            first_row += count
            return batch, payload

        chunks = await step(lambda: self.source.chunks(target.entry.path))
        if chunks is None:
            raise VerifyError(f"{name}: file is missing")
        reader = await step(lambda: (table_blocks if blocks else table_rows)(self.doc, target.entry, chunks, name))
        rows = iter(reader)
        pending = step(prepared)
        try:
            while (ready := await pending) is not None:
                pending = step(prepared)
                yield ready
        finally:
            if pending.done() and not pending.cancelled():
                pending.exception()  # retrieved: the error that matters is already on its way
            pending.cancel()  # the thread finishes its read; nobody waits for it
        reader.check(target.entry.rows, target.entry.bytes, target.entry.sha256)

    async def copy_table(self, conn: Any, target: Target, rows: CopyRows) -> None:
        """Every row of the table in one COPY statement (restore/copying.py)."""
        copy = TableCopy(
            target, rows, self.batches, self.converters, self.bound, target.qualified in self.checked_at_end
        )
        await copy.run(conn)

    async def load_table(self, conn: Any, target: Target, one_statement: bool) -> None:
        table = target.qualified
        token = current_table.set(table)
        started = time.monotonic()
        try:
            how = copy_columns(self.doc, target.entry, target.columns)
            if isinstance(how, list) and [c.name for c in how if c.kind != SKIP] != list(target.columns):
                how = "its columns to load are not the file's, in the file's order"
            if isinstance(how, list):
                await self.copy_table(conn, target, CopyRows(how))
            else:
                log.info("loaded through the server's JSON parser (slower than COPY)", extra={"why": how})
                await self.rows_through_json(conn, target, one_statement)
            seconds = round(time.monotonic() - started, 3)
            self.restored[table] = Restored(
                target.entry.schema, target.entry.table, target.entry.rows, target.entry.bytes, seconds
            )
            log.info("loaded", extra={"rows": target.entry.rows, "seconds": seconds})
        finally:
            current_table.reset(token)

    async def rows_through_json(self, conn: Any, target: Target, one_statement: bool) -> None:
        """The table's rows through json_populate_recordset, a batch per INSERT (`one_statement`:
        every row into a temporary table first, then one INSERT)."""
        table = target.qualified
        rel = target.relation_sql
        nulls = JsonNulls(target.entry.json_nulls, target.columns)
        if one_statement:  # every row in first, so the table's references to itself check at the end
            await self.statement(
                conn,
                "CREATE TEMPORARY TABLE dumper_rows (n pg_catalog.int8, doc pg_catalog.json) ON COMMIT DROP",
                table,
            )
            into = (
                "INSERT INTO pg_temp.dumper_rows SELECT $2::pg_catalog.int8 OPERATOR(pg_catalog.+) e.n, e.doc "
                f"FROM pg_catalog.json_array_elements({_json_param(1)}) WITH ORDINALITY AS e(doc, n)"
            )
        else:
            into = target.insert_sql(BATCH_SQL.format(rel=rel, json=_json_param(1)))
        first_row = 0
        async for batch, payload in self.batches(target):
            marked = nulls.within(first_row, len(batch)) if nulls else {}
            if one_statement:
                await self.statement(conn, into, table, payload or json_array(batch), first_row)
            elif payload is None:
                await self.insert_around_nul(conn, target, into, batch, marked)
            elif marked:
                columns = list(marked)
                numbered = target.insert_sql(
                    NUMBERED_SQL.format(rel=rel, json=_json_param(1)), "r.", _json_nulls_sql("e.n", columns, 2)
                )
                await self.statement(conn, numbered, table, payload, *marked.values())
            else:
                await self.statement(conn, into, table, payload)
            first_row += len(batch)
            del batch, payload
        if one_statement:
            source = f"pg_temp.dumper_rows s CROSS JOIN LATERAL pg_catalog.json_populate_record(NULL::{rel}, s.doc) r"
            whole = nulls.within(0, first_row) if nulls else {}
            instead = _json_nulls_sql("s.n", list(whole), 1)
            await self.statement(conn, target.insert_sql(source, "r.", instead), table, *whole.values(), bounded=False)
            await self.statement(conn, "DROP TABLE pg_temp.dumper_rows", table)

    async def insert_around_nul(
        self, conn: Any, target: Target, into: str, batch: list[bytes], marked: dict[str, list[int]]
    ) -> None:
        """A batch in which some row's json values hold \\u0000: those rows one by
        one, their json values passed as parameters, the others as usual, in order.
        A row with a JSON null (`marked`: 1-based positions per column) goes alone too."""
        nulled = per_row(marked)
        run: list[bytes] = []
        for i, row in enumerate(batch):
            members = split_object(row) if may_hold_nul(row) else []
            moved = [name for _, name, value in members if holds_nul(value)]
            if not moved and i not in nulled:
                run.append(row)
                continue
            if run:
                await self.statement(conn, into, target.qualified, json_array(run))
                run = []
            if not members:
                members = split_object(row)
            instead: dict[str, str] = {name: f"COALESCE(r.{quote_ident(name)}, 'null')" for name in nulled.get(i, [])}
            values: list[bytes] = []
            for name in moved:
                if name not in target.columns:
                    continue  # generated by the target: its value is not loaded
                kind = target.json_columns.get(name)
                if kind is None:
                    raise LoadError(
                        f"table {target.qualified}: column {name!r} holds a JSON \\u0000 escape inside "
                        "a value that is not of type json or json[]; PostgreSQL cannot take such a "
                        "value apart, so this row cannot be restored"
                    )
                values.append(next(v for _, n, v in members if n == name))
                expr = _json_param(len(values) + 1)
                instead[name] = expr if kind == JSON else f"ARRAY(SELECT pg_catalog.json_array_elements({expr}))"
            rest = join_object([(k, n, b"null" if n in moved else v) for k, n, v in members])
            sql = target.insert_sql(ROW_SQL.format(rel=target.relation_sql, json=_json_param(1)), "r.", instead)
            await self.statement(conn, sql, target.qualified, rest, *values)
        if run:
            await self.statement(conn, into, target.qualified, json_array(run))

    async def load_unit(self, conn: Any, unit: loadplan.Unit) -> None:
        """The unit's tables, within the transaction the caller opened."""
        first = unit.tables[0]
        if unit.method == "replica":
            await self.statement(conn, "SET LOCAL session_replication_role = replica", first)
            log.warning(
                "loading a foreign-key cycle with triggers and foreign-key checks off "
                "(session_replication_role = replica)",
                extra={"tables": ", ".join(unit.tables)},
            )
        elif unit.method == "deferred":
            await self.statement(conn, "SET CONSTRAINTS ALL DEFERRED", first)
        for name in unit.tables:
            await self.load_table(conn, self.by_name[name], unit.method == "one_statement")
        if unit.method == "replica":
            await self.statement(conn, "SET LOCAL session_replication_role = origin", first)


async def _each_unit(
    units: list[loadplan.Unit], jobs: int, load: Callable[[loadplan.Unit, list[Any]], Awaitable[None]]
) -> None:
    """Load units with `jobs` workers, each unit once every unit it needs is in.
    A worker keeps its connection in `slot[0]` between units."""
    done: set[int] = set()
    started: set[int] = set()
    changed = asyncio.Condition()

    async def worker() -> None:
        slot: list[Any] = []
        try:
            while True:
                async with changed:
                    while (
                        ready := next((i for i, u in enumerate(units) if i not in started and u.after <= done), None)
                    ) is None and len(started) < len(units):
                        await changed.wait()
                    if ready is None:
                        return
                    started.add(ready)
                await load(units[ready], slot)
                async with changed:
                    done.add(ready)
                    changed.notify_all()
        finally:
            for conn in slot:
                conn.terminate()

    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(min(jobs, len(units))):
                group.create_task(worker())
    except BaseExceptionGroup as exc:
        first = first_error(exc)
        raise first from first.__cause__


async def connect(settings: Settings, password: db.PasswordProvider) -> Any:
    """A session whose every statement --statement-timeout bounds (0: no limit)."""
    setup = [f"SET statement_timeout = {int(settings.statement_timeout * 1000)}"] if settings.statement_timeout else []
    return await db.connect(settings, password, setup=setup)


async def _prepare(loader: Loader, conn: Any, statements: list[str], first: str) -> None:
    """CREATE TABLE (--create-tables), then the emptying of --truncate, in the open transaction."""
    for sql in statements:
        await loader.statement(conn, sql, first, bounded=False)


async def load(
    settings: Settings,
    password: db.PasswordProvider,
    source: Output,
    doc: Manifest,
    plan: Plan,
    prepare: list[str],
    conn: Any,
) -> RestoreOutcome:
    """Every unit of `plan`; `prepare` runs first, in one transaction of its own (or in the one of
    --single-transaction)."""
    async with converting.started(settings) as converters:
        return await _load(
            Loader(settings, source, doc, plan.targets, plan.checked_at_end, converters), plan, prepare, conn, password
        )


async def _load(
    loader: Loader, plan: Plan, prepare: list[str], conn: Any, password: db.PasswordProvider
) -> RestoreOutcome:
    settings = loader.settings
    first = plan.targets[0].qualified if plan.targets else "-"
    if settings.single_transaction:
        await loader.statement(conn, "BEGIN", first)
        await _prepare(loader, conn, prepare, first)
        for unit in plan.units:
            await loader.load_unit(conn, unit)
        await loader.statement(conn, "COMMIT", first, bounded=False)
    else:
        if prepare:
            await loader.statement(conn, "BEGIN", first)
            await _prepare(loader, conn, prepare, first)
            await loader.statement(conn, "COMMIT", first)

        async def load_one(unit: loadplan.Unit, slot: list[Any]) -> None:
            async def attempt() -> None:
                if not slot:
                    slot.append(await connect(settings, password))
                try:
                    await loader.statement(slot[0], "BEGIN", unit.tables[0])
                    await loader.load_unit(slot[0], unit)
                    await loader.statement(slot[0], "COMMIT", unit.tables[0], bounded=False)
                except BaseException:
                    slot.pop().terminate()  # its transaction is rolled back: the tables are as they were
                    raise

            await retrying(
                attempt,
                attempts=UNIT_ATTEMPTS,
                heals=failing_with(ConnectionLost),
                say="connection lost, loading the unit again",
                fields={"tables": ", ".join(unit.tables)},
            )

        await _each_unit(plan.units, settings.jobs, load_one)
    order = [t.qualified for t in plan.targets]
    return RestoreOutcome(
        [loader.restored[name] for name in order], f"{settings.host}:{settings.port}/{settings.dbname}"
    )
