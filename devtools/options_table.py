"""Print the README's options table from dumper.config.OPTIONS, or rewrite it in place.

python -m devtools.options_table [--write README.md]
"""

from __future__ import annotations

import sys
from pathlib import Path

from dumper.core.config import OPTIONS

HEADER = "| flag | environment | default | meaning |\n|---|---|---|---|\n"


def table() -> str:
    rows = []
    for o in OPTIONS:
        env = f"`{o.env}`" + (f", `{o.pg_env}`" if o.pg_env else "")
        default = ",".join(o.default) if o.repeatable else o.default
        shown = f"`{default}`" if default not in (None, "") else "—"
        choices = " (`" + "`, `".join(o.choices) + "`)" if o.choices else ""
        rows.append(f"| `{o.flag}` | {env} | {shown} | {o.help}{choices} |")
    return HEADER + "\n".join(rows) + "\n"


def main(argv: list[str]) -> int:
    if argv[:1] == ["--write"]:
        path = Path(argv[1])
        text = path.read_text()
        start = text.index(HEADER)
        end = text.index("\n\n", start)
        path.write_text(text[:start] + table().rstrip("\n") + text[end:])
    else:
        sys.stdout.write(table())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
