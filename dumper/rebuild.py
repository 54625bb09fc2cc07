"""`restore --with-schema`: the target's tables built from the dump's own
schema files, around the rows: pre-data (types, tables, sequences) before
them, post-data (keys, indexes, triggers) after, each in one transaction.

The target must hold nothing in the dump's schemas: a schema file creates
objects, it does not merge into existing ones.
"""

from __future__ import annotations

import hashlib
from typing import Any

import asyncpg

from . import db, schemasql
from .errors import ConfigError, LoadError, VerifyError
from .logs import log
from .manifest import schema_files, schema_files_absent
from .sinks import Output

_OCCUPIED_SQL = """
SELECT n.nspname OPERATOR(pg_catalog.||) '.' OPERATOR(pg_catalog.||) o.name OPERATOR(pg_catalog.||)
       ' (' OPERATOR(pg_catalog.||) o.kind OPERATOR(pg_catalog.||) ')'
FROM pg_catalog.pg_namespace n
JOIN (SELECT relnamespace AS ns, relname::pg_catalog.text AS name, 'relation' AS kind FROM pg_catalog.pg_class
      UNION ALL
      SELECT typnamespace, typname::pg_catalog.text, 'type' FROM pg_catalog.pg_type
      WHERE typrelid OPERATOR(pg_catalog.=) 0 AND typcategory OPERATOR(pg_catalog.<>) 'A'
      UNION ALL
      SELECT pronamespace, proname::pg_catalog.text, 'function' FROM pg_catalog.pg_proc) o
  ON o.ns OPERATOR(pg_catalog.=) n.oid
WHERE n.nspname OPERATOR(pg_catalog.=) ANY($1::pg_catalog.text[])
ORDER BY 1 LIMIT 20
"""


def dump_schemas(doc: dict[str, Any]) -> list[str]:
    """The schemas the dump was taken from (older manifests: those of its tables)."""
    return list(doc.get("schemas") or sorted({t["schema"] for t in doc["tables"]}))


def require_files(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The dump's schema files; ConfigError when it has none."""
    files = schema_files(doc)
    if not files:
        raise ConfigError(f"--with-schema: this dump has no schema files ({schema_files_absent(doc)}); restore into "
                          "tables created another way (the application's migrations, pg_dump --schema-only), "
                          "without --with-schema")
    return files


def scripts(source: Output, doc: dict[str, Any]) -> dict[str, str]:
    """section -> SQL of the dump's schema files, checked against the manifest
    again as read (a file swapped after the verify pass is refused)."""
    texts = {}
    for entry in require_files(doc):
        data = source.read(entry["path"])
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise VerifyError(f"schema file {entry['path']}: changed since it was verified; nothing was loaded")
        texts[entry["section"]] = data.decode("utf-8")
    return texts


async def refuse_occupied(conn: Any, schemas: list[str]) -> list[str]:
    """Raises ConfigError when the target holds objects in `schemas`; returns
    the schemas that exist (kept as they are)."""
    found = [r[0] for r in await conn.fetch(_OCCUPIED_SQL, schemas)]
    if found:
        raise ConfigError(f"--with-schema: the target is not empty, it holds {', '.join(found)}"
                          f"{' and more' if len(found) == 20 else ''}; nothing was changed (restore into a new "
                          "database, or drop these objects first)")
    return [r[0] for r in await conn.fetch(
        "SELECT nspname FROM pg_catalog.pg_namespace WHERE nspname OPERATOR(pg_catalog.=) ANY($1::pg_catalog.text[])",
        schemas)]


async def apply(conn: Any, section: str, script: str, existing: list[str]) -> None:
    """One schema file, in one transaction: all of it, or nothing."""
    sql = schemasql.runnable(script, existing)
    try:
        # No stall bound: building an index on a big table sends nothing for as long as it takes
        # (TCP keepalives still end a dead connection).
        await conn.execute("BEGIN")
        await conn.execute(sql)
        await conn.execute("COMMIT")
    except (asyncpg.PostgresError, asyncpg.InterfaceError, *db.LOST) as exc:
        position = getattr(exc, "position", None)
        where = f" at character {position}" if position else ""
        raise LoadError(f"schema file {section}: {type(exc).__name__}{where}: {exc}"
                        + ("; the rows are loaded, this section's objects are not"
                           if section == "post-data" else "; nothing was changed")) from exc
    log.info("schema applied", extra={"section": section})
