"""The README and docs/ tell the truth: the options page is what the option table
generates, every command and flag a page shows exists, every internal link leads
somewhere, every exit code is documented, and the README stays a front door."""

from __future__ import annotations

import argparse
import contextlib
import io
import re
from pathlib import Path

import pytest

from devtools import options_table
from dumper import cli
from dumper.core.options import COMMANDS, OPTIONS, Option

from .conftest import ROOT

README = (ROOT / "README.md").read_text()
PAGES = sorted((ROOT / "docs").glob("*.md"))
DOCS = {path: path.read_text() for path in [ROOT / "README.md", *PAGES]}
README_MOST_LINES = 250

# Flags of other programs that the pages name in backticks (pg_dump's, psql's, kubectl's ...),
# when the span does not start with the program's name.
FOREIGN_FLAGS = {
    "--build-arg",
    "--cap-drop",
    "--disable-triggers",
    "--extension",
    "--lock-wait-timeout",
    "--no-owner",
    "--no-privileges",
    "--no-tablespaces",
    "--read-only",
    "--section",
    "--snapshot",
}
OTHER_PROGRAMS = (
    "pg_dump",
    "pg_restore",
    "psql",
    "kubectl",
    "podman",
    "aws",
    "curl",
    "make",
    "python",
    "kubernetes-validate",
)


def _help(*args: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
        cli.build_parser().parse_args([*args, "--help"])
    assert done.value.code == 0
    return out.getvalue()


def _flags_of(command: str) -> set[str]:
    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {flag for action in sub.choices[command]._actions for flag in action.option_strings}


FLAGS_OF = {command: _flags_of(command) for command in COMMANDS}
ALL_FLAGS = set().union(*FLAGS_OF.values()) | {"--help", "--version"}


def test_the_options_page_is_the_option_table() -> None:
    page = (ROOT / "docs" / "options.md").read_text()
    regenerate = "python -m devtools.options_table --write docs/options.md"
    assert options_table.replaced(page) == page, f"docs/options.md is not what the option table generates: {regenerate}"


@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: o.flag)
def test_every_option_is_in_the_options_page_and_its_commands_help(option: Option) -> None:
    page = (ROOT / "docs" / "options.md").read_text()
    row = next((line for line in page.splitlines() if line.startswith(f"| `{option.flag}` |")), None)
    assert row is not None and f"`{option.env}`" in row, f"docs/options.md lacks {option.flag}"
    for command in option.commands:
        text = _help(command)
        assert option.flag in text and option.env in text, f"{option.flag} missing from {command} --help"
    assert set(COMMANDS) - set(option.commands) == {c for c in COMMANDS if option.flag not in FLAGS_OF[c]}


def _shown_commands(text: str) -> list[str]:
    """Every `dumper COMMAND ...` a page shows: a line of a code block, or an inline span."""
    lines = []
    for kind, block in re.findall(r"```([a-z]*)\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)  # a command continued on the next line
        prompt = r"(?:\$ )?" if kind in ("sh", "bash", "console") else r"\$ "  # in output, only after a prompt
        lines += [m.group(1) for m in re.finditer(rf"^{prompt}(dumper [^\n]*)", joined, re.M)]
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    lines += [span for span in re.findall(r"`([^`\n]+)`", prose) if span.startswith("dumper ")]
    return lines


def test_every_command_and_flag_a_page_shows_exists() -> None:
    wrong = []
    for path, text in DOCS.items():
        for line in _shown_commands(text):
            words = line.split()
            command = words[1] if len(words) > 1 else ""
            if command.startswith("--"):  # dumper --help, dumper --version
                wrong += [f"{path.name}: {line}"] if command not in ("--help", "--version") else []
                continue
            if command == "COMMAND":
                continue
            if command not in FLAGS_OF:
                wrong.append(f"{path.name}: no command {command!r}: {line}")
                continue
            for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", line):
                if flag not in FLAGS_OF[command]:
                    wrong.append(f"{path.name}: {command} has no {flag}: {line}")
    assert not wrong, "\n".join(wrong)


def test_every_flag_named_in_prose_is_a_flag_of_dumper() -> None:
    wrong = []
    for path, text in DOCS.items():
        prose = re.sub(r"```.*?```", "", text, flags=re.S)
        for span in re.findall(r"`([^`\n]+)`", prose):
            if span.split()[0] in OTHER_PROGRAMS or span.startswith("dumper "):
                continue
            for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", span):
                if flag not in ALL_FLAGS and flag not in FOREIGN_FLAGS:
                    wrong.append(f"{path.name}: {flag} in `{span}`")
    assert not wrong, "\n".join(wrong)


def _anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to '-'."""
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    headings = re.findall(r"^#+ (.+)$", prose, re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower().replace("`", "")).replace(" ", "-") for h in headings}


def test_every_internal_link_resolves() -> None:
    broken = []
    for path, text in DOCS.items():
        prose = re.sub(r"```.*?```", "", text, flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", prose):
            if re.match(r"[a-z]+://|mailto:", target):
                continue
            file, _, anchor = target.partition("#")
            linked = (path.parent / file).resolve() if file else path
            if not linked.exists():
                broken.append(f"{path.name}: {target} (no such file)")
            elif anchor and (linked.suffix != ".md" or anchor not in _anchors(linked.read_text())):
                broken.append(f"{path.name}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_every_page_is_linked_from_the_readme() -> None:
    linked = {Path(t.partition("#")[0]).name for t in re.findall(r"\]\(docs/([^)\s]+)\)", README)}
    assert {p.name for p in PAGES} <= linked


def test_the_readme_is_a_front_door() -> None:
    assert len(README.splitlines()) <= README_MOST_LINES


def test_every_exit_code_is_documented() -> None:
    from dumper.core import errors

    codes = {
        cls.exit_code for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, errors.DumperError)
    }
    table = README.split("## Exit codes", 1)[1]
    for code in codes | {0, 143}:
        assert re.search(rf"^\| (\d+ / )?{code}( / \d+)? \|", table, re.M), f"exit code {code}"
        assert re.search(rf"^\s+{code}\s", cli.EXIT_CODES, re.M) or f"{code} by" in cli.EXIT_CODES


def test_quick_start_is_the_two_make_targets() -> None:
    quick = README.split("## Quick start", 1)[1].split("##", 1)[0]
    assert "make demo" in quick and "make test" in quick
    makefile = (ROOT / "Makefile").read_text()
    for target in re.findall(r"`make ([a-z-]+)", "\n".join(DOCS.values())):
        assert re.search(rf"^{target}:", makefile, re.M), f"make {target} is named in the docs"
    assert "make test" in (ROOT / ".ci" / "run").read_text()
