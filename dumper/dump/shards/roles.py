"""The two roles of a sharded run: index 0 coordinates an attempt, every other index follows the
newest attempt's plan until the run's manifest is written."""

from __future__ import annotations

import asyncio
import time

import msgspec

from ...core.errors import SnapshotLost
from ...core.logs import current_table, log
from ...core.settings import Settings
from ...format import layout
from ...format.manifest import TableEntry
from ...postgres import db
from ...postgres.catalog import Table
from ...storage.output import Output
from ..reader import Group, Piece
from .parts import join_table, read_share, unread, wait_for_pieces
from .plan import Plan, following, piece_ids, to_plan
from .state import POLL, Shared, Watch, heartbeat, stopped


def alive_path(run: str) -> str:
    """Index 0's heartbeat: one for the whole run, so that a process waiting for a new attempt sees it."""
    return f"{run}/{layout.SHARDS}/{layout.alive_name(0)}"


async def coordinate(
    settings: Settings,
    password: db.PasswordProvider,
    shared: Shared,
    work: list[tuple[Table, str]],
    snapshot_id: str,
    items: list[Piece | Group],
    committed: list[str],
) -> list[TableEntry]:
    """Index 0's attempt, once the snapshot is taken: the plan, its share, the others' pieces, and
    each table's file joined from them (listed in `committed` as soon as it is written)."""
    started = time.monotonic()
    attempt = await shared.newest() + 1
    folder = shared.folder(attempt)
    await shared.make_folders(attempt)
    plan = to_plan(attempt, snapshot_id, settings, items)
    await shared.put(f"{folder}/{layout.PLAN_NAME}", msgspec.json.encode(plan))
    ids = piece_ids(items)
    log.info("plan written", extra={"attempt": attempt, "shards": settings.shards, "pieces": len(ids)})
    async with heartbeat(shared, f"{folder}/{layout.alive_name(0)}"):
        await read_share(settings, password, shared, plan, work, await unread(shared, plan, 0))
        records = await wait_for_pieces(shared, plan, settings.stall_timeout)
    by_file: dict[str, list[tuple[int, str]]] = {}
    for (relpath, index), piece in ids.items():
        by_file.setdefault(relpath, []).append((index, piece))
    entries = []
    for table, relpath in work:
        token = current_table.set(table.qualified)
        try:
            pieces = [(piece, records[piece]) for _, piece in sorted(by_file[relpath])]
            entry = await join_table(settings, shared, folder, table, relpath, pieces, started)
        finally:
            current_table.reset(token)
        committed.append(relpath)
        entries.append(entry)
        log.info("done", extra={"rows": entry.rows, "bytes": entry.bytes, "pieces": len(pieces)})
    return entries


async def run_worker(settings: Settings, password: db.PasswordProvider, output: Output) -> None:
    """An index other than 0: follow index 0's attempts, read this index's share of each, until the
    run's manifest is written (returns) or index 0 is silent for --stall-timeout (DumpError)."""
    shared = Shared(output, settings.run_id)
    coordinator = Watch(settings.stall_timeout)
    followed = 0
    while True:
        plan = await _next_plan(shared, coordinator, followed)
        if plan is None:
            return  # the run is complete
        followed = plan.attempt
        mine = following(settings, plan)
        log.info("following the plan", extra={"attempt": plan.attempt, "shard": settings.shard_index})
        tables = {p.relpath: p.table for pieces in plan.items for p in pieces}
        work = [(table, relpath) for relpath, table in tables.items()]
        alive = f"{shared.folder(plan.attempt)}/{layout.alive_name(settings.shard_index)}"
        pending = await unread(shared, plan, settings.shard_index)
        if pending:  # (nothing left: the run may have ended meanwhile; nothing of it is made again)
            await shared.make_folders(plan.attempt)
            async with heartbeat(shared, alive):  # what index 0 watches while it waits for this share
                try:
                    await read_share(mine, password, shared, plan, work, pending)
                except SnapshotLost as exc:
                    log.warning("this attempt's snapshot is gone: waiting for a new one", extra={"error": str(exc)})
                    continue
        log.info("this shard's pieces are written", extra={"attempt": plan.attempt})
        if await _until_ended(shared, coordinator, plan.attempt):
            if pending:
                await shared.remove(alive)  # index 0 may have removed the shared state before the last beat
            return


async def _index0(shared: Shared, coordinator: Watch) -> None:
    coordinator.see(await shared.read(alive_path(shared.run)))
    if coordinator.silent():
        raise stopped("shard 0 (the coordinator) wrote no heartbeat", coordinator.bound)


async def _next_plan(shared: Shared, coordinator: Watch, after: int) -> Plan | None:
    """The plan of an attempt newer than `after` (None: the run is complete)."""
    while True:
        if await shared.complete():
            return None
        newest = await shared.newest()
        if newest > after and (plan := await shared.plan(newest)) is not None:
            return plan
        await _index0(shared, coordinator)
        await asyncio.sleep(POLL)


async def _until_ended(shared: Shared, coordinator: Watch, attempt: int) -> bool:
    """Wait until the run is complete (True) or a newer attempt has begun (False)."""
    while True:
        if await shared.complete():
            return True
        if await shared.newest() > attempt:
            return False
        await _index0(shared, coordinator)
        await asyncio.sleep(POLL)
