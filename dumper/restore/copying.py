"""A table's rows loaded with one COPY statement: read and hashed in a thread, turned into COPY
data (format/copytext.py) in that thread or, given converters, in their processes, sent in file
order, every wait bounded.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg

from ..core.errors import DumperError
from ..format.copytext import OPTIONS, CopyRows
from ..format.jsonnulls import JsonNulls
from ..postgres import db
from ..postgres.translate import LOST, load_error
from .converters import Converters
from .targets import Target

Batches = Callable[..., AsyncIterator[tuple[Any, bytes | None]]]  # Loader.batches


class TableCopy:
    """Every row of the table in one COPY statement (so that its references to itself are
    checked at its end, as one INSERT's would be). The stall bound (--lock-timeout +
    --stall-timeout) follows the blocks: past it without the server taking the next one, the
    load fails. So does the end of the statement, but for a table whose foreign keys or triggers
    run there (`checked_at_end`): that work may take long and send nothing."""

    def __init__(
        self,
        target: Target,
        rows: CopyRows,
        batches: Batches,
        converters: Converters | None,
        bound: float,
        checked_at_end: bool,
    ) -> None:
        self.target = target
        self.rows = rows
        self.batches = batches
        self.converters = converters
        self.bound = bound
        self.checked_at_end = checked_at_end
        self.nulls = JsonNulls(target.entry.json_nulls, target.columns)
        self.columns = tuple(rows.columns)
        self.handed: dict[int, tuple[bytes, dict[str, list[int]] | None]] = {}  # blocks for the converters

    def prepare(self, block: tuple[bytes | memoryview, int], first_row: int) -> tuple[bytes | None, int]:
        """In the reading thread: the block's COPY data, or with converters the block as bytes and its
        JSON nulls, for a converter to take (made() hands them over)."""
        data, count = block
        marked = self.nulls.within(first_row, count) if self.nulls else None
        if self.converters is None:
            return self.rows.convert(data, marked), count
        self.handed[first_row] = (bytes(data), marked)
        return b"", count

    async def made(self) -> AsyncIterator[bytes]:
        """COPY data in file order; with converters, up to two blocks a converter in flight."""
        blocks = self.batches(self.target, self.prepare, blocks=True)
        if self.converters is None:
            async for _, payload in blocks:
                assert payload is not None
                yield payload
            return
        flying: collections.deque[asyncio.Future[bytes]] = collections.deque()
        try:
            async for _ in blocks:
                for first in sorted(self.handed):
                    flying.append(self.converters.convert(self.columns, *self.handed.pop(first)))
                while len(flying) > 2 * self.converters.count:
                    yield await flying.popleft()
            while flying:
                yield await flying.popleft()
        finally:
            for future in flying:
                future.cancel()

    async def run(self, conn: Any) -> None:
        loop = asyncio.get_running_loop()
        guard = asyncio.timeout_at(loop.time() + self.bound if self.bound else None)

        async def source() -> AsyncIterator[bytes]:
            async for payload in self.made():
                if self.bound:
                    guard.reschedule(loop.time() + self.bound)
                yield payload
                del payload
            if self.checked_at_end:
                guard.reschedule(None)

        name = self.target.qualified
        try:
            async with guard:
                await conn.copy_to_table(
                    self.target.entry.table,
                    schema_name=self.target.entry.schema,
                    columns=self.rows.loaded,
                    source=source(),
                    # A row of no columns is an empty line of the text format (CSV has no such row).
                    **(OPTIONS if self.rows.loaded else {"format": "text"}),
                )
        except TimeoutError:
            if not guard.expired():
                raise
            raise db.stalled(f"table {name}", self.bound) from None
        except DumperError:
            raise
        except (asyncpg.PostgresError, asyncpg.InterfaceError, *LOST) as exc:
            raise load_error(exc, name) from exc
