"""One job: a dump run, then its metrics and notification. Used by `dumper run`
and by every tick of `dumper schedule`."""

from __future__ import annotations

import asyncio
import time

from ..core.errors import DumperError
from ..core.logs import log
from ..core.settings import Settings
from ..dump import run as dump
from ..dump.progress import Display
from ..ops import prune
from ..ops.notify import Outcome, publish
from ..postgres import db
from ..storage.output import Output


async def run_job(settings: Settings, password: db.PasswordProvider, display: Display | None = None) -> Outcome:
    """Dump once; never raises for a failed run (the outcome says how it ended),
    except CancelledError, which propagates after the outcome is published."""
    started = time.time()
    try:
        output = Output.for_settings(settings)
        manifest = await dump.run(settings, password, output, display=display)
    except DumperError as exc:
        outcome = Outcome(settings.run_id, "failed", started, time.time(), exc.exit_code, str(exc))
        log.error("run failed", extra={"status": "failed", "error": str(exc), "exit_code": exc.exit_code})
    except asyncio.CancelledError:
        outcome = Outcome(settings.run_id, "interrupted", started, time.time(), 143, "stopped by a signal")
        await asyncio.shield(publish(settings, outcome))
        raise
    else:
        outcome = Outcome(
            settings.run_id, "success", started, time.time(), 0, None, output.url_of(settings.run_id), manifest.tables
        )
        if settings.shard_index:  # a sharded run's other process: index 0 prunes and publishes the run
            return outcome
        if settings.keep:
            await prune.after_run(output, settings.keep)
    await publish(settings, outcome)
    return outcome
