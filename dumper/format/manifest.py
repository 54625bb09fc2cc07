"""The manifest: what a complete run wrote. One typed model, written by a run
and parsed back by verify, restore, drill and prune (msgspec Structs: a
manifest that does not match is refused with the field it got wrong).

Keys consumers may rely on are documented in docs/format.md; more may be
added. A manifest from before a key existed reads as that key's default
("absent"). Never a password or token.
"""

from __future__ import annotations

from typing import Any

import msgspec
import orjson

from ..core.errors import VerifyError
from .layout import MANIFEST_NAME

MANIFEST_VERSION = 1
PREDATES_SCHEMA_FILES = "the dump was taken before schema files existed"


class Column(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    name: str
    type: str  # format_type()'s spelling, e.g. "numeric(12,2)": a key of Manifest.types
    # json | text | cast (postgres/catalog.py says what each means); always written, "" only when read
    # from a manifest older than the key, which means json.
    written: str = ""
    not_null: bool = False  # attnotnull (written only when true)
    dimensions: int = 0  # an array column's declared dimensions (not enforced by PostgreSQL); 0: none declared


class Field(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    type: str  # a key of Manifest.types


class TypeInfo(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A type as a loader needs it (postgres/typeinfo.py); keys that do not apply are left out."""

    kind: str  # base | enum | composite | domain | array | range | multirange | pseudo
    name: str  # the type itself, schema.typname ("pg_catalog.numeric", "public.mood")
    precision: int | None = None  # numeric's, or fractional-second digits of time/timestamp/interval
    scale: int | None = None  # numeric's
    length: int | None = None  # varchar(n), char(n), bit(n), varbit(n)
    element: str | None = None  # an array's element type (a key of Manifest.types)
    base: str | None = None  # a domain's base type (a key)
    subtype: str | None = None  # a range's subtype (a key)
    labels: list[str] | None = None  # an enum's, in order
    fields: list[Field] | None = None  # a composite's, in order
    not_null: bool = False  # a domain declared NOT NULL


class TableEntry(msgspec.Struct, frozen=True, kw_only=True):
    schema: str
    table: str
    path: str  # relative to the manifest, a name in the run folder (layout.table_file_name)
    rows: int
    bytes: int  # as stored (compressed, when gzip)
    sha256: str  # of the bytes as stored
    columns: list[Column]
    seconds: float = 0.0
    extension: str | None = None  # a configuration table of this extension: its user rows (restored after it)
    # json/jsonb columns' JSON nulls, which the file writes as `null` like SQL NULL: per column, the rows
    # (0-based, in file order) as runs [first, count]. Absent: none (or a dump from before this key).
    json_nulls: dict[str, list[list[int]]] = {}
    # A Parquet file's values its column's type cannot hold (format/parquet/mapping.py), NULL in the
    # file: per column, [row (0-based, in file order), the value's text] pairs.
    outside: dict[str, list[tuple[int, str]]] = {}

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.table}"


class FileEntry(msgspec.Struct, frozen=True, kw_only=True):
    """A file of the run that holds no rows: a schema file."""

    section: str  # pre-data | post-data
    path: str
    bytes: int
    sha256: str


class SchemaFiles(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    status: str  # written | absent
    pg_dump: str | None = None  # its version, when written
    files: list[FileEntry] = []
    reason: str | None = None  # why absent

    @property
    def listed(self) -> list[FileEntry]:
        """The schema files (none in a run without them)."""
        return self.files if self.status == "written" else []

    @property
    def why_absent(self) -> str:
        return self.reason or PREDATES_SCHEMA_FILES


class Owner(msgspec.Struct, frozen=True, kw_only=True):
    schema: str
    table: str
    column: str


class SequencePosition(msgspec.Struct, frozen=True, kw_only=True):
    schema: str
    name: str
    last_value: int
    is_called: bool
    owned_by: Owner | None = None  # the serial or identity column


class ExtensionEntry(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    schema: str
    version: str
    requires: list[str] = []


class Requirement(msgspec.Struct, frozen=True, kw_only=True):
    """An object outside the dumped schemas that the schema files name (an access
    method, a role, a type of another schema): its address, as pg_identify_object_as_address
    gives it, for the target to look up."""

    type: str
    names: list[str]
    args: list[str] = []
    schema: str | None = None  # quoted where needed, as PostgreSQL gives it
    description: str


class Database(msgspec.Struct, frozen=True, kw_only=True):
    host: str
    port: int
    dbname: str
    user: str
    server_version: str


class Totals(msgspec.Struct, frozen=True, kw_only=True):
    tables: int
    rows: int
    bytes: int


class Tool(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    version: str


class Manifest(msgspec.Struct, frozen=True, kw_only=True):
    manifest_version: int = MANIFEST_VERSION
    tool: Tool
    run_id: str
    started_at: str
    finished_at: str
    database: Database
    snapshot_id: str
    format: str
    compression: str
    schemas: list[str] = []
    tables: list[TableEntry]
    totals: Totals | None = None  # derived from the tables when written
    schema_files: SchemaFiles = SchemaFiles(status="absent")
    sequences: list[SequencePosition] = []
    extensions: list[ExtensionEntry] = []  # created by the schema files, in this order
    requires: list[Requirement] = []
    types: dict[str, TypeInfo] = {}  # every column's type and the types those name (postgres/typeinfo.py)
    layout: str = "flat"  # --layout: flat, or folders (a folder per table); tables[].path says where each is
    as_text: list[str] = []  # --as-text: the types written as their text (their columns' `written` is text)

    @property
    def dumped_schemas(self) -> list[str]:
        """The schemas the dump was taken from (older manifests: those of its tables)."""
        return self.schemas or sorted({t.schema for t in self.tables})

    def to_bytes(self) -> bytes:
        totals = Totals(
            tables=len(self.tables), rows=sum(t.rows for t in self.tables), bytes=sum(t.bytes for t in self.tables)
        )
        data = msgspec.structs.replace(self, totals=totals)
        return orjson.dumps(msgspec.to_builtins(data), option=orjson.OPT_INDENT_2) + b"\n"


def parse(data: bytes) -> Manifest:
    """A manifest's bytes as the model; VerifyError naming what is wrong."""
    try:
        doc: Any = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise VerifyError(f"{MANIFEST_NAME} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise VerifyError(f"{MANIFEST_NAME} is not a JSON object")
    if doc.get("manifest_version") != MANIFEST_VERSION:
        raise VerifyError(f"{MANIFEST_NAME}: unsupported manifest_version {doc.get('manifest_version')!r}")
    try:
        return msgspec.convert(doc, Manifest)
    except msgspec.ValidationError as exc:
        raise VerifyError(f"{MANIFEST_NAME} is not a manifest dumper wrote: {exc}") from None
