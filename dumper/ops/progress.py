"""The live display on a terminal: one line per running table (rows of the
estimate, percentage, bytes, rate, ETA) and an overall line, redrawn in place
by rich. Warnings and errors print above it; pods get JSON events instead.

The estimate is the catalog's (reltuples, partitions summed): when it is
missing, or the table turns out larger, the line says "~" and the percentage
stays below 100 until the table is done.
"""

from __future__ import annotations

import logging
import time
from typing import TextIO

from rich.console import Console
from rich.live import Live
from rich.table import Table

from ..core.logs import log
from ..core.units import human_bytes
from ..dump.progress import TableProgress


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return (
        f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        if seconds >= 3600
        else f"{seconds // 60}:{seconds % 60:02d}"
    )


def render(tables: list[TableProgress], now: float) -> Table:
    """The live area (pure but for rich's table type)."""
    grid = Table.grid(padding=(0, 2))
    for _ in range(6):
        grid.add_column(justify="right")
    grid.columns[0].justify = "left"
    running = [t for t in tables if t.started and not t.done]
    for t in running:
        elapsed = max(now - t.started, 1e-3)
        fraction = t.fraction()
        estimate = f"{'' if t.exact() else '~'}{max(t.estimate, t.rows):,.0f}" if t.estimate > 0 else "~"
        eta = "" if not fraction or fraction >= 0.99 else _duration(elapsed * (1 - fraction) / fraction)
        grid.add_row(
            t.name,
            f"{t.rows:,} / {estimate} rows",
            f"{fraction:.0%}" if fraction is not None else "",
            human_bytes(t.bytes),
            f"{t.rows / elapsed:,.0f} rows/s",
            f"ETA {eta}" if eta else "",
        )
    done = sum(t.done for t in tables)
    rows = sum(t.rows for t in tables)
    grid.add_row(
        f"total: {done} of {len(tables)} tables done",
        f"{rows:,} rows",
        "",
        human_bytes(sum(t.bytes for t in tables)),
        "",
        "",
    )
    return grid


class _Above:
    """A text stream for the log handler while the display shows: each line
    goes through rich, which prints it above the live area."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._partial = ""

    def write(self, text: str) -> int:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            self._console.print(line, markup=False, highlight=False, soft_wrap=True)
        return len(text)

    def flush(self) -> None:
        pass


class LiveDisplay:
    """Call update() with every table's progress; close() removes the live area.
    While it shows, the log's own lines below warning level are not printed
    (the display says the same), warnings and errors print above it."""

    def __init__(self, stream: TextIO) -> None:
        self._console = Console(file=stream)
        self._live = Live(
            console=self._console, refresh_per_second=4, transient=True, redirect_stdout=False, redirect_stderr=False
        )
        self._quiet: list[tuple[logging.StreamHandler[TextIO], int, TextIO]] = []

    def __enter__(self) -> LiveDisplay:
        self._live.start()
        above = _Above(self._console)
        for handler in log.handlers:
            if isinstance(handler, logging.StreamHandler):
                self._quiet.append((handler, handler.level, handler.stream))
                handler.setLevel(logging.WARNING)
                handler.setStream(above)
        return self

    def update(self, tables: list[TableProgress]) -> None:
        self._live.update(render(tables, time.monotonic()))

    def __exit__(self, *exc: object) -> None:
        self._live.stop()
        for handler, level, stream in self._quiet:
            handler.setLevel(level)
            handler.setStream(stream)
