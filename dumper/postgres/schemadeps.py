"""What a schema-scoped dump depends on outside its tables' own definitions.

- The extensions its objects use (a column's type, an index's operator class,
  a default's function, ...) and those installed in its schemas, as pg_dump
  treats them: created by the schema files (CREATE EXTENSION, with their
  schema), their member tables never dumped as user tables, and the user rows
  of their configuration tables (pg_extension_config_dump: the rows the
  extension's own filter selects, e.g. a custom SRID) dumped and restored
  after the extension exists.
- The objects outside the dumped schemas that the schema files name (an
  access method, a type or collation of another schema, a role a policy is
  for): listed in the manifest, so that a restore can name what the target
  lacks before anything changes, instead of failing half way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from ..core.errors import ConfigError
from ..format.manifest import ExtensionEntry, Requirement

FIRST_NORMAL_OID = 16384  # objects below it are built in (initdb's), present in every database

# The objects of the dumped schemas (relations, types, functions, ... and the parts of their
# relations), as (catalog, oid): what pg_dump -n dumps. $1: the schemas.
_OBJECTS = """
ns AS (
    SELECT n.oid FROM pg_catalog.pg_namespace n WHERE n.nspname OPERATOR(pg_catalog.=) ANY($1::pg_catalog.text[])
), rel AS (
    SELECT c.oid FROM pg_catalog.pg_class c WHERE c.relnamespace IN (SELECT oid FROM ns)
), member AS (
    SELECT d.classid, d.objid, d.refobjid AS ext FROM pg_catalog.pg_depend d
    WHERE d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_extension'::pg_catalog.regclass
      AND d.deptype OPERATOR(pg_catalog.=) 'e'
), obj(classid, objid) AS (
    SELECT 'pg_catalog.pg_class'::pg_catalog.regclass::pg_catalog.oid, oid FROM rel
    UNION ALL SELECT 'pg_catalog.pg_type'::pg_catalog.regclass, t.oid FROM pg_catalog.pg_type t
              WHERE t.typnamespace IN (SELECT oid FROM ns)
    UNION ALL SELECT 'pg_catalog.pg_proc'::pg_catalog.regclass, p.oid FROM pg_catalog.pg_proc p
              WHERE p.pronamespace IN (SELECT oid FROM ns)
    UNION ALL SELECT 'pg_catalog.pg_constraint'::pg_catalog.regclass, co.oid FROM pg_catalog.pg_constraint co
              WHERE co.connamespace IN (SELECT oid FROM ns)
    UNION ALL SELECT 'pg_catalog.pg_operator'::pg_catalog.regclass, o.oid FROM pg_catalog.pg_operator o
              WHERE o.oprnamespace IN (SELECT oid FROM ns)
    UNION ALL SELECT 'pg_catalog.pg_opclass'::pg_catalog.regclass, oc.oid FROM pg_catalog.pg_opclass oc
              WHERE oc.opcnamespace IN (SELECT oid FROM ns)
    UNION ALL SELECT 'pg_catalog.pg_opfamily'::pg_catalog.regclass, f.oid FROM pg_catalog.pg_opfamily f
              WHERE f.opfnamespace IN (SELECT oid FROM ns)
    UNION ALL SELECT 'pg_catalog.pg_collation'::pg_catalog.regclass, cl.oid FROM pg_catalog.pg_collation cl
              WHERE cl.collnamespace IN (SELECT oid FROM ns)
    UNION ALL SELECT 'pg_catalog.pg_ts_config'::pg_catalog.regclass, tc.oid FROM pg_catalog.pg_ts_config tc
              WHERE tc.cfgnamespace IN (SELECT oid FROM ns)
    UNION ALL SELECT 'pg_catalog.pg_ts_dict'::pg_catalog.regclass, td.oid FROM pg_catalog.pg_ts_dict td
              WHERE td.dictnamespace IN (SELECT oid FROM ns)
    UNION ALL SELECT 'pg_catalog.pg_attrdef'::pg_catalog.regclass, ad.oid FROM pg_catalog.pg_attrdef ad
              WHERE ad.adrelid IN (SELECT oid FROM rel)
    UNION ALL SELECT 'pg_catalog.pg_trigger'::pg_catalog.regclass, tg.oid FROM pg_catalog.pg_trigger tg
              WHERE tg.tgrelid IN (SELECT oid FROM rel)
    UNION ALL SELECT 'pg_catalog.pg_rewrite'::pg_catalog.regclass, rw.oid FROM pg_catalog.pg_rewrite rw
              WHERE rw.ev_class IN (SELECT oid FROM rel)
    UNION ALL SELECT 'pg_catalog.pg_policy'::pg_catalog.regclass, po.oid FROM pg_catalog.pg_policy po
              WHERE po.polrelid IN (SELECT oid FROM rel)
), own AS (  -- the dumped objects that are not themselves an extension's
    SELECT o.classid, o.objid FROM obj o
    WHERE NOT EXISTS (SELECT FROM member m WHERE m.classid OPERATOR(pg_catalog.=) o.classid
                      AND m.objid OPERATOR(pg_catalog.=) o.objid)
)"""

# Extensions used by the dumped objects or installed in the dumped schemas, and those they require.
_EXTENSIONS_SQL = f"""
WITH RECURSIVE {_OBJECTS.strip()}, used AS (
    SELECT m.ext FROM own o
    JOIN pg_catalog.pg_depend d ON d.classid OPERATOR(pg_catalog.=) o.classid
                               AND d.objid OPERATOR(pg_catalog.=) o.objid
    JOIN member m ON m.classid OPERATOR(pg_catalog.=) d.refclassid AND m.objid OPERATOR(pg_catalog.=) d.refobjid
  UNION
    SELECT e.oid FROM pg_catalog.pg_extension e WHERE e.extnamespace IN (SELECT oid FROM ns)
), closure(ext) AS (
    SELECT ext FROM used
  UNION
    SELECT d.refobjid FROM closure c
    JOIN pg_catalog.pg_depend d ON d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_extension'::pg_catalog.regclass
                               AND d.objid OPERATOR(pg_catalog.=) c.ext
                               AND d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_extension'::pg_catalog.regclass
)
SELECT e.extname, n.nspname, e.extversion,
       COALESCE(e.extconfig, '{{}}') AS config, COALESCE(e.extcondition, '{{}}') AS conditions,
       ARRAY(SELECT r.extname FROM pg_catalog.pg_depend d
             JOIN pg_catalog.pg_extension r ON r.oid OPERATOR(pg_catalog.=) d.refobjid
             WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_extension'::pg_catalog.regclass
               AND d.objid OPERATOR(pg_catalog.=) e.oid
               AND d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_extension'::pg_catalog.regclass
             ORDER BY 1) AS requires,
       ARRAY(SELECT c.oid FROM pg_catalog.unnest(e.extconfig) AS u(oid)
             JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) u.oid
             WHERE c.relkind OPERATOR(pg_catalog.=) 'S') AS config_sequences
FROM (SELECT DISTINCT ext FROM closure) c
JOIN pg_catalog.pg_extension e ON e.oid OPERATOR(pg_catalog.=) c.ext
JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) e.extnamespace
ORDER BY e.extname
"""

# Objects outside the dumped schemas (not built in, not of a dumped extension) that dumped objects
# depend on, as addresses another database resolves (pg_get_object_address); and the roles policies
# name. $2: the dumped extensions' names.
_OUTSIDE_SQL = f"""
WITH {_OBJECTS.strip()}, ours AS (
    SELECT e.oid FROM pg_catalog.pg_extension e WHERE e.extname OPERATOR(pg_catalog.=) ANY($2::pg_catalog.text[])
), ref AS (
    SELECT DISTINCT d.refclassid AS classid, d.refobjid AS objid FROM own o
    JOIN pg_catalog.pg_depend d ON d.classid OPERATOR(pg_catalog.=) o.classid
                               AND d.objid OPERATOR(pg_catalog.=) o.objid
    WHERE d.refobjid OPERATOR(pg_catalog.>=) {FIRST_NORMAL_OID} AND d.deptype IN ('n', 'a')
      AND NOT (d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_extension'::pg_catalog.regclass
               AND d.refobjid IN (SELECT oid FROM ours))
      AND NOT EXISTS (SELECT FROM member m WHERE m.classid OPERATOR(pg_catalog.=) d.refclassid
                      AND m.objid OPERATOR(pg_catalog.=) d.refobjid AND m.ext IN (SELECT oid FROM ours))
  UNION
    SELECT DISTINCT s.refclassid, s.refobjid FROM own o
    JOIN pg_catalog.pg_shdepend s ON s.classid OPERATOR(pg_catalog.=) o.classid
                                 AND s.objid OPERATOR(pg_catalog.=) o.objid
    WHERE s.dbid OPERATOR(pg_catalog.=) (SELECT oid FROM pg_catalog.pg_database
                                         WHERE datname OPERATOR(pg_catalog.=) pg_catalog.current_database())
      AND s.deptype OPERATOR(pg_catalog.=) 'r'  -- a role a policy is for
)
SELECT a.type, a.object_names, a.object_args, i.schema,
       pg_catalog.pg_describe_object(r.classid, r.objid, 0) AS description
FROM ref r
CROSS JOIN LATERAL pg_catalog.pg_identify_object(r.classid, r.objid, 0) i
CROSS JOIN LATERAL pg_catalog.pg_identify_object_as_address(r.classid, r.objid, 0) a
WHERE (i.schema IS NULL  -- quoted where needed, as pg_identify_object gives it
       OR i.schema OPERATOR(pg_catalog.<>) ALL (ARRAY(SELECT pg_catalog.quote_ident(s)
                                                      FROM pg_catalog.unnest($1::pg_catalog.text[]) AS u(s))))
  AND NOT (r.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_namespace'::pg_catalog.regclass
           AND r.objid IN (SELECT oid FROM ns))  -- a dumped schema itself
ORDER BY 5
"""


@dataclass(frozen=True)
class ConfigTable:
    """A table an extension registered with pg_extension_config_dump: its rows that the
    extension's filter selects (all of them without one) are the user's, and are dumped."""

    oid: int
    condition: str  # "" or the extension's "WHERE ..." clause


@dataclass(frozen=True)
class Extension:
    name: str
    schema: str
    version: str
    requires: tuple[str, ...]
    config: tuple[ConfigTable, ...]
    config_sequences: tuple[int, ...]

    @property
    def entry(self) -> ExtensionEntry:
        """As the manifest lists it."""
        return ExtensionEntry(name=self.name, schema=self.schema, version=self.version, requires=list(self.requires))


def creation_order(extensions: Sequence[Extension]) -> list[Extension]:
    """Required extensions before those that require them (then by name)."""
    by_name = {e.name: e for e in extensions}
    done: list[Extension] = []
    seen: set[str] = set()

    def visit(ext: Extension) -> None:
        if ext.name in seen:
            return
        seen.add(ext.name)
        for name in ext.requires:
            if name in by_name:
                visit(by_name[name])
        done.append(ext)

    for ext in sorted(extensions, key=lambda e: e.name):
        visit(ext)
    return done


async def extensions(conn: Any, schemas: Sequence[str]) -> list[Extension]:
    """The extensions a dump of `schemas` carries, in creation order."""
    found = []
    for r in await conn.fetch(_EXTENSIONS_SQL, list(schemas)):
        conditions = list(r["conditions"]) + [""] * (len(r["config"]) - len(r["conditions"]))
        config = tuple(
            ConfigTable(oid, condition or "")
            for oid, condition in zip(r["config"], conditions, strict=True)
            if oid not in r["config_sequences"]
        )
        found.append(
            Extension(
                r["extname"], r["nspname"], r["extversion"], tuple(r["requires"]), config, tuple(r["config_sequences"])
            )
        )
    return creation_order(found)


async def outside(conn: Any, schemas: Sequence[str], carried: Sequence[Extension]) -> list[Requirement]:
    """The objects outside the dump that its schema files name, as the manifest lists them."""
    return [
        Requirement(
            type=r["type"],
            names=list(r["object_names"]),
            args=list(r["object_args"]),
            schema=r["schema"],
            description=r["description"],
        )
        for r in await conn.fetch(_OUTSIDE_SQL, list(schemas), [e.name for e in carried])
    ]


_FIX = {
    "access method": "CREATE ACCESS METHOD in the target (it is a database-wide object, which a dump of "
    "schemas does not carry)",
    "role": "CREATE ROLE in the target's cluster (roles are cluster-wide)",
}


async def missing(conn: Any, required: Sequence[Requirement]) -> list[str]:
    """Of the objects the schema files name, those `conn`'s database lacks, each with the fix
    (each looked up on its own, outside any transaction: a miss is an error, and only that)."""
    lacking = []
    for obj in required:
        try:
            await conn.fetchval(
                "SELECT (pg_catalog.pg_get_object_address($1, $2::pg_catalog.text[], $3::pg_catalog.text[])).objid",
                obj.type,
                obj.names,
                obj.args,
            )
        except asyncpg.PostgresError:
            schema = obj.schema
            fix = _FIX.get(
                obj.type,
                f"create it in the target first, or dump schema {schema} too (--schema)"
                if schema
                else "create it in the target first",
            )
            lacking.append(f"{obj.description} ({fix})")
    return lacking


def refuse_missing(lacking: Sequence[str], where: str) -> None:
    if lacking:
        raise ConfigError(
            f"{where}: the schema files name {len(lacking)} object(s) outside the dumped schemas that "
            f"the target lacks: {'; '.join(lacking)}; nothing was changed"
        )
