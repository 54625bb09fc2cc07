"""What each column's type is, for a loader: the manifest's `types`.

Keyed by the type's format_type() spelling (what columns[].type says), each entry
gives the type's kind and what a client needs to choose its own type for it:
numeric precision and scale, character lengths, time precisions, an enum's labels,
a composite's fields, a domain's base, an array's element, a range's subtype.
Every type those name is an entry too, so a description is followed by keys alone.

Read once per run, in the run's snapshot, from the catalog (pg_catalog-qualified).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..format.manifest import Field, TypeInfo

# Every type reachable from the columns' (type, typmod) pairs: array elements (with the
# array's typmod, as format_type shows it), domain bases, composite fields, range subtypes.
_REACHABLE_SQL = """
WITH RECURSIVE reach(oid, typmod) AS (
    SELECT u.oid, u.typmod
    FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.oid[]), pg_catalog.unnest($2::pg_catalog.int4[])) AS u(oid, typmod)
  UNION
    SELECT nxt.oid, nxt.typmod
    FROM reach JOIN pg_catalog.pg_type ty ON ty.oid OPERATOR(pg_catalog.=) reach.oid
    CROSS JOIN LATERAL (
        SELECT ty.typelem, reach.typmod
        WHERE ty.typelem OPERATOR(pg_catalog.<>) 0 AND ty.typlen OPERATOR(pg_catalog.=) -1
          AND ty.typtype OPERATOR(pg_catalog.=) 'b'
      UNION ALL
        SELECT ty.typbasetype, ty.typtypmod WHERE ty.typtype OPERATOR(pg_catalog.=) 'd'
      UNION ALL
        SELECT a.atttypid, a.atttypmod FROM pg_catalog.pg_attribute a
        WHERE ty.typtype OPERATOR(pg_catalog.=) 'c' AND a.attrelid OPERATOR(pg_catalog.=) ty.typrelid
          AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped
      UNION ALL
        SELECT r.rngsubtype, -1 FROM pg_catalog.pg_range r
        WHERE ty.typtype OPERATOR(pg_catalog.=) 'r' AND r.rngtypid OPERATOR(pg_catalog.=) ty.oid
    ) AS nxt(oid, typmod)
)
SELECT reach.oid, reach.typmod, pg_catalog.format_type(reach.oid, reach.typmod) AS spelled,
       n.nspname, ty.typname, ty.typtype::pg_catalog.text AS typtype, ty.typnotnull,
       CASE WHEN ty.typelem OPERATOR(pg_catalog.<>) 0 AND ty.typlen OPERATOR(pg_catalog.=) -1
                 AND ty.typtype OPERATOR(pg_catalog.=) 'b'
            THEN pg_catalog.format_type(ty.typelem, reach.typmod) END AS element,
       CASE WHEN ty.typtype OPERATOR(pg_catalog.=) 'd'
            THEN pg_catalog.format_type(ty.typbasetype, ty.typtypmod) END AS base,
       (SELECT pg_catalog.format_type(r.rngsubtype, NULL) FROM pg_catalog.pg_range r
        WHERE r.rngtypid OPERATOR(pg_catalog.=) ty.oid) AS subtype,
       CASE WHEN ty.typtype OPERATOR(pg_catalog.=) 'e' THEN
            ARRAY(SELECT e.enumlabel::pg_catalog.text FROM pg_catalog.pg_enum e
                  WHERE e.enumtypid OPERATOR(pg_catalog.=) ty.oid ORDER BY e.enumsortorder) END AS labels,
       CASE WHEN ty.typtype OPERATOR(pg_catalog.=) 'c' THEN
            ARRAY(SELECT a.attname::pg_catalog.text FROM pg_catalog.pg_attribute a
                  WHERE a.attrelid OPERATOR(pg_catalog.=) ty.typrelid AND a.attnum OPERATOR(pg_catalog.>) 0
                    AND NOT a.attisdropped ORDER BY a.attnum) END AS field_names,
       CASE WHEN ty.typtype OPERATOR(pg_catalog.=) 'c' THEN
            ARRAY(SELECT pg_catalog.format_type(a.atttypid, a.atttypmod) FROM pg_catalog.pg_attribute a
                  WHERE a.attrelid OPERATOR(pg_catalog.=) ty.typrelid AND a.attnum OPERATOR(pg_catalog.>) 0
                    AND NOT a.attisdropped ORDER BY a.attnum) END AS field_types
FROM (SELECT DISTINCT * FROM reach) reach
JOIN pg_catalog.pg_type ty ON ty.oid OPERATOR(pg_catalog.=) reach.oid
JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) ty.typnamespace
"""

_KINDS = {"b": "base", "e": "enum", "c": "composite", "d": "domain", "r": "range", "m": "multirange", "p": "pseudo"}
_BIT_LENGTHS = {"bit", "varbit"}  # typmod: the length (the character types' is 4 more)
_TIME_PRECISIONS = {"time", "timetz", "timestamp", "timestamptz"}  # typmod: fractional digits


def _sizes(typname: str, typmod: int) -> dict[str, int]:
    """Precision, scale or length from a built-in type's typmod (PostgreSQL's own encodings)."""
    if typmod < 0:
        return {}
    if typname == "numeric":
        packed = typmod - 4
        scale = ((packed & 0x7FF) ^ 1024) - 1024  # PostgreSQL 15+: a negative scale is possible
        return {"precision": (packed >> 16) & 0xFFFF, "scale": scale}
    if typname in ("bpchar", "varchar"):
        return {"length": typmod - 4}
    if typname in _BIT_LENGTHS:
        return {"length": typmod}
    if typname in _TIME_PRECISIONS:
        return {"precision": typmod}
    if typname == "interval":
        precision = typmod & 0xFFFF
        return {} if precision == 0xFFFF else {"precision": precision}
    return {}


def describe(row: Any) -> TypeInfo:
    """One catalog row of _REACHABLE_SQL as its entry."""
    kind = "array" if row["element"] is not None else _KINDS.get(row["typtype"], "base")
    sizes = _sizes(row["typname"], row["typmod"]) if row["nspname"] == "pg_catalog" and kind == "base" else {}
    fields = None
    if row["field_names"] is not None:
        fields = [Field(name=n, type=t) for n, t in zip(row["field_names"], row["field_types"], strict=True)]
    return TypeInfo(
        kind=kind,
        name=f"{row['nspname']}.{row['typname']}",
        element=row["element"],
        base=row["base"],
        subtype=row["subtype"],
        labels=list(row["labels"]) if row["labels"] is not None else None,
        fields=fields,
        not_null=bool(row["typnotnull"]),
        **sizes,
    )


async def types_of(conn: Any, used: Iterable[tuple[int, int]]) -> dict[str, TypeInfo]:
    """The manifest's `types`: every type the (type oid, typmod) pairs reach, by format_type()."""
    pairs = sorted(set(used))
    if not pairs:
        return {}
    rows = await conn.fetch(_REACHABLE_SQL, [p[0] for p in pairs], [p[1] for p in pairs])
    return {row["spelled"]: describe(row) for row in sorted(rows, key=lambda r: r["spelled"])}
