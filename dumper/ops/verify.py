"""`dumper verify`: a run folder checked against its manifest (format/verify.py)."""

from __future__ import annotations

from ..format.manifest import Manifest
from ..format.verify import verify
from ..storage.output import FAILURES, Output
from ..storage.runs import read_manifest


def check(run: Output) -> tuple[Manifest, list[str]]:
    """The run's manifest and one message per file that does not match it."""
    manifest = read_manifest(run)
    try:
        return manifest, verify(manifest, run.chunks)
    except FAILURES as exc:  # the storage failed (a stall, the network), not a file
        raise run.reading_error(exc) from exc
