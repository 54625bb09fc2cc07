"""One snapshot dumped by several processes (--shards N): the pods of a Kubernetes Indexed Job,
each started with the same --run-id and its own index (JOB_COMPLETION_INDEX).

Index 0 coordinates an attempt: it takes the snapshot, the locks and the catalog as a one-process
run does, writes the plan (the snapshot's id and every piece to read, `plan.json`), reads its own
share, waits for every other piece, then joins each table's file from its pieces, in order, and
writes the manifest and LATEST: the dump one process would have written. Every other index joins
the snapshot, reads its share (a piece `i` belongs to index `i mod N`), writes each piece as a
part and then its record (rows, bytes, sha256), and stays until the manifest is there.

All of it goes through the run folder (layout.py's `.shards/attempt-<n>/`): nothing else is
shared. Index 0 writes a heartbeat every BEAT seconds for the whole run, another index while
it reads its share (none is written after the run ends); every wait is bounded by
--stall-timeout without a sign of life (a heartbeat that moves, a piece that arrives) from what
it waits for, and ends with one line naming it. A lost index 0 (or a lost snapshot) ends its
attempt: the others stop, no manifest appears, and index 0 started again (the Job's retry) begins
a new attempt, which the others (their retries) follow; nothing of an older attempt is read by a
newer one. A retried worker writes again only the pieces that have no record yet.
"""

from .roles import alive_path, coordinate, run_worker
from .state import Shared, heartbeat

__all__ = ["Shared", "alive_path", "coordinate", "heartbeat", "run_worker"]
