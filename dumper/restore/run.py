"""`dumper restore`: load a verified dump back into a database, exactly.

Every file is checked against the manifest before anything is loaded, and
hashed again while it loads. Then the target is checked (tables, columns,
types, emptiness, what a foreign-key cycle needs) before the first row goes
in. Tables load parents first (loadplan), each unit in its own transaction
(or all in one), batches of rows through json_populate_recordset, so the
server turns each JSON value back into its column's type.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from ..core.config import Settings, redact_url
from ..core.errors import (
    ConfigError,
    ConnectionLost,
    DumperError,
    DumpError,
    LoadError,
    OutputError,
    PermissionDenied,
    VerifyError,
    first_error,
)
from ..core.logs import current_table, log
from ..format.manifest import MANIFEST_NAME, parse, verify
from ..format.readback import RowBatches, holds_nul, join_object, json_array, may_hold_nul, split_object
from ..postgres import db, sequences
from ..postgres.catalog import quote_ident, select_tables
from ..restore import loadplan, rebuild
from ..storage.output import FAILURES, Output

JSON, JSON_ARRAY = 114, 199  # type OIDs
UNIT_ATTEMPTS = 3  # a unit whose connection dies is loaded again (its transaction rolled back)

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
    entry: dict[str, Any]  # the manifest's table entry
    oid: int  # 0: created by --create-tables
    columns: tuple[str, ...]  # the manifest's columns the server does not generate
    overriding: bool  # an identity column GENERATED ALWAYS: keep the dump's values
    json_columns: dict[str, int] = field(default_factory=dict)  # name -> JSON or JSON_ARRAY

    @property
    def qualified(self) -> str:
        return f"{self.entry['schema']}.{self.entry['table']}"

    @property
    def relation_sql(self) -> str:
        return f"{quote_ident(self.entry['schema'])}.{quote_ident(self.entry['table'])}"

    def insert_sql(self, source: str, prefix: str = "", instead: dict[str, str] | None = None) -> str:
        """INSERT of the rows `source` yields as records of this table's row type
        (a column named in `instead` takes that expression)."""
        instead = instead or {}
        cols = f" ({', '.join(quote_ident(c) for c in self.columns)})" if self.columns else ""  # none: defaults
        picked = ", ".join(instead.get(c, f"{prefix}{quote_ident(c)}") for c in self.columns)
        overriding = " OVERRIDING SYSTEM VALUE" if self.overriding else ""
        return f"INSERT INTO {self.relation_sql}{cols}{overriding} SELECT {picked} FROM {source}"


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


BATCH_SQL = "pg_catalog.json_populate_recordset(NULL::{rel}, {json})"
ROW_SQL = "pg_catalog.json_populate_record(NULL::{rel}, {json}) r"


def _json_param(n: int) -> str:
    """Parameter $n, sent as bytes (no decoding in Python), as json."""
    return f"pg_catalog.convert_from(${n}::pg_catalog.bytea, 'UTF8')::pg_catalog.json"


# --- before anything is loaded ------------------------------------------------


def _read_manifest(source: Output) -> dict[str, Any]:
    try:
        return parse(source.read(MANIFEST_NAME))
    except FileNotFoundError:
        raise VerifyError(
            f"{source.url_of(MANIFEST_NAME)} does not exist: not a complete dump "
            "(give the run's folder, e.g. ./dumps/20261124T020000Z)"
        ) from None


def chosen_entries(doc: dict[str, Any], include: Sequence[str], exclude: Sequence[str]) -> list[dict[str, Any]]:
    names = select_tables([(t["schema"], t["table"]) for t in doc["tables"]], include, exclude)
    wanted = set(names)
    return [t for t in doc["tables"] if (t["schema"], t["table"]) in wanted]


async def _inspect(conn: Any, entries: list[dict[str, Any]], create: bool) -> tuple[list[Target], list[str]]:
    """The target tables, checked against the manifest; and the SQL that
    creates the missing ones (--create-tables). Raises before any change."""
    found = {
        r["i"] - 1: r
        for r in await conn.fetch(_TARGETS_SQL, [e["schema"] for e in entries], [e["table"] for e in entries])
    }
    columns: dict[int, list[Any]] = {}
    for r in await conn.fetch(_COLUMNS_SQL, [r["oid"] for r in found.values()]):
        columns.setdefault(r["attrelid"], []).append(r)
    targets: list[Target] = []
    missing: list[str] = []
    problems: list[str] = []
    for i, entry in enumerate(entries):
        name = f"{entry['schema']}.{entry['table']}"
        if i not in found:
            missing.append(name)
            names = tuple(c["name"] for c in entry["columns"])
            json_columns = {
                c["name"]: {"json": JSON, "json[]": JSON_ARRAY}[c["type"]]
                for c in entry["columns"]
                if c["type"] in ("json", "json[]")
            }
            targets.append(Target(entry, 0, names, False, json_columns))
            continue
        row = found[i]
        have = {c["attname"]: c for c in columns.get(row["oid"], [])}
        for col in entry["columns"]:
            got = have.get(col["name"])
            if got is None:
                problems.append(f"table {name}: has no column {col['name']!r} ({col['type']}) that the dump holds")
            elif got["type"] != col["type"]:
                problems.append(f"table {name}: column {col['name']!r} is {got['type']}, the dump's is {col['type']}")
        kept = tuple(c["name"] for c in entry["columns"] if c["name"] in have and not have[c["name"]]["generated"])
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
    for schema in sorted({t.entry["schema"] for t in targets}):
        statements.append(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}")
    for target in targets:
        defs = []
        for col in target.entry["columns"]:
            try:  # to_regtype parses exactly one type name: nothing else can ride along into the DDL
                known = await conn.fetchval("SELECT pg_catalog.to_regtype($1) IS NOT NULL", col["type"])
            except asyncpg.PostgresError:
                known = False
            if not known:
                problems.append(f"type {col['type']} of column {target.qualified}.{col['name']}")
            defs.append(f"{quote_ident(col['name'])} {col['type']}")
        statements.append(f"CREATE TABLE {target.relation_sql} ({', '.join(defs)})")
    if problems:
        raise ConfigError(
            "--create-tables: the target lacks "
            + "; ".join(problems)
            + "; create these types first (an enum, a domain or a composite comes from the "
            "application's schema), or create the tables themselves"
        )
    return statements


async def _holding_rows(conn: Any, targets: list[Target]) -> list[str]:
    """The existing target tables that are not empty (an extension's configuration table
    holds the extension's own rows: only the user's are in the dump)."""
    holding = []
    for target in targets:
        if not target.oid or target.entry.get("extension"):
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


async def _keys(conn: Any, targets: list[Target]) -> list[loadplan.ForeignKey]:
    by_oid = {t.oid: t.qualified for t in targets if t.oid}
    return [
        loadplan.ForeignKey(by_oid[r["child"]], by_oid[r["parent"]], r["condeferrable"], r["conname"])
        for r in await conn.fetch(_KEYS_SQL)
        if r["child"] in by_oid and r["parent"] in by_oid
    ]


async def _may_disable_triggers(conn: Any) -> bool:
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


def refuse_cast_columns(entries: Sequence[dict[str, Any]]) -> None:
    """Columns written through an extension's cast to json (--extension-types cast) do not load back
    exactly (GeoJSON drops what it cannot say, an hstore object is not hstore's input): refused."""
    cast = [
        f"{e['schema']}.{e['table']}.{c['name']} ({c['type']})"
        for e in entries
        for c in e["columns"]
        if c.get("written") == "cast"
    ]
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


async def _emptying(conn: Any, targets: list[Target], user: str) -> list[str]:
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


def load_error(exc: BaseException, table: str) -> DumperError:
    """A server error while loading `table`, said so an operator can act on it."""
    text = str(exc)
    if isinstance(exc, db.LOST) or (isinstance(exc, asyncpg.InterfaceError) and "closed" in text):
        return ConnectionLost(f"table {table}: the connection to the server was lost ({type(exc).__name__}: {exc})")
    if isinstance(exc, asyncpg.InsufficientPrivilegeError):
        if "row-level security" in text:
            return PermissionDenied(
                f"table {table}: {text}; give the restoring role BYPASSRLS or make it the table's owner"
            )
        return PermissionDenied(
            f"table {table}: {text}; the restoring role needs INSERT on it, e.g. GRANT "
            f"pg_write_all_data TO <user> (PostgreSQL 14+) or GRANT INSERT ON {table} TO <user>"
        )
    if isinstance(exc, asyncpg.LockNotAvailableError):
        return db.table_error(exc, table)  # the same words as when a dump waits for its lock
    constraint = getattr(exc, "constraint_name", None)
    named = f" (constraint {constraint})" if constraint else ""
    return LoadError(f"table {table}: {type(exc).__name__}{named}: {text}")


class _Loader:
    """Loads units of tables; one instance per restore."""

    def __init__(self, settings: Settings, source: Output, doc: dict[str, Any], targets: list[Target]) -> None:
        self.settings = settings
        self.source = source
        self.doc = doc
        self.by_name = {t.qualified: t for t in targets}
        self.restored: dict[str, Restored] = {}
        self.bound = db.lock_wait_bound(settings)

    async def statement(self, conn: Any, sql: str, table: str, *args: Any, bounded: bool = True) -> str:
        try:
            async with db.stall_guard(self.bound if bounded else 0, f"table {table}"):
                return str(await conn.execute(sql, *args))
        except DumperError:
            raise
        except (asyncpg.PostgresError, asyncpg.InterfaceError, *db.LOST) as exc:
            raise load_error(exc, table) from exc

    async def batches(self, target: Target) -> AsyncIterator[tuple[list[bytes], bytes | None]]:
        """The table's rows, a batch at a time, with the batch as one JSON array
        (None when a row may hold a NUL escape). The next batch is read and
        joined in a thread while the caller's INSERT of this one runs."""
        compression, fmt = self.doc["compression"], self.doc["format"]
        name = f"{target.qualified} ({target.entry['path']})"

        def step(action: Callable[[], Any]) -> asyncio.Future[Any]:
            def guarded() -> Any:
                try:
                    return action()
                except (VerifyError, OutputError):
                    raise
                except FAILURES as exc:
                    raise self.source.reading_error(exc, target.entry["path"]) from exc

            return asyncio.ensure_future(asyncio.to_thread(guarded))

        def prepared() -> tuple[list[bytes], bytes | None] | None:
            batch = next(rows, None)
            if batch is None:
                return None
            return batch, None if any(map(may_hold_nul, batch)) else json_array(batch)

        chunks = await step(lambda: self.source.chunks(target.entry["path"]))
        if chunks is None:
            raise VerifyError(f"{name}: file is missing")
        reader = RowBatches(chunks, compression, fmt, name)
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
        reader.check(target.entry["rows"], target.entry["bytes"], target.entry["sha256"])

    async def load_table(self, conn: Any, target: Target, one_statement: bool) -> None:
        table = target.qualified
        token = current_table.set(table)
        started = time.monotonic()
        try:
            rel = target.relation_sql
            if one_statement:  # every row in first, so the table's references to itself check at the end
                await self.statement(
                    conn, "CREATE TEMPORARY TABLE dumper_rows (doc pg_catalog.json) ON COMMIT DROP", table
                )
                into = f"INSERT INTO pg_temp.dumper_rows SELECT pg_catalog.json_array_elements({_json_param(1)})"
            else:
                into = target.insert_sql(BATCH_SQL.format(rel=rel, json=_json_param(1)))
            async for batch, payload in self.batches(target):
                if payload is not None or one_statement:
                    await self.statement(conn, into, table, payload or json_array(batch))
                else:
                    await self.insert_around_nul(conn, target, into, batch)
                del batch, payload
            if one_statement:
                source = (
                    f"pg_temp.dumper_rows s CROSS JOIN LATERAL pg_catalog.json_populate_record(NULL::{rel}, s.doc) r"
                )
                await self.statement(conn, target.insert_sql(source, "r."), table, bounded=False)
                await self.statement(conn, "DROP TABLE pg_temp.dumper_rows", table)
            seconds = round(time.monotonic() - started, 3)
            self.restored[table] = Restored(
                target.entry["schema"], target.entry["table"], target.entry["rows"], target.entry["bytes"], seconds
            )
            log.info("loaded", extra={"rows": target.entry["rows"], "seconds": seconds})
        finally:
            current_table.reset(token)

    async def insert_around_nul(self, conn: Any, target: Target, into: str, batch: list[bytes]) -> None:
        """A batch in which some row's json values hold \\u0000: those rows one by
        one, their json values passed as parameters, the others as usual, in order."""
        run: list[bytes] = []
        for row in batch:
            members = split_object(row) if may_hold_nul(row) else []
            moved = [name for _, name, value in members if holds_nul(value)]
            if not moved:
                run.append(row)
                continue
            if run:
                await self.statement(conn, into, target.qualified, json_array(run))
                run = []
            instead: dict[str, str] = {}
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


async def _connect(settings: Settings, password: db.PasswordProvider) -> Any:
    """A session whose every statement --statement-timeout bounds (0: no limit)."""
    conn = await db.connect(settings, password)
    if settings.statement_timeout:
        try:
            async with db.stall_guard(settings.stall_timeout, "while setting up a connection"):
                await conn.execute(f"SET statement_timeout = {int(settings.statement_timeout * 1000)}")
        except BaseException:
            conn.terminate()
            raise
    return conn


async def run(settings: Settings, password: db.PasswordProvider) -> RestoreOutcome:
    source = Output.for_settings(settings)
    doc = await asyncio.to_thread(_read_manifest, source)
    entries = chosen_entries(doc, settings.include, settings.exclude)
    refuse_cast_columns(entries)
    if settings.with_schema:
        rebuild.require_files(doc)
    problems = []
    checks = [([entry], False) for entry in entries] + ([([], True)] if settings.with_schema else [])
    for tables, files in checks:
        try:
            problems += await asyncio.to_thread(verify, doc, source.chunks, tables, files)
        except FAILURES as exc:
            raise source.reading_error(exc, tables[0]["path"] if tables else None) from exc
    if problems:
        for problem in problems:
            log.error(f"MISMATCH {problem}")
        raise VerifyError(f"{len(problems)} mismatch(es) in {redact_url(settings.output)}: nothing was loaded")
    log.info(
        "dump verified",
        extra={"tables": len(entries), "rows": sum(e["rows"] for e in entries), "run_id": doc["run_id"]},
    )

    conn = await _connect(settings, password)
    try:
        if settings.with_schema:
            scripts = await asyncio.to_thread(rebuild.scripts, source, doc)
            async with db.preparing(settings, "while checking that the target is empty"):
                existing = await rebuild.refuse_occupied(conn, rebuild.dump_schemas(doc))
                first = await rebuild.extensions_ready(conn, doc, settings.user)
                await rebuild.outside_ready(conn, doc)
            await rebuild.apply(conn, "pre-data", scripts["pre-data"], existing, first)
        async with db.preparing(settings, "while checking the target tables"):
            targets, create = await _inspect(conn, entries, settings.create_tables)
            holding = await _holding_rows(conn, targets)
            keys = await _keys(conn, targets)
            units = loadplan.plan([t.qualified for t in targets], keys)
            cycles = [u for u in units if u.method == "replica"]
            may_disable = await _may_disable_triggers(conn) if cycles else False
            emptying = await _emptying(conn, targets, settings.user) if settings.truncate else []
        if holding and not settings.truncate:
            raise ConfigError(
                f"{len(holding)} target table(s) already hold rows: {', '.join(holding)}; nothing was "
                "changed (restore into empty tables, or give --truncate to empty them first)"
            )
        if cycles and not may_disable:
            named = "; ".join(" <-> ".join(u.tables) for u in cycles)
            raise PermissionDenied(
                f"foreign keys that are not DEFERRABLE form a cycle ({named}): no load order satisfies them, so "
                f"they must be off during the load (session_replication_role = replica), which {settings.user} "
                f"may not set; nothing was changed. Restore as a superuser or rds_superuser, or GRANT SET ON "
                f"PARAMETER session_replication_role TO {settings.user} (PostgreSQL 15+)"
            )
        outcome = await _load(settings, password, source, doc, targets, create + emptying, units, conn)
        if settings.with_schema:
            await rebuild.apply(conn, "post-data", scripts["post-data"], existing)
        if settings.with_schema or not settings.no_sequences:
            outcome.sequences = await _set_sequences(conn, settings, doc, targets)
        return outcome
    finally:
        conn.terminate()


async def _set_sequences(conn: Any, settings: Settings, doc: dict[str, Any], targets: list[Target]) -> int:
    """The dump's sequence positions: all of them after --with-schema (same
    names), else those owned by a loaded table's column (found by the column)."""
    recorded = doc.get("sequences") or []
    if not settings.with_schema:
        recorded = sequences.owned_by_tables(recorded, {(t.entry["schema"], t.entry["table"]) for t in targets})
    try:
        async with db.preparing(settings, "while setting the sequences"):
            done, missing = await sequences.set_positions(conn, recorded, by_owner=not settings.with_schema)
    except DumperError as exc:
        raise DumpError(
            f"{exc}; the rows are loaded, the sequences may be behind them (--no-sequences to skip this step)"
        ) from exc
    if missing:
        log.warning("sequences of the dump not found in the target, not set", extra={"sequences": ", ".join(missing)})
    log.info("sequences set", extra={"sequences": done})
    return done


async def _load(
    settings: Settings,
    password: db.PasswordProvider,
    source: Output,
    doc: dict[str, Any],
    targets: list[Target],
    create: list[str],
    units: list[loadplan.Unit],
    conn: Any,
) -> RestoreOutcome:
    """`create`: what runs first, in one transaction (CREATE TABLE, then the emptying of --truncate)."""
    loader = _Loader(settings, source, doc, targets)
    first = targets[0].qualified if targets else "-"
    prepare = list(create)  # CREATE TABLE (--create-tables), then TRUNCATE (--truncate)
    if settings.single_transaction:
        await loader.statement(conn, "BEGIN", first)
        for sql in prepare:
            await loader.statement(conn, sql, first, bounded=False)
        for unit in units:
            await loader.load_unit(conn, unit)
        await loader.statement(conn, "COMMIT", first, bounded=False)
    else:
        if prepare:
            await loader.statement(conn, "BEGIN", first)
            for sql in prepare:
                await loader.statement(conn, sql, first, bounded=False)
            await loader.statement(conn, "COMMIT", first)

        async def load(unit: loadplan.Unit, slot: list[Any]) -> None:
            for attempt in range(1, UNIT_ATTEMPTS + 1):
                if not slot:
                    slot.append(await _connect(settings, password))
                try:
                    await loader.statement(slot[0], "BEGIN", unit.tables[0])
                    await loader.load_unit(slot[0], unit)
                    await loader.statement(slot[0], "COMMIT", unit.tables[0], bounded=False)
                    return
                except ConnectionLost as exc:
                    slot.pop().terminate()
                    if attempt == UNIT_ATTEMPTS:
                        raise
                    log.warning(
                        "connection lost, loading the unit again",
                        extra={"tables": ", ".join(unit.tables), "attempt": attempt, "error": str(exc)},
                    )
                except BaseException:
                    slot.pop().terminate()  # its transaction is rolled back: the tables are as they were
                    raise

        await _each_unit(units, settings.jobs, load)
    order = [t.qualified for t in targets]
    return RestoreOutcome(
        [loader.restored[name] for name in order], f"{settings.host}:{settings.port}/{settings.dbname}"
    )
