"""What a finished command tells: an aligned table on a terminal, JSON events in a pod."""

from __future__ import annotations

from typing import TextIO

from ..core.logs import log
from ..core.units import human_bytes
from ..format.layout import MANIFEST_NAME
from ..restore.load import RestoreOutcome
from .notify import Outcome
from .prune import Pruned


def aligned(rows: list[tuple[str, ...]], out: TextIO) -> None:
    """Columns lined up: the first to the left, the others to the right."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)]
        print("  ".join(cells).rstrip(), file=out)


def dump(outcome: Outcome, json_lines: bool, out: TextIO) -> None:
    tables = outcome.tables
    if json_lines:
        for t in tables:
            log.info(
                "table dumped",
                extra={"table": t.qualified, "rows": t.rows, "bytes": t.bytes, "seconds": t.seconds, "path": t.path},
            )
        log.info(
            "run finished",
            extra={
                "status": "success",
                "run_id": outcome.run_id,
                "tables": len(tables),
                "rows": outcome.rows,
                "bytes": outcome.bytes,
                "location": outcome.location,
            },
        )
        return
    rows = [(t.qualified, f"{t.rows:,}", human_bytes(t.bytes), f"{t.seconds:.2f}") for t in tables]
    rows.append((f"total ({len(tables)} tables)", f"{outcome.rows:,}", human_bytes(outcome.bytes), ""))
    aligned([("table", "rows", "bytes", "seconds"), *rows], out)
    print(f"\ndump complete: {outcome.location}/{MANIFEST_NAME}", file=out)


def restore(outcome: RestoreOutcome, json_lines: bool, out: TextIO) -> None:
    if json_lines:
        for t in outcome.tables:
            log.info("table restored", extra={"table": f"{t.schema}.{t.table}", "rows": t.rows, "seconds": t.seconds})
        log.info(
            "restore finished",
            extra={
                "status": "success",
                "tables": len(outcome.tables),
                "rows": outcome.rows,
                "sequences": outcome.sequences,
                "target": outcome.target,
            },
        )
        return
    rows = [(f"{t.schema}.{t.table}", f"{t.rows:,}", f"{t.seconds:.2f}") for t in outcome.tables]
    rows.append((f"total ({len(outcome.tables)} tables)", f"{outcome.rows:,}", ""))
    aligned([("table", "rows", "seconds"), *rows], out)
    print(f"\nsequences set: {outcome.sequences}\nrestore complete: {outcome.target}", file=out)


def drill(outcome: Outcome, json_lines: bool, out: TextIO) -> None:
    seconds = outcome.finished_at - outcome.started_at
    if json_lines:
        log.info(
            "drill finished",
            extra={
                "status": "success",
                "tables": len(outcome.tables),
                "rows": outcome.rows,
                "seconds": round(seconds, 3),
                "source": outcome.location,
            },
        )
        return
    rows = [(t.qualified, f"{t.rows:,}", "same") for t in outcome.tables]
    rows.append((f"total ({len(outcome.tables)} tables)", f"{outcome.rows:,}", ""))
    aligned([("table", "rows", "restored"), *rows], out)
    print(f"\ndrill passed in {seconds:.1f} s: every table of {outcome.location} came back exactly", file=out)


def prune(result: Pruned, dry_run: bool, location: dict[str, str], json_lines: bool, out: TextIO) -> None:
    """One line per run folder: kept, removed (or would be), or failed, and why."""
    for decision in result.decisions:
        event = ("would remove" if dry_run else "removed") if decision.remove else "kept"
        error = result.failed.get(decision.name)
        if error:
            event = "prune failed"
        where = location[decision.name]
        if json_lines:
            log.info(event, extra={"run": decision.name, "why": decision.why, "location": where, "error": error})
        else:
            print(f"{event} {where}: {decision.why}" + (f" ({error})" if error else ""), file=out)
