"""The manifest: what a complete run wrote, and how to check it later.

Pure: plain data in, JSON bytes out; verification takes a file reader.
"""

from __future__ import annotations

import hashlib
import string
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from ..core.errors import VerifyError
from ..format.encode import rows_in
from ..format.stored import CORRUPT, read_stats

MANIFEST_VERSION = 1
MANIFEST_NAME = "manifest.json"
LATEST_NAME = "LATEST"

_SAFE = frozenset(string.ascii_letters + string.digits + "_-")
_MAX_NAME = 200  # bytes; file systems allow 255, leave room for suffixes


def _escape(name: str) -> str:
    """Percent-encode every byte but [A-Za-z0-9_-]: injective, ASCII, no dots."""
    return "".join(ch if ch in _SAFE else "".join(f"%{b:02X}" for b in ch.encode()) for ch in name)


def table_file_name(schema: str, table: str, fmt: str, compression: str) -> str:
    """'<schema>.<table>.jsonl[.gz]', safe for any identifier on any file system."""
    stem = f"{_escape(schema)}.{_escape(table)}"
    if len(stem) > _MAX_NAME:
        digest = hashlib.sha256(f"{schema}\0{table}".encode()).hexdigest()[:16]
        stem = f"{stem[: _MAX_NAME - 17]}~{digest}"
    return stem + "." + fmt + (".gz" if compression == "gzip" else "")


def unique_file_names(names: Sequence[str]) -> list[str]:
    """Disambiguate names that differ only in case (case-insensitive file systems):
    the second 'a.T.jsonl' becomes 'a~1.T.jsonl'. '~' is never produced by escaping."""
    seen: dict[str, int] = {}
    result = []
    for name in names:
        count = seen.get(name.lower(), 0)
        seen[name.lower()] = count + 1
        if count:
            head, dot, tail = name.partition(".")
            name = f"{head}~{count}{dot}{tail}"
        result.append(name)
    return result


@dataclass(frozen=True)
class TableEntry:
    schema: str
    table: str
    path: str
    rows: int
    bytes: int
    sha256: str
    columns: list[dict[str, str]]
    seconds: float
    extension: str | None = None  # a configuration table of this extension: its user rows (restored after it)


@dataclass(frozen=True)
class FileEntry:
    """A file of the run that holds no rows: a schema file."""

    section: str
    path: str
    bytes: int
    sha256: str


def schema_files_absent(doc: dict[str, Any]) -> str:
    """Why a manifest lists no schema files (as it says, or: it predates them)."""
    return str((doc.get("schema_files") or {}).get("reason", "the dump was taken before schema files existed"))


def schema_files(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The schema files a manifest lists (none in a run without them, or before they existed)."""
    listed = doc.get("schema_files") or {}
    return list(listed.get("files", [])) if listed.get("status") == "written" else []


@dataclass(frozen=True)
class Manifest:
    tool: dict[str, str]
    run_id: str
    started_at: str
    finished_at: str
    database: dict[str, Any]
    snapshot_id: str
    format: str
    compression: str
    tables: list[TableEntry]
    schemas: list[str] = field(default_factory=list)
    # {"status": "written", "pg_dump": version, "files": [FileEntry...]} or {"status": "absent", "reason": ...}
    schema_files: dict[str, Any] = field(default_factory=lambda: {"status": "absent", "reason": "off"})
    sequences: list[dict[str, Any]] = field(default_factory=list)
    extensions: list[dict[str, Any]] = field(default_factory=list)  # created by the schema files, in this order
    requires: list[dict[str, Any]] = field(default_factory=list)  # objects outside the dump the schema files name
    manifest_version: int = MANIFEST_VERSION

    def to_bytes(self) -> bytes:
        data = asdict(self)
        data["totals"] = {  # derived, never stored
            "tables": len(self.tables),
            "rows": sum(t.rows for t in self.tables),
            "bytes": sum(t.bytes for t in self.tables),
        }
        order = [
            "manifest_version",
            "tool",
            "run_id",
            "started_at",
            "finished_at",
            "database",
            "snapshot_id",
            "format",
            "compression",
            "schemas",
            "tables",
            "totals",
            "schema_files",
            "sequences",
            "extensions",
            "requires",
        ]
        return orjson.dumps({k: data[k] for k in order}, option=orjson.OPT_INDENT_2) + b"\n"


def parse(data: bytes) -> dict[str, Any]:
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise VerifyError(f"{MANIFEST_NAME} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("manifest_version") != MANIFEST_VERSION:
        raise VerifyError(
            f"{MANIFEST_NAME}: unsupported manifest_version {doc.get('manifest_version')!r}"
            if isinstance(doc, dict)
            else f"{MANIFEST_NAME} is not a JSON object"
        )
    return doc


def is_file_name(path: Any) -> bool:
    """A name that stays in the run folder: what table_file_name() makes, never
    a path (no separators, no '..', not hidden, not absolute)."""
    return (
        isinstance(path, str)
        and 0 < len(path) <= 255
        and not path.startswith(".")
        and not set(path) & {"/", "\\", "\0", ":"}
    )


def verify(
    doc: dict[str, Any],
    open_chunks: Callable[[str], Iterable[bytes] | None],
    tables: Sequence[dict[str, Any]] | None = None,
    files: bool = True,
) -> list[str]:
    """Check every listed file (or only `tables`, and the schema files unless
    files=False); returns one message per mismatch (empty = all good).

    `open_chunks(path)` yields the stored bytes of a file, or None if it is missing.
    """
    problems = []
    checked = [(e, f"{e['schema']}.{e['table']}") for e in (doc["tables"] if tables is None else tables)]
    if files:
        checked += [(e, f"schema file {e['section']}") for e in schema_files(doc)]
    for entry, what in checked:
        safe = is_file_name(entry["path"])
        name = f"{what} ({entry['path'] if safe else repr(entry['path'])})"
        if not safe:
            problems.append(f"{name}: not a file name in the run folder; refused, nothing was read")
            continue
        is_table = "rows" in entry
        try:
            chunks = open_chunks(entry["path"])
            if chunks is None:
                problems.append(f"{name}: file is missing")
                continue
            stats = read_stats(chunks, doc["compression"] if is_table else "none")
        except CORRUPT as exc:
            problems.append(f"{name}: not a valid gzip file: {exc}")
            continue
        except (TimeoutError, ConnectionError):
            raise  # the storage or the network failed, not the file: the caller says so
        except OSError as exc:  # e.g. a symlink where the file should be
            problems.append(f"{name}: cannot be read as a plain file ({exc.strerror or exc})")
            continue
        if stats.bytes != entry["bytes"]:
            problems.append(f"{name}: {stats.bytes} bytes, manifest says {entry['bytes']}")
        if stats.sha256 != entry["sha256"]:
            problems.append(f"{name}: sha256 {stats.sha256}, manifest says {entry['sha256']}")
        rows = rows_in(stats.newlines, doc["format"]) if is_table else None
        if is_table and rows != entry["rows"]:
            problems.append(f"{name}: {rows} rows, manifest says {entry['rows']}")
    return problems
