"""`dumper restore`: load a verified dump back into a database, exactly.

Every file is checked against the manifest before anything is loaded, and
hashed again while it loads. Then the target is checked (targets.py: tables,
columns, types, emptiness, what a foreign-key cycle needs) before the first
row goes in; the rows load parents first (load.py); with --with-schema the
dump's own schema files build the tables around them (rebuild.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from ..core.errors import DumperError, DumpError, VerifyError
from ..core.logs import log
from ..core.malloc import young_gc_only
from ..core.settings import Settings
from ..core.urls import redact_url
from ..format.manifest import Manifest, TableEntry
from ..format.verify import verify
from ..postgres import db, sequences
from ..postgres.catalog import select_tables
from ..storage.output import FAILURES, Output
from ..storage.runs import read_manifest
from . import loadplan, rebuild, targets
from .load import RestoreOutcome, connect, load


def chosen_entries(doc: Manifest, include: Sequence[str], exclude: Sequence[str]) -> list[TableEntry]:
    names = select_tables([(t.schema, t.table) for t in doc.tables], include, exclude)
    wanted = set(names)
    return [t for t in doc.tables if (t.schema, t.table) in wanted]


async def _verified(settings: Settings, source: Output) -> tuple[Manifest, list[TableEntry]]:
    """The manifest and the chosen tables, every file checked first (nothing is loaded on a mismatch)."""
    doc = await asyncio.to_thread(read_manifest, source)
    entries = chosen_entries(doc, settings.include, settings.exclude)
    targets.refuse_cast_columns(entries)
    if settings.with_schema:
        rebuild.require_files(doc)
    problems = []
    checks = [([entry], False) for entry in entries] + ([([], True)] if settings.with_schema else [])
    for tables, files in checks:
        try:
            problems += await asyncio.to_thread(verify, doc, source.chunks, tables, files)
        except FAILURES as exc:
            raise source.reading_error(exc, tables[0].path if tables else None) from exc
    if problems:
        for problem in problems:
            log.error(f"MISMATCH {problem}")
        raise VerifyError(f"{len(problems)} mismatch(es) in {redact_url(settings.output)}: nothing was loaded")
    rows = sum(e.rows for e in entries)
    log.info("dump verified", extra={"tables": len(entries), "rows": rows, "run_id": doc.run_id})
    return doc, entries


async def _planned(conn: Any, settings: Settings, entries: list[TableEntry]) -> tuple[targets.Plan, list[str]]:
    """The target, checked before anything changes; the load plan and the statements that run first."""
    async with db.preparing(settings, "while checking the target tables"):
        tables, create = await targets.inspect(conn, entries, settings.create_tables)
        holding = await targets.holding_rows(conn, tables)
        units = loadplan.plan([t.qualified for t in tables], await targets.keys(conn, tables))
        cycles = [u for u in units if u.method == "replica"]
        may_disable = await targets.may_disable_triggers(conn) if cycles else False
        emptying = await targets.emptying(conn, tables, settings.user) if settings.truncate else []
        checked = await targets.checked_at_end(conn, tables)
    targets.refuse_holding(holding, settings.truncate)
    targets.refuse_cycles(cycles, may_disable, settings.user)
    return targets.Plan(tables, units, checked), create + emptying


async def run(settings: Settings, password: db.PasswordProvider) -> RestoreOutcome:
    source = Output.for_settings(settings)
    doc, entries = await _verified(settings, source)
    conn = await connect(settings, password)
    try:
        if settings.with_schema:
            scripts = await asyncio.to_thread(rebuild.scripts, source, doc)
            async with db.preparing(settings, "while checking that the target is empty"):
                existing = await rebuild.refuse_occupied(conn, doc.dumped_schemas)
                first = await rebuild.extensions_ready(conn, doc, settings.user)
                await rebuild.outside_ready(conn, doc)
            await rebuild.apply(conn, "pre-data", scripts["pre-data"], existing, first)
        plan, prepare = await _planned(conn, settings, entries)
        with young_gc_only():  # rows are short-lived and acyclic, as a dump's
            outcome = await load(settings, password, source, doc, plan, prepare, conn)
        if settings.with_schema:
            await rebuild.apply(conn, "post-data", scripts["post-data"], existing)
        if settings.with_schema or not settings.no_sequences:
            outcome.sequences = await _set_sequences(conn, settings, doc, plan.targets)
        return outcome
    finally:
        conn.terminate()


async def _set_sequences(conn: Any, settings: Settings, doc: Manifest, loaded: list[targets.Target]) -> int:
    """The dump's sequence positions: all of them after --with-schema (same
    names), else those owned by a loaded table's column (found by the column)."""
    recorded = doc.sequences
    if not settings.with_schema:
        recorded = sequences.owned_by_tables(recorded, {(t.entry.schema, t.entry.table) for t in loaded})
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
