"""`dumper describe`: what loads a dump exactly in another client, from its manifest.

One module per client (athena, duckdb, json_schema, spark); each turns the manifest's columns and
`types` (postgres/typeinfo.py) into that client's own text. columns.py is the one
place that says how a column's values are written in the file (what to_json makes of
each type), which every client's description starts from.

Pure: a manifest and the files' locations in, text out.
"""

from __future__ import annotations

from collections.abc import Callable

from ...core.errors import ConfigError
from ..manifest import Manifest
from . import athena, duckdb, json_schema, parquet, spark
from .columns import Inexact

# --as NAME -> its renderer: (manifest, the location of a file of the run) -> (text, what it cannot hold exactly)
TARGETS: dict[str, Callable[[Manifest, Callable[[str], str]], tuple[str, list[Inexact]]]] = {
    "athena": athena.render,
    "duckdb": duckdb.render,
    "json-schema": json_schema.render,
    "spark": spark.render,
}


def render(manifest: Manifest, target: str, location: Callable[[str], str]) -> tuple[str, list[Inexact]]:
    """TARGETS[target]'s text for the run; a Parquet dump (whose files carry their own types)
    is described for DuckDB, its views over read_parquet."""
    if manifest.format != "parquet":
        return TARGETS[target](manifest, location)
    if target != "duckdb":
        raise ConfigError(
            f"--as {target}: this dump is Parquet, whose files carry their own types: read them as they are "
            "(spark.read.parquet(path); Athena: CREATE EXTERNAL TABLE ... STORED AS PARQUET); "
            "--as duckdb describes it"
        )
    return parquet.render(manifest, location)


__all__ = ["TARGETS", "Inexact", "render"]
