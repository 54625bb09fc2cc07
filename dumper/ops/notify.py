"""After a run: Prometheus metrics (Pushgateway and/or node-exporter textfile)
and an optional webhook. Failing to publish is logged, never fatal."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from ..core.logs import log
from ..core.settings import Settings
from ..core.urls import redact_url
from ..format.manifest import TableEntry

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

# prometheus_client is imported where metrics are published, not at start-up: most runs publish
# nothing, and its import is a measurable share of a small run's start (issue #30).

LAST_SUCCESS = "dumper_last_success_timestamp_seconds"
DRILL_SUCCESS = "dumper_drill_last_success_timestamp_seconds"


@dataclass(frozen=True)
class Outcome:
    """What one run did, for reports, metrics and webhooks."""

    run_id: str
    status: str  # success | failed | interrupted
    started_at: float  # Unix time
    finished_at: float
    exit_code: int
    error: str | None = None
    location: str | None = None
    tables: list[TableEntry] = field(default_factory=list)
    kind: str = "dump"  # or "drill": its metrics have their own names, its webhook says so
    mismatches: list[str] = field(default_factory=list)  # drill: tables whose rows did not come back

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.tables)

    @property
    def bytes(self) -> int:
        return sum(t.bytes for t in self.tables)

    def payload(self, settings: Settings) -> dict[str, Any]:
        """The webhook's JSON body (documented in the README)."""
        return {
            "run_id": self.run_id,
            "status": self.status,
            "exit_code": self.exit_code,
            "error": self.error,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "duration_seconds": round(self.finished_at - self.started_at, 3),
            "database": {"host": settings.host, "port": settings.port, "dbname": settings.dbname},
            "location": self.location,
            "totals": {"tables": len(self.tables), "rows": self.rows, "bytes": self.bytes},
            **({"kind": "drill", "mismatches": self.mismatches} if self.kind == "drill" else {}),
        }


def registry_for(outcome: Outcome, dbname: str, last_success: float | None) -> CollectorRegistry:
    from prometheus_client import CollectorRegistry, Gauge

    registry = CollectorRegistry()
    labels = ["database"]

    def gauge(name: str, doc: str, value: float, extra: dict[str, str] | None = None) -> None:
        names = labels + list(extra or {})
        g = Gauge(name, doc, names, registry=registry)
        g.labels(dbname, *(extra or {}).values()).set(value)

    # A drill's gauges have their own names: its result never hides the nightly dump's.
    drill = outcome.kind == "drill"
    prefix, what = ("dumper_drill", "drill") if drill else ("dumper", "run")
    gauge(f"{prefix}_last_run_timestamp_seconds", f"When the last {what} finished", outcome.finished_at)
    gauge(
        f"{prefix}_last_run_duration_seconds",
        f"How long the last {what} took",
        outcome.finished_at - outcome.started_at,
    )
    gauge(
        f"{prefix}_last_run_success",
        "1 if the last drill gave every row back, else 0"
        if drill
        else "1 if the last run wrote a complete dump, else 0",
        1.0 if outcome.status == "success" else 0.0,
    )
    gauge(f"{prefix}_last_run_exit_code", f"Exit code of the last {what}", outcome.exit_code)
    if last_success is not None:
        gauge(
            DRILL_SUCCESS if drill else LAST_SUCCESS,
            f"When the last {'passed drill' if drill else 'complete dump'} finished",
            last_success,
        )
    if drill:
        gauge(
            "dumper_drill_last_run_mismatched_tables",
            "Tables whose rows the last drill did not get back",
            len(outcome.mismatches),
        )
        return registry
    if outcome.status == "success":
        gauge("dumper_last_run_rows", "Rows in the last complete dump", outcome.rows)
        gauge("dumper_last_run_bytes", "Bytes stored by the last complete dump", outcome.bytes)
        rows = Gauge(
            "dumper_table_rows",
            "Rows per table in the last complete dump",
            [*labels, "schema", "table"],
            registry=registry,
        )
        size = Gauge(
            "dumper_table_bytes",
            "Bytes per table in the last complete dump",
            [*labels, "schema", "table"],
            registry=registry,
        )
        secs = Gauge(
            "dumper_table_seconds",
            "Seconds per table in the last complete dump",
            [*labels, "schema", "table"],
            registry=registry,
        )
        for t in outcome.tables:
            rows.labels(dbname, t.schema, t.table).set(t.rows)
            size.labels(dbname, t.schema, t.table).set(t.bytes)
            secs.labels(dbname, t.schema, t.table).set(t.seconds)
    return registry


def _previous_success(path: Path) -> float | None:
    from prometheus_client.parser import text_string_to_metric_families

    with contextlib.suppress(OSError, ValueError):
        for family in text_string_to_metric_families(path.read_text()):
            for sample in family.samples:
                if sample.name in (LAST_SUCCESS, DRILL_SUCCESS):
                    return float(sample.value)
    return None


def write_textfile(path: str, outcome: Outcome, dbname: str) -> None:
    """Atomically replace the .prom file; a failed run keeps the last success time."""
    from prometheus_client import generate_latest

    target = Path(path)
    last = outcome.finished_at if outcome.status == "success" else _previous_success(target)
    data = generate_latest(registry_for(outcome, dbname, last))
    # A new private file with a random name (never an existing file or a planted symlink), then renamed.
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def push(url: str, outcome: Outcome, dbname: str) -> None:
    """POST (pushadd): a failed run leaves the gateway's last success time in place."""
    from prometheus_client import pushadd_to_gateway

    last = outcome.finished_at if outcome.status == "success" else None
    job = "dumper" if outcome.kind == "dump" else "dumper-drill"
    pushadd_to_gateway(
        url, job=job, grouping_key={"database": dbname}, registry=registry_for(outcome, dbname, last), timeout=10
    )


def post_webhook(url: str, body: dict[str, Any]) -> None:
    request = urllib.request.Request(  # noqa: S310 - the operator's URL, checked to be http(s)
        url,
        data=orjson.dumps(body),
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "dumper"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        response.read()


async def publish(settings: Settings, outcome: Outcome) -> None:
    """Metrics and webhook as configured; each failure is one warning, never raised."""
    steps: list[tuple[str, Any]] = []
    if settings.metrics_file:
        steps.append(("metrics file", lambda: write_textfile(settings.metrics_file or "", outcome, settings.dbname)))
    if settings.pushgateway_url:
        steps.append(("pushgateway", lambda: push(settings.pushgateway_url or "", outcome, settings.dbname)))
    if settings.notify_url and (settings.notify_on == "always" or outcome.status != "success"):
        steps.append(("webhook", lambda: post_webhook(settings.notify_url or "", outcome.payload(settings))))
    for what, step in steps:
        try:
            await asyncio.wait_for(asyncio.to_thread(step), timeout=15)
        except Exception as exc:
            text = f"{type(exc).__name__}: {exc}"
            for url in filter(None, (settings.notify_url, settings.pushgateway_url)):
                text = text.replace(url, redact_url(url, keep_path=False))
            log.warning(f"could not publish to the {what}", extra={"error": text})
