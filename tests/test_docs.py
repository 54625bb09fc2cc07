"""The README and --help tell the truth about the options and exit codes."""

from __future__ import annotations

import contextlib
import io
import re

import pytest

from dumper import cli
from dumper.core.config import OPTIONS

from .conftest import ROOT

README = (ROOT / "README.md").read_text()


def _help(*args: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
        cli.build_parser().parse_args([*args, "--help"])
    assert done.value.code == 0
    return out.getvalue()


@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: o.flag)
def test_every_option_is_documented_in_readme_and_help(option: object) -> None:
    flag, env = option.flag, option.env  # type: ignore[attr-defined]
    row = next((line for line in README.splitlines() if line.startswith(f"| `{flag}` |")), None)
    assert row is not None, f"README options table lacks {flag}"
    assert f"`{env}`" in row
    for command in option.commands:  # type: ignore[attr-defined]
        assert flag in _help(command) and env in _help(command), f"{flag} missing from {command} --help"


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
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()
