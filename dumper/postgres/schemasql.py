"""A schema file made ready to run: pure text in, SQL text out.

pg_dump's plain output is a psql script. Two things in it are not SQL for
the server: the `\\restrict KEY` / `\\unrestrict KEY` lines (psql's guard
against meta-commands from a malicious server; we send no text to psql) are
removed. And a schema that already exists in the target (`public` does in
every new database) is kept as it is: its CREATE SCHEMA and COMMENT ON SCHEMA
entries are left out, matched by their exact statement, never by a pattern.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable

from ..postgres.sql import quote_ident

_RESTRICT = re.compile(r"^\\restrict ([A-Za-z0-9]+)$", re.MULTILINE)
_HEADER = re.compile(r"^--\n-- (?:Data for )?Name: [^\n]*; Type: [^\n]*\n--\n", re.MULTILINE)
_SIMPLE = re.compile(r"[a-z_][a-z0-9_$]*")


def _ident_forms(name: str) -> set[str]:
    """The ways pg_dump may write an identifier: bare when it can be, else quoted."""
    return {name, quote_ident(name)} if _SIMPLE.fullmatch(name) else {quote_ident(name)}


def unrestricted(script: str) -> str:
    """The script without its \\restrict KEY lines and the matching \\unrestrict KEY ones
    (one pair per pg_dump whose output the file holds)."""
    for key in _RESTRICT.findall(script):
        script = script.replace(f"\\restrict {key}\n", "", 1).replace(f"\\unrestrict {key}\n", "", 1)
    return script


def runnable(script: str, existing_schemas: Iterable[str]) -> str:
    """The SQL to send: unrestricted, without recreating `existing_schemas`."""
    text = unrestricted(script)
    skipped: set[str] = set()
    for schema in existing_schemas:
        for form in _ident_forms(schema):
            skipped.add(f"CREATE SCHEMA {form};")
    comments = tuple(f"COMMENT ON SCHEMA {form} IS " for s in existing_schemas for form in _ident_forms(s))
    starts = [m.start() for m in _HEADER.finditer(text)] + [len(text)]
    kept = [text[: starts[0]]]
    for begin, end in itertools.pairwise(starts):
        entry = text[begin:end]
        body = _HEADER.sub("", entry, count=1).strip()
        if body in skipped or body.startswith(comments):  # one entry is one statement
            continue
        kept.append(entry)
    return "".join(kept)
