"""Sequence positions: read with the rows, set again after a restore.

Sequences are not transactional: a position is read at snapshot time and may
be ahead of the rows (a value taken by a transaction the snapshot does not
see), as with pg_dump. A restored sequence then leaves gaps, never collides.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from ..core.logs import log
from ..format.manifest import Owner, SequencePosition
from ..postgres.sql import quote_ident
from . import locks

_SEQUENCES_SQL = """
SELECT n.nspname, c.relname,
       pg_catalog.has_sequence_privilege(c.oid, 'SELECT') AS readable,
       tn.nspname AS owner_schema, tc.relname AS owner_table, a.attname AS owner_column
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
LEFT JOIN pg_catalog.pg_depend d
       ON d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
      AND d.objid OPERATOR(pg_catalog.=) c.oid
      AND d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
      AND d.deptype IN ('a', 'i')  -- serial (auto) or identity (internal)
LEFT JOIN pg_catalog.pg_class tc ON tc.oid OPERATOR(pg_catalog.=) d.refobjid
LEFT JOIN pg_catalog.pg_namespace tn ON tn.oid OPERATOR(pg_catalog.=) tc.relnamespace
LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) d.refobjid
                                   AND a.attnum OPERATOR(pg_catalog.=) d.refobjsubid
WHERE c.relkind OPERATOR(pg_catalog.=) 'S'
  AND ((n.nspname OPERATOR(pg_catalog.=) ANY($1::pg_catalog.text[])
        AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend e  -- an extension's own: its CREATE EXTENSION makes it
                        WHERE e.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
                          AND e.objid OPERATOR(pg_catalog.=) c.oid AND e.deptype OPERATOR(pg_catalog.=) 'e'))
       OR c.oid OPERATOR(pg_catalog.=) ANY($2::pg_catalog.oid[]))  -- but a configuration sequence is the user's
ORDER BY n.nspname, c.relname
"""
CHUNK = 200  # sequences per query


async def read(conn: Any, schemas: Sequence[str], config: Sequence[int] = ()) -> list[SequencePosition]:
    """Every sequence of `schemas` (not an extension's) and the `config` ones (extension
    configuration sequences): name, position, and the column that owns it.
    A sequence this role may not read is named in a warning and left out."""
    rows = await conn.fetch(_SEQUENCES_SQL, list(schemas), list(config))
    unreadable = [f"{r['nspname']}.{r['relname']}" for r in rows if not r["readable"]]
    if unreadable:
        log.warning(
            "sequences this role may not read are not in the manifest; a restore leaves them at their "
            "start (GRANT SELECT on them, or pg_read_all_data)",
            extra={"sequences": ", ".join(unreadable)},
        )
    rows = [r for r in rows if r["readable"]]
    positions: dict[int, tuple[int, bool]] = {}
    for start in range(0, len(rows), CHUNK):
        chunk = list(enumerate(rows[start : start + CHUNK], start))
        sql = " UNION ALL ".join(
            f"SELECT {i}, last_value, is_called FROM {quote_ident(r['nspname'])}.{quote_ident(r['relname'])}"
            for i, r in chunk
        )
        async with locks.released(conn):  # reading a sequence locks it: not for the rest of the run
            positions.update({p[0]: (p[1], p[2]) for p in await conn.fetch(sql)})
    return [
        SequencePosition(
            schema=r["nspname"],
            name=r["relname"],
            last_value=positions[i][0],
            is_called=positions[i][1],
            owned_by=(
                Owner(schema=r["owner_schema"], table=r["owner_table"], column=r["owner_column"])
                if r["owner_table"] is not None
                else None
            ),
        )
        for i, r in enumerate(rows)
    ]


_SETVAL_SQL = "SELECT pg_catalog.setval($1::pg_catalog.regclass, $2, $3)"
_OWNED_SQL = "SELECT pg_catalog.pg_get_serial_sequence($1, $2)"


def owned_by_tables(recorded: Iterable[SequencePosition], tables: set[tuple[str, str]]) -> list[SequencePosition]:
    """The recorded sequences that belong to a column of one of `tables`."""
    return [s for s in recorded if s.owned_by and (s.owned_by.schema, s.owned_by.table) in tables]


async def set_positions(conn: Any, recorded: Iterable[SequencePosition], by_owner: bool) -> tuple[int, list[str]]:
    """setval for each recorded sequence: the sequence of the same name, or
    (by_owner) the one that now belongs to the same column, whatever its name.
    Returns how many were set and the ones not found in the target."""
    done, missing = 0, []
    for seq in recorded:
        name = f"{quote_ident(seq.schema)}.{quote_ident(seq.name)}"
        owner = seq.owned_by
        if by_owner and owner is not None:
            name = await conn.fetchval(
                _OWNED_SQL, f"{quote_ident(owner.schema)}.{quote_ident(owner.table)}", owner.column
            )
            if name is None:
                missing.append(
                    f"{seq.schema}.{seq.name} (of {owner.schema}.{owner.table}.{owner.column}, which "
                    "has no sequence in the target)"
                )
                continue
        elif not await conn.fetchval("SELECT pg_catalog.to_regclass($1) IS NOT NULL", name):
            missing.append(f"{seq.schema}.{seq.name}")
            continue
        await conn.fetchval(_SETVAL_SQL, name, seq.last_value, seq.is_called)
        done += 1
    return done, missing
