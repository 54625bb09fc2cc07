"""Which rows of a table file hold JSON null (not SQL NULL) in a json/jsonb column.

A table file writes both as `null` (that is what `to_json` writes), so the
manifest lists the JSON nulls apart: per column, runs [first row, count] of
0-based rows in file order (TableEntry.json_nulls). Restore and drill ask here.

Pure: runs in, row numbers out.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence


class JsonNulls:
    """One table's JSON nulls, asked a batch of rows at a time (within), in file order."""

    def __init__(self, runs: Mapping[str, Sequence[Sequence[int]]], columns: Iterable[str] | None = None) -> None:
        kept = set(columns) if columns is not None else None
        self._runs = {
            column: sorted((int(first), int(count)) for first, count in spans)
            for column, spans in runs.items()
            if spans and (kept is None or column in kept)
        }
        self._starts = {column: [first for first, _ in spans] for column, spans in self._runs.items()}

    def __bool__(self) -> bool:
        return bool(self._runs)

    def within(self, first_row: int, rows: int) -> dict[str, list[int]]:
        """Per column, the JSON-null rows among rows first_row .. first_row+rows-1, as
        1-based positions in that batch (what WITH ORDINALITY numbers them)."""
        found: dict[str, list[int]] = {}
        end = first_row + rows
        for column, spans in self._runs.items():
            i = max(0, bisect.bisect_right(self._starts[column], first_row) - 1)
            positions: list[int] = []
            for first, count in spans[i:]:
                if first >= end:
                    break
                positions.extend(range(max(first, first_row) - first_row + 1, min(first + count, end) - first_row + 1))
            if positions:
                found[column] = positions
        return found


def per_row(marked: Mapping[str, Sequence[int]]) -> dict[int, list[str]]:
    """JsonNulls.within's answer by row: 0-based index in the batch -> its JSON-null columns."""
    rows: dict[int, list[str]] = {}
    for column, positions in marked.items():
        for position in positions:
            rows.setdefault(position - 1, []).append(column)
    return rows


def check(runs: Mapping[str, Sequence[Sequence[int]]], rows: int, columns: Iterable[str]) -> list[str]:
    """What is wrong with a manifest's json_nulls for a table of `rows` rows (none: fine)."""
    problems = []
    known = set(columns)
    for column, spans in runs.items():
        if column not in known:
            problems.append(f"json_nulls names {column!r}, which is not a column of the table")
        for span in spans:
            if len(span) != 2 or span[0] < 0 or span[1] < 1 or span[0] + span[1] > rows:
                problems.append(f"json_nulls of {column!r}: run {list(span)} is outside the table's {rows} rows")
                break
    return problems
