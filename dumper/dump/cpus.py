"""How many worker processes a run may use: the CPUs this process may run on,
capped by its cgroup's CPU quota (a Kubernetes CPU limit), and by the data: a
worker process costs about 0.3 s of a core to start (its imports, its own TLS
connection), while one core encodes about 100 MB of JSON a second, so a run of
small tables reads faster in the dumper process alone."""

from __future__ import annotations

from ..core.cpus import usable_cpus
from ..core.settings import Settings

PROCESS_BYTES = 32 << 20  # table bytes on disk (about twice that in JSON) worth a worker process


def processes(settings: Settings, table_bytes: int | None = None) -> int:
    """--processes, or by default the usable CPUs, at most --jobs, and at most one
    per PROCESS_BYTES of the run's tables on disk."""
    if settings.processes:
        return settings.processes
    wanted = min(usable_cpus(), settings.jobs)
    if table_bytes is not None:
        wanted = min(wanted, max(1, -(-table_bytes // PROCESS_BYTES)))
    return wanted
