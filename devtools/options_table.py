"""docs/options.md's table of options, generated from the option table (dumper/core/options.py):
printed, or written in place of the table in the page. tests/test_docs.py fails when the page's
table is not what this generates.

python -m devtools.options_table [--write docs/options.md]
"""

from __future__ import annotations

import sys
from pathlib import Path

from dumper.core.options import COMMANDS, OPTIONS

HEADER = "| flag | environment | default | commands | meaning |\n|---|---|---|---|---|\n"


def table() -> str:
    rows = []
    for o in OPTIONS:
        env = f"`{o.env}`" + (f", `{o.pg_env}`" if o.pg_env else "")
        default = ",".join(o.default) if o.repeatable else o.default
        shown = f"`{default}`" if default not in (None, "") else "—"
        choices = " (`" + "`, `".join(o.choices) + "`)" if o.choices else ""
        commands = ", ".join(c for c in COMMANDS if c in o.commands)
        rows.append(f"| `{o.flag}` | {env} | {shown} | {commands} | {o.help}{choices} |")
    return HEADER + "\n".join(rows) + "\n"


def replaced(text: str) -> str:
    """`text` with its options table replaced by the generated one."""
    start = text.index(HEADER)
    end = text.index("\n\n", start)
    return text[:start] + table().rstrip("\n") + text[end:]


def main(argv: list[str]) -> int:
    if argv[:1] == ["--write"]:
        path = Path(argv[1])
        path.write_text(replaced(path.read_text()))
    else:
        sys.stdout.write(table())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
