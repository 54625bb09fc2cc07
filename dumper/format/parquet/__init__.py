"""`--format parquet`: one Parquet file per table (pyarrow, the optional extra `dumper[parquet]`).

mapping.py (which Arrow type holds each PostgreSQL type; no pyarrow) is what the rest of the
package asks while planning; arrow.py (rows to Arrow batches, in the worker processes),
write.py (batches to the file, in the dumper process) and read.py (the file back as rows, for
verify, restore and drill) import pyarrow, and are imported only where a Parquet dump is made
or read: `require()` says what to install when it is missing.
"""

from __future__ import annotations

import importlib

from ...core.errors import ConfigError

EXTRA = "pip install 'dumper[parquet]'"


def require(what: str = "--format parquet") -> None:
    """ConfigError (exit 2, nothing done) when pyarrow or numpy cannot be imported."""
    missing = []
    for name in ("pyarrow", "numpy"):
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        are = "is" if len(missing) == 1 else "are"
        raise ConfigError(f"{what} needs {' and '.join(missing)}, which {are} not installed: {EXTRA}")
