"""The names in an output folder: the one place that knows them.

    <output>/
      LATEST                          the run id of the newest complete dump, written last
      <run_id>/
        <schema>.<table>.jsonl[.gz]   a table (.json[.gz] with --format json, .parquet); with --layout folders
                                      <schema>.<table>/<schema>.<table>.jsonl[.gz], a prefix per table
        schema.pre-data.sql           pg_dump's sections, from the run's snapshot
        schema.post-data.sql
        manifest.json                 written after every other file
        .<file>.<token>.partial       a local file being written (renamed when complete)
        .dumper-write-probe           the run folder's write check (removed at once)
        .shards/attempt-<n>/          a sharded run's (--shards) shared state, removed when it ends:
          plan.json                     the coordinator's plan (snapshot, pieces)
          alive-<index>                 each process's heartbeat
          parts/<piece>.part, .json     a piece's rows, then its record (rows, bytes, sha256)

Pure: names in, names out. Writers, prune, verify and restore ask here.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import secrets
import string
from collections.abc import Sequence
from typing import Any

MANIFEST_NAME = "manifest.json"
LATEST_NAME = "LATEST"
WRITE_PROBE = ".dumper-write-probe"
SECTIONS = ("pre-data", "post-data")  # pg_dump's sections, in the order a restore runs them
TABLE_ENDINGS = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".parquet")
PARTIAL_ENDING = ".partial"

SHARDS = ".shards"
PLAN_NAME = "plan.json"
_ATTEMPT = "attempt-"


def attempt_folder(run: str, attempt: int) -> str:
    """'<run>/.shards/attempt-<n>': one attempt of a sharded run (a new one when index 0 starts again)."""
    return f"{run}/{SHARDS}/{_ATTEMPT}{attempt}"


def attempt_of(name: str) -> int | None:
    """The attempt a name in '<run>/.shards' is the folder of (None: not one)."""
    number = name.removeprefix(_ATTEMPT)
    return int(number) if name.startswith(_ATTEMPT) and number.isdigit() else None


def alive_name(index: int) -> str:
    return f"alive-{index}"


def part_name(piece: str) -> str:
    return f"parts/{piece}.part"


def record_name(piece: str) -> str:
    return f"parts/{piece}.json"


_SAFE = frozenset(string.ascii_letters + string.digits + "_-")
_MAX_NAME = 200  # bytes; file systems allow 255, leave room for suffixes


def _escape(name: str) -> str:
    """Percent-encode every byte but [A-Za-z0-9_-]: injective, ASCII, no dots."""
    return "".join(ch if ch in _SAFE else "".join(f"%{b:02X}" for b in ch.encode()) for ch in name)


def table_file_name(schema: str, table: str, fmt: str, compression: str) -> str:
    """'<schema>.<table>.jsonl[.gz]', safe for any identifier on any file system; a Parquet file
    is '.parquet' whatever its codec (inside the file)."""
    stem = f"{_escape(schema)}.{_escape(table)}"
    if len(stem) > _MAX_NAME:
        digest = hashlib.sha256(f"{schema}\0{table}".encode()).hexdigest()[:16]
        stem = f"{stem[: _MAX_NAME - 17]}~{digest}"
    return stem + "." + fmt + (".gz" if compression == "gzip" and fmt != "parquet" else "")


def table_paths(names: Sequence[str], folders: bool) -> list[str]:
    """Each table file's path in the run folder: its name (unique_file_names'), or with
    `folders` that name inside a folder of its own named by the name's stem ('a.T/a.T.jsonl')."""
    if not folders:
        return list(names)
    return [f"{name.removesuffix(_ending(name))}/{name}" for name in names]


def _ending(name: str) -> str:
    return next(e for e in sorted(TABLE_ENDINGS, key=len, reverse=True) if name.endswith(e))


def is_table_path(path: Any) -> bool:
    """What table_paths makes: a file name, or a file name in a folder of the run folder;
    never more than that (no '..', nothing hidden, nothing absolute)."""
    if not isinstance(path, str):
        return False
    parts = path.split("/")
    return len(parts) <= 2 and all(map(is_file_name, parts))


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


def schema_file_name(section: str) -> str:
    """'schema.pre-data.sql' / 'schema.post-data.sql'."""
    return f"schema.{section}.sql"


_PROCESS_TOKEN = secrets.token_hex(4)  # random once, not per file: a getrandom call per table adds up
_SERIAL = itertools.count()


def partial_name(final: str) -> str:
    """The hidden name a local file is written under until it is complete; it says what
    it is, should a kill -9 leave it behind. Unguessable (a random token), unique in the
    process (a counter) and among processes, forked ones too (the pid); a clash would
    still be refused, never followed (O_EXCL)."""
    folder, _, name = final.rpartition("/")
    return f"{folder}/.{name}.{_PROCESS_TOKEN}-{os.getpid()}-{next(_SERIAL)}{PARTIAL_ENDING}"


def written_by_a_run(relative: str) -> bool:
    """Whether a file in a run folder (its path there) is one a run writes (a killed run's
    leftovers are removed by prune only when all of them are): in a table's folder, a table file;
    anything a sharded run keeps in its .shards folder."""
    if relative.startswith(SHARDS + "/"):
        return True
    folder, _, name = relative.rpartition("/")
    if folder:
        return is_file_name(folder) and (
            name.endswith(TABLE_ENDINGS) or (name.startswith(".") and name.endswith(PARTIAL_ENDING))
        )
    return (
        name.endswith(TABLE_ENDINGS)
        or name in {MANIFEST_NAME, WRITE_PROBE, *map(schema_file_name, SECTIONS)}
        or (name.startswith(".") and name.endswith(PARTIAL_ENDING))
    )


def is_file_name(path: Any) -> bool:
    """A name that stays in the run folder: what table_file_name() makes, never
    a path (no separators, no '..', not hidden, not absolute)."""
    return (
        isinstance(path, str)
        and 0 < len(path) <= 255
        and not path.startswith(".")
        and not set(path) & {"/", "\\", "\0", ":"}
    )
