"""`restore --with-schema`: the target's tables built from the dump's own
schema files, around the rows: pre-data (types, tables, sequences) before
them, post-data (keys, indexes, triggers) after, each in one transaction.

The target must hold nothing in the dump's schemas: a schema file creates
objects, it does not merge into existing ones.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import asyncpg

from ..core.errors import ConfigError, LoadError, PermissionDenied, VerifyError
from ..core.logs import log
from ..format.manifest import FileEntry, Manifest
from ..postgres import schemadeps, schemasql
from ..postgres.sql import quote_ident
from ..postgres.translate import LOST
from ..storage.output import Output

# Objects in the dump's schemas, but for an extension's own (its CREATE EXTENSION made them).
_OCCUPIED_SQL = """
SELECT n.nspname OPERATOR(pg_catalog.||) '.' OPERATOR(pg_catalog.||) o.name OPERATOR(pg_catalog.||)
       ' (' OPERATOR(pg_catalog.||) o.kind OPERATOR(pg_catalog.||) ')'
FROM pg_catalog.pg_namespace n
JOIN (SELECT 'pg_catalog.pg_class'::pg_catalog.regclass AS catalog, oid, relnamespace AS ns,
             relname::pg_catalog.text AS name, 'relation' AS kind FROM pg_catalog.pg_class
      UNION ALL
      SELECT 'pg_catalog.pg_type'::pg_catalog.regclass, oid, typnamespace, typname::pg_catalog.text, 'type'
      FROM pg_catalog.pg_type WHERE typrelid OPERATOR(pg_catalog.=) 0 AND typcategory OPERATOR(pg_catalog.<>) 'A'
      UNION ALL
      SELECT 'pg_catalog.pg_proc'::pg_catalog.regclass, oid, pronamespace, proname::pg_catalog.text, 'function'
      FROM pg_catalog.pg_proc) o
  ON o.ns OPERATOR(pg_catalog.=) n.oid
WHERE n.nspname OPERATOR(pg_catalog.=) ANY($1::pg_catalog.text[])
  AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d WHERE d.classid OPERATOR(pg_catalog.=) o.catalog
                  AND d.objid OPERATOR(pg_catalog.=) o.oid AND d.deptype OPERATOR(pg_catalog.=) 'e')
ORDER BY 1 LIMIT 20
"""

# For each extension of the dump: in the target already? available? may this role create it?
# (superuser; rds_superuser on RDS; a trusted extension with CREATE on the database, PostgreSQL 13+).
_EXTENSIONS_SQL = """
SELECT w.name, e.extversion AS installed, a.default_version AS available,
       COALESCE((SELECT v.trusted FROM pg_catalog.pg_available_extension_versions v
                 WHERE v.name OPERATOR(pg_catalog.=) w.name AND v.version OPERATOR(pg_catalog.=) a.default_version),
                false) AS trusted,
       r.rolsuper
         OR EXISTS (SELECT FROM pg_catalog.pg_roles s WHERE s.rolname OPERATOR(pg_catalog.=) 'rds_superuser'
                    AND pg_catalog.pg_has_role(r.oid, s.oid, 'MEMBER')) AS superuser,
       pg_catalog.has_database_privilege(pg_catalog.current_database(), 'CREATE') AS may_create,
       EXISTS (SELECT FROM pg_catalog.pg_namespace n WHERE n.nspname OPERATOR(pg_catalog.=) w.schema) AS schema_exists
FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.text[]), pg_catalog.unnest($2::pg_catalog.text[])) AS w(name, schema)
CROSS JOIN pg_catalog.pg_roles r
LEFT JOIN pg_catalog.pg_extension e ON e.extname OPERATOR(pg_catalog.=) w.name
LEFT JOIN pg_catalog.pg_available_extensions a ON a.name OPERATOR(pg_catalog.=) w.name
WHERE r.rolname OPERATOR(pg_catalog.=) current_user
"""


def require_files(doc: Manifest) -> list[FileEntry]:
    """The dump's schema files; ConfigError when it has none."""
    files = doc.schema_files.listed
    if not files:
        raise ConfigError(
            f"--with-schema: this dump has no schema files ({doc.schema_files.why_absent}); restore into "
            "tables created another way (the application's migrations, pg_dump --schema-only), "
            "without --with-schema"
        )
    return files


def scripts(source: Output, doc: Manifest) -> dict[str, str]:
    """section -> SQL of the dump's schema files, checked against the manifest
    again as read (a file swapped after the verify pass is refused)."""
    texts = {}
    for entry in require_files(doc):
        data = source.read(entry.path)
        if hashlib.sha256(data).hexdigest() != entry.sha256:
            raise VerifyError(f"schema file {entry.path}: changed since it was verified; nothing was loaded")
        texts[entry.section] = data.decode("utf-8")
    return texts


async def refuse_occupied(conn: Any, schemas: list[str]) -> list[str]:
    """Raises ConfigError when the target holds objects in `schemas`; returns
    the schemas that exist (kept as they are)."""
    found = [r[0] for r in await conn.fetch(_OCCUPIED_SQL, schemas)]
    if found:
        raise ConfigError(
            f"--with-schema: the target is not empty, it holds {', '.join(found)}"
            f"{' and more' if len(found) == 20 else ''}; nothing was changed (restore into a new "
            "database, or drop these objects first)"
        )
    return [
        r[0]
        for r in await conn.fetch(
            "SELECT nspname FROM pg_catalog.pg_namespace "
            "WHERE nspname OPERATOR(pg_catalog.=) ANY($1::pg_catalog.text[])",
            schemas,
        )
    ]


async def extensions_ready(conn: Any, doc: Manifest, user: str) -> list[str]:
    """Raises before anything changes when the target cannot create an extension of the dump
    (its files are missing, or this role may not); returns the statements that create the
    schemas they go into when the schema files do not (an extension of another schema)."""
    listed = doc.extensions
    if not listed:
        return []
    rows = await conn.fetch(_EXTENSIONS_SQL, [e.name for e in listed], [e.schema for e in listed])
    by_name = {r["name"]: r for r in rows}
    unavailable, refused, schemas = [], [], []
    for ext in listed:
        row = by_name[ext.name]
        if row["installed"] is not None:
            continue
        if row["available"] is None:
            unavailable.append(ext.name)
        elif not row["superuser"] and not (row["trusted"] and row["may_create"]):
            refused.append(ext.name)
        elif row["available"] != ext.version:
            log.warning(
                "the target creates an extension in another version than the dump's",
                extra={"extension": ext.name, "dump": ext.version, "target": row["available"]},
            )
        if not row["schema_exists"] and ext.schema not in doc.dumped_schemas and ext.schema not in schemas:
            schemas.append(ext.schema)
    if unavailable:
        raise ConfigError(
            f"--with-schema: the target server has no extension {', '.join(unavailable)} (the dump's "
            "objects use it): install its package on the server (on RDS: an engine version that "
            "supports it); nothing was changed"
        )
    if refused:
        raise PermissionDenied(
            f"--with-schema: {user} may not create the extension(s) {', '.join(refused)} that the dump's objects use; "
            "nothing was changed. Restore as a superuser (on RDS: a member of rds_superuser, GRANT rds_superuser TO "
            f"{user}), or create them in the target first (CREATE EXTENSION), or for a trusted extension GRANT CREATE "
            f"ON DATABASE ... TO {user}"
        )
    return [f"CREATE SCHEMA IF NOT EXISTS {quote_ident(name)};\n" for name in schemas]


async def outside_ready(conn: Any, doc: Manifest, where: str = "--with-schema") -> None:
    """Raises ConfigError, before anything changes, when the schema files name objects outside
    the dump (an access method, a role, a type of another schema) that the target lacks."""
    schemadeps.refuse_missing(await schemadeps.missing(conn, doc.requires), where)


async def apply(conn: Any, section: str, script: str, existing: list[str], first: Sequence[str] = ()) -> None:
    """One schema file, in one transaction: all of it, or nothing (`first`: statements before it)."""
    sql = "".join(first) + schemasql.runnable(script, existing)
    try:
        # No stall bound: building an index on a big table sends nothing for as long as it takes
        # (TCP keepalives still end a dead connection).
        await conn.execute("BEGIN")
        await conn.execute(sql)
        await conn.execute("COMMIT")
    except (asyncpg.PostgresError, asyncpg.InterfaceError, *LOST) as exc:
        position = getattr(exc, "position", None)
        where = f" at character {position}" if position else ""
        raise LoadError(
            f"schema file {section}: {type(exc).__name__}{where}: {exc}"
            + (
                "; the rows are loaded, this section's objects are not"
                if section == "post-data"
                else "; nothing was changed"
            )
        ) from exc
    log.info("schema applied", extra={"section": section})
