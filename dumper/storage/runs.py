"""Run folders on a store: a run's manifest read back, an output folder's newest run."""

from __future__ import annotations

import dataclasses

from ..core.errors import VerifyError
from ..core.logs import log
from ..core.settings import Settings
from ..format.layout import LATEST_NAME, MANIFEST_NAME, is_file_name
from ..format.manifest import Manifest, parse
from .output import Output


def read_manifest(source: Output) -> Manifest:
    """The run folder's manifest; VerifyError when there is none: without it the
    folder is not a complete dump, whatever else it holds."""
    try:
        return parse(source.read(MANIFEST_NAME))
    except FileNotFoundError:
        raise VerifyError(
            f"{source.url_of(MANIFEST_NAME)} does not exist: not a complete dump "
            "(give the run's folder, e.g. ./dumps/20261124T020000Z)"
        ) from None


def newest_run(output: Output, settings: Settings) -> Output:
    """`output` itself when it is a run folder; its newest run when it is an
    output folder (LATEST names the newest complete run)."""
    if output.exists(MANIFEST_NAME) or not output.exists(LATEST_NAME):
        return output
    run_id = output.read(LATEST_NAME).decode().strip()
    if not is_file_name(run_id):
        raise VerifyError(f"{output.url_of(LATEST_NAME)} does not name a run folder ({run_id[:80]!r})")
    log.info("the newest run", extra={"run_id": run_id})
    return Output.for_settings(dataclasses.replace(settings, output=output.url_of(run_id)))
