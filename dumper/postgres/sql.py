"""SQL quoting: identifiers and literals are quoted here, once, never interpolated any other way."""

from __future__ import annotations


def quote_ident(name: str) -> str:
    """PostgreSQL identifier quoting: always quoted, so any name is safe."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    """A string literal (standard_conforming_strings: a backslash is itself)."""
    return "'" + text.replace("'", "''") + "'"
