"""Checking a run folder against its manifest: every file's size, sha256 and rows.

Pure but for the reader it is given: stored chunks in, one message per mismatch out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from ..core.errors import VerifyError
from . import jsonnulls, parquet
from .encode import rows_in
from .layout import is_file_name, is_table_path
from .manifest import FileEntry, Manifest, TableEntry
from .stored import CORRUPT, StoredStats, read_stats


def verify(
    manifest: Manifest,
    open_chunks: Callable[[str], Iterable[bytes] | None],
    tables: Sequence[TableEntry] | None = None,
    files: bool = True,
) -> list[str]:
    """Check every listed file (or only `tables`, and the schema files unless
    files=False); returns one message per mismatch (empty = all good).

    `open_chunks(path)` yields the stored bytes of a file, or None if it is missing.
    """
    checked: list[tuple[TableEntry | FileEntry, str]] = [
        (e, e.qualified) for e in (manifest.tables if tables is None else tables)
    ]
    if files:
        checked += [(e, f"schema file {e.section}") for e in manifest.schema_files.listed]
    problems: list[str] = []
    for entry, what in checked:
        problems += _check(manifest, entry, what, open_chunks)
    return problems


def _parquet_stats(chunks: Iterable[bytes]) -> StoredStats:
    parquet.require("this dump (Parquet files)")
    from .parquet.read import read_stats as parquet_stats  # pyarrow: for Parquet dumps only

    return parquet_stats(chunks)


def _outside_problems(entry: TableEntry) -> list[str]:
    """The manifest's values outside a Parquet file's types name its columns and rows."""
    columns = {c.name for c in entry.columns}
    problems = []
    for column, pairs in entry.outside.items():
        if column not in columns:
            problems.append(f"outside: no column {column!r}")
        elif any(not 0 <= row < entry.rows for row, _ in pairs):
            problems.append(f"outside: column {column!r} names a row past the table's {entry.rows}")
    return problems


def _check(
    manifest: Manifest, entry: TableEntry | FileEntry, what: str, open_chunks: Callable[[str], Iterable[bytes] | None]
) -> list[str]:
    safe = is_table_path(entry.path) if isinstance(entry, TableEntry) else is_file_name(entry.path)
    name = f"{what} ({entry.path if safe else repr(entry.path)})"
    if not safe:
        return [f"{name}: not a file name in the run folder; refused, nothing was read"]
    is_table = isinstance(entry, TableEntry)
    parquet = is_table and manifest.format == "parquet"
    try:
        chunks = open_chunks(entry.path)
        if chunks is None:
            return [f"{name}: file is missing"]
        stats = _parquet_stats(chunks) if parquet else read_stats(chunks, manifest.compression if is_table else "none")
    except CORRUPT as exc:
        return [f"{name}: not a valid gzip file: {exc}"]
    except VerifyError as exc:  # a Parquet file without its footer
        return [f"{name}: {exc}"]
    except (TimeoutError, ConnectionError):
        raise  # the storage or the network failed, not the file: the caller says so
    except OSError as exc:  # e.g. a symlink where the file should be
        return [f"{name}: cannot be read as a plain file ({exc.strerror or exc})"]
    problems = []
    if stats.bytes != entry.bytes:
        problems.append(f"{name}: {stats.bytes} bytes, manifest says {entry.bytes}")
    if stats.sha256 != entry.sha256:
        problems.append(f"{name}: sha256 {stats.sha256}, manifest says {entry.sha256}")
    rows = stats.newlines if parquet else rows_in(stats.newlines, manifest.format)
    if isinstance(entry, TableEntry) and rows != entry.rows:
        problems.append(f"{name}: {rows} rows, manifest says {entry.rows}")
    if isinstance(entry, TableEntry) and entry.outside:
        problems += [f"{name}: {p}" for p in _outside_problems(entry)]
    if isinstance(entry, TableEntry) and entry.json_nulls:
        columns = [c.name for c in entry.columns]
        problems += [f"{name}: {p}" for p in jsonnulls.check(entry.json_nulls, entry.rows, columns)]
    return problems
