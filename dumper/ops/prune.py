"""Retention: keep the N newest complete runs of an output location, remove the rest.

A run is complete when its manifest exists; its time is the manifest's (the
manifest is written last). The run LATEST names is never removed. An
incomplete folder (a killed run's leftovers) is removed only when everything
in it is older than the newest complete run and is a file a run writes; a
newer one may be a run in progress and is kept. Everything is decided from
one listing (and LATEST), so a dry run shows exactly what a real one removes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..core.errors import OutputError
from ..core.logs import log
from ..format.layout import LATEST_NAME, MANIFEST_NAME, written_by_a_run
from ..storage.output import FAILURES, Output


@dataclass
class RunFolder:
    name: str
    complete: bool = False
    finished: float = 0.0  # the manifest's modification time (complete runs)
    newest: float = 0.0  # the newest object or file in the folder
    foreign: list[str] = field(default_factory=list)  # files no run writes


@dataclass(frozen=True)
class Decision:
    name: str
    remove: bool
    why: str


def decide(runs: Iterable[RunFolder], keep: int, latest: str | None) -> list[Decision]:
    """Pure: what to keep and what to remove, newest runs first."""
    complete = sorted((r for r in runs if r.complete), key=lambda r: (r.finished, r.name), reverse=True)
    newest_complete = complete[0].finished if complete else None
    decisions = []
    for rank, run in enumerate(complete):
        if rank < keep:
            decisions.append(Decision(run.name, False, f"complete, one of the {keep} newest"))
        elif run.name == latest:
            decisions.append(Decision(run.name, False, "complete, named by LATEST"))
        else:
            decisions.append(Decision(run.name, True, f"complete, older than the {keep} newest"))
    for run in sorted((r for r in runs if not r.complete), key=lambda r: (r.newest, r.name), reverse=True):
        if run.name == latest:
            decisions.append(Decision(run.name, False, "incomplete, but named by LATEST"))
        elif newest_complete is None or run.newest >= newest_complete:
            decisions.append(
                Decision(
                    run.name, False, "incomplete and not older than the newest complete run (may be a run in progress)"
                )
            )
        elif run.foreign:
            decisions.append(
                Decision(run.name, False, f"incomplete, but holds files no run writes ({', '.join(run.foreign[:3])})")
            )
        else:
            decisions.append(Decision(run.name, True, "incomplete, older than the newest complete run"))
    return decisions


def _mtime(info: dict[str, Any]) -> float:
    stamp = info.get("LastModified", info.get("mtime", info.get("created", 0.0)))
    return stamp.timestamp() if isinstance(stamp, dt.datetime) else float(stamp or 0.0)


def scan(output: Output) -> tuple[list[RunFolder], str | None]:
    """The run folders under the output location (one listing) and LATEST's run."""
    root = output.root
    listing = output.guard(lambda: output.fs.find(root, detail=True, withdirs=True), root)
    runs: dict[str, RunFolder] = {}
    for path, info in listing.items():
        relative = path.removeprefix(root).lstrip("/")
        name, _, rest = relative.partition("/")
        if not name or name.startswith("."):
            continue
        if not rest and info.get("type") != "directory":
            continue  # a file at the top: LATEST
        run = runs.setdefault(name, RunFolder(name))
        run.newest = max(run.newest, _mtime(info))
        if not rest:
            continue
        if rest == MANIFEST_NAME:
            run.complete, run.finished = True, _mtime(info)
        elif info.get("type") != "directory" and not written_by_a_run(rest):
            run.foreign.append(rest)
    try:
        latest: str | None = output.read(LATEST_NAME).decode().strip() or None
    except FileNotFoundError:
        latest = None
    return list(runs.values()), latest


def remove(output: Output, name: str) -> str | None:
    """Remove one run folder; the error text if that failed. Checked by listing
    again: S3's DeleteObjects answers 200 and lists refused keys in its body,
    which s3fs does not raise on."""
    path = output.path(name)
    try:
        output.fs.rm(path, recursive=True)
        output.fs.invalidate_cache(path)
        left = output.fs.find(path)
    except FAILURES as exc:
        return f"{type(exc).__name__}: {exc}"
    if left:
        return (
            f"{len(left)} file(s) are still there after the delete (refused: the role needs "
            "s3:DeleteObject, see deploy/iam/prune-policy.json)"
        )
    return None


@dataclass(frozen=True)
class Pruned:
    decisions: list[Decision]
    failed: dict[str, str]  # run -> why it could not be removed


def prune(output: Output, keep: int, dry_run: bool = False) -> Pruned:
    """Apply the retention rules to `output` (blocking: call it in a thread)."""
    runs, latest = scan(output)
    decisions = decide(runs, keep, latest)
    failed: dict[str, str] = {}
    for decision in decisions:
        if decision.remove and not dry_run and (error := remove(output, decision.name)):
            failed[decision.name] = error
    return Pruned(decisions, failed)


def refuse_failures(result: Pruned) -> None:
    """`dumper prune`: runs that could not be removed fail the command (exit 6), naming them."""
    if result.failed:
        raise OutputError(
            f"{len(result.failed)} run(s) could not be removed: {', '.join(result.failed)}; the role "
            "needs s3:DeleteObject (deploy/iam/prune-policy.json) or write access to the folder"
        )


async def after_run(output: Output, keep: int) -> None:
    """`run --keep`: prune after a successful run; a failure is a warning, never the run's failure."""
    try:
        result = await asyncio.to_thread(prune, output, keep)
    except Exception as exc:  # any failure while pruning: a warning, the dump itself succeeded
        log.warning("prune failed", extra={"error": str(exc)})
        return
    for decision in result.decisions:
        if decision.name in result.failed:
            log.warning("prune failed", extra={"run": decision.name, "error": result.failed[decision.name]})
        elif decision.remove:
            log.info("removed", extra={"run": decision.name, "why": decision.why})
