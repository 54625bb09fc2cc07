"""`dumper describe`: what loads a run's files exactly in a client (format/describe)."""

from __future__ import annotations

from ..core.errors import ConfigError
from ..format.describe import TARGETS, Inexact, render
from ..storage.output import Output
from ..storage.runs import read_manifest


def describe(run: Output, target: str | None) -> tuple[str, list[Inexact]]:
    """The text for `target` (a key of TARGETS) and the columns it cannot hold exactly."""
    if target not in TARGETS:
        choices = "|".join(TARGETS)
        raise ConfigError(f"--as: `dumper describe` needs --as {choices}, the client to describe the dump for")
    manifest = read_manifest(run)
    return render(manifest, target, run.url_of)
