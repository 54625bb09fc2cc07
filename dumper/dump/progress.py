"""What a run says about its tables while it runs, for a display to show
(ops/progress.py draws it on a terminal)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class TableProgress:
    name: str
    estimate: float  # rows; < 0: unknown (never analyzed)
    started: float  # monotonic; 0: not started yet
    rows: int = 0
    bytes: int = 0
    done: bool = False

    def fraction(self) -> float | None:
        """Share done; None without an estimate. Below 1 until the table is done."""
        if self.done:
            return 1.0
        if self.estimate <= 0:
            return None
        return min(self.rows / self.estimate, 0.99)

    def exact(self) -> bool:
        """Whether the estimate still holds (the '~' otherwise)."""
        return self.done or (self.estimate > 0 and self.rows <= self.estimate)


Display = Callable[[list[TableProgress]], None]  # called about once a second with every table's progress
