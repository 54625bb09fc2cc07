"""The shared state of a sharded run, in its run folder (layout.py's `.shards/`): what one process
reads and writes there, heartbeats, and the watch on another process's sign of life."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import msgspec

from ...core.errors import DumpError
from ...format import layout
from ...format.layout import MANIFEST_NAME
from ...storage.output import Output
from .plan import Plan

BEAT = 2.0  # seconds between a process's heartbeats
POLL = 0.5  # seconds between looks at the shared state


@dataclass
class Shared:
    """A sharded run's folder of shared state, as one process sees it."""

    output: Output
    run: str

    def attempts(self) -> list[int]:
        found = (layout.attempt_of(n) for n in self.output.names(f"{self.run}/{layout.SHARDS}"))
        return sorted(a for a in found if a is not None)

    async def newest(self) -> int:
        """The newest attempt begun (0: none yet)."""
        return max(await asyncio.to_thread(self.attempts), default=0)

    def folder(self, attempt: int) -> str:
        return layout.attempt_folder(self.run, attempt)

    async def make_folders(self, attempt: int) -> None:
        """The attempt's folder and its parts' (locally; an object store has none to make)."""
        folder = self.folder(attempt)
        await asyncio.to_thread(self.output.make_folders, [f"{folder}/x", f"{folder}/{layout.part_name('x')}"])

    async def put(self, relpath: str, data: bytes) -> None:
        await self.output.put(relpath, data, exclusive=False)

    async def read(self, relpath: str) -> bytes | None:
        try:
            return await asyncio.to_thread(self.output.read, relpath)
        except FileNotFoundError:
            return None

    async def plan(self, attempt: int) -> Plan | None:
        data = await self.read(f"{self.folder(attempt)}/{layout.PLAN_NAME}")
        return msgspec.json.decode(data, type=Plan) if data is not None else None

    async def recorded(self, attempt: int) -> set[str]:
        """The pieces of the attempt whose record is written."""
        names = await asyncio.to_thread(self.output.names, f"{self.folder(attempt)}/parts")
        return {n.removesuffix(".json") for n in names if n.endswith(".json")}

    async def remove(self, relpath: str) -> None:
        """Best effort: a file this process wrote, once nobody reads it any more (a folder is index
        0's to remove: a process removing one while index 0 removes the tree would stop it halfway)."""
        await asyncio.to_thread(self.output.remove, relpath)

    async def complete(self) -> bool:
        return await asyncio.to_thread(self.output.exists, f"{self.run}/{MANIFEST_NAME}")


@contextlib.asynccontextmanager
async def heartbeat(shared: Shared, relpath: str) -> AsyncIterator[None]:
    """A counter written to `relpath` every BEAT seconds while the block runs. Leaving the block
    waits for a write under way: once it is left, this process writes no beat any more (so that
    whoever removes the shared state after it does not see a beat land afterwards)."""
    stop = asyncio.Event()

    async def beat() -> None:
        count = 0
        while not stop.is_set():
            count += 1
            with contextlib.suppress(Exception):  # a missed beat is seen as silence, not as an error here
                await shared.put(relpath, f"{count}\n".encode())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), BEAT)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        stop.set()
        await _ended(task)


async def _ended(task: asyncio.Task[None]) -> None:
    """The beat task's end; a write under way is bounded by the store's own --stall-timeout. If
    this process is itself cancelled meanwhile (SIGTERM), the task goes with it."""
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        task.cancel()
        raise


class Watch:
    """Another process's sign of life: its heartbeat (or anything) changing; silent() once it
    has not changed for `bound` seconds (0: never)."""

    def __init__(self, bound: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.bound = bound
        self.clock = clock
        self.value: object = None
        self.changed = clock()

    def see(self, value: object) -> None:
        if value != self.value:
            self.value, self.changed = value, self.clock()

    def silent(self) -> bool:
        return bool(self.bound) and self.clock() - self.changed > self.bound


def stopped(what: str, bound: float) -> DumpError:
    return DumpError(f"{what} for {bound:g} s (--stall-timeout): the sharded run stops")
