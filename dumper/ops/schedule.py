"""`dumper schedule`: the same job on a cron schedule, in-process (APScheduler).

Never two runs at once (an overlapping tick is skipped and logged), late ticks
within --misfire-grace still run and missed ones coalesce into one, a failed
run is logged and the schedule goes on. On SIGTERM/SIGINT no new run starts;
a running one gets --grace-seconds to finish, then is cancelled cleanly.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import zoneinfo
from collections.abc import Awaitable, Callable
from typing import Any

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, JobEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger

from ..core.errors import ConfigError
from ..core.logs import log
from ..core.settings import Settings, default_run_id
from ..ops.notify import Outcome

Job = Callable[[Settings], Awaitable[Outcome]]


def trigger(settings: Settings) -> CronTrigger:
    """--cron as a trigger: 5 fields, or 6 with seconds first."""
    if not settings.cron:
        raise ConfigError("--cron: `dumper schedule` needs a cron expression, e.g. --cron '0 2 * * *'")
    try:
        zone = zoneinfo.ZoneInfo(settings.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"--timezone: unknown time zone {settings.timezone!r} (e.g. UTC, Europe/Berlin)") from None
    fields = settings.cron.split()
    try:
        if len(fields) == 5:
            return CronTrigger.from_crontab(settings.cron, timezone=zone)
        if len(fields) == 6:
            second, minute, hour, day, month, dow = fields
            return CronTrigger(
                second=second, minute=minute, hour=hour, day=day, month=month, day_of_week=dow, timezone=zone
            )
    except ValueError as exc:
        raise ConfigError(f"--cron: {settings.cron!r} is not a valid cron expression: {exc}") from None
    raise ConfigError(
        f"--cron: {settings.cron!r} has {len(fields)} fields; use 5 (min hour dom mon dow) "
        "or 6 (sec min hour dom mon dow)"
    )


class Scheduler:
    def __init__(self, settings: Settings, job: Job) -> None:
        self.settings = settings
        self.job = job
        self.runs = 0
        self.skipped = 0
        self.current: asyncio.Task[Outcome] | None = None
        self._trigger = trigger(settings)  # validate before anything starts

    async def _tick(self) -> None:
        if self.current is not None and not self.current.done():  # belt and braces: max_instances=1
            self.skipped += 1
            log.warning("run skipped: the previous run is still running")
            return
        run_settings = dataclasses.replace(self.settings, run_id=default_run_id(dt.datetime.now(dt.UTC)))
        self.current = asyncio.current_task()
        self.runs += 1
        outcome = await self.job(run_settings)
        log.info(
            "scheduled run ended",
            extra={"run_id": outcome.run_id, "status": outcome.status, "next_run": self._next_run()},
        )

    def _next_run(self) -> str | None:
        job = self._scheduler.get_job("dump") if hasattr(self, "_scheduler") else None
        return job.next_run_time.isoformat() if job and job.next_run_time else None

    def _skipped(self, event: JobEvent) -> None:
        self.skipped += 1
        log.warning(
            "run skipped: the previous run is still running",
            extra={"scheduled_for": str(getattr(event, "scheduled_run_times", ["?"])[0])},
        )

    async def serve(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set; then let a running dump finish within the grace period."""
        scheduler = AsyncIOScheduler(timezone=self._trigger.timezone)
        self._scheduler = scheduler
        scheduler.add_listener(self._skipped, EVENT_JOB_MAX_INSTANCES)
        kwargs: dict[str, Any] = {
            "id": "dump",
            "max_instances": 1,
            "coalesce": True,
            "misfire_grace_time": int(self.settings.misfire_grace) or None,
        }
        if self.settings.jitter:
            self._trigger.jitter = int(self.settings.jitter)
        scheduler.add_job(self._tick, self._trigger, **kwargs)
        if self.settings.run_now:
            scheduler.add_job(self._tick, id="run-now", max_instances=1)
        scheduler.start()
        log.info(
            "schedule started",
            extra={"cron": self.settings.cron, "timezone": self.settings.timezone, "next_run": self._next_run()},
        )
        try:
            await stop.wait()
        finally:
            scheduler.pause()  # no new runs; shutdown() would cancel the running one at once
            await self._finish_current()
            scheduler.shutdown(wait=False)

    async def _finish_current(self) -> None:
        task = self.current
        if task is None or task.done():
            return
        log.info("stopping: waiting for the running dump", extra={"grace_seconds": self.settings.grace_seconds})
        done, _ = await asyncio.wait([task], timeout=self.settings.grace_seconds)
        if not done:
            log.warning("stopping: the running dump did not finish in time; cancelling it")
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
