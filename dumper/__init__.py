"""dumper: every table of a PostgreSQL database to per-table JSON files."""

__version__ = "0.1.0"
