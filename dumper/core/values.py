"""How option values are parsed from their text (a flag's or an environment
variable's): each parser returns the value or raises ValueError saying what is
accepted."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import TypeVar

N = TypeVar("N", int, float)


def within(convert: Callable[[str], N], low: float, high: float, meaning: str) -> Callable[[str], N]:
    """A parser for numbers in [low, high]; nan fails every comparison."""

    def parse(text: str) -> N:
        value = convert(text)
        if not low <= value <= high:
            raise ValueError(f"must be {meaning}")
        return value

    return parse


positive_int = within(int, 1, math.inf, "a whole number >= 1")
port = within(int, 1, 65535, "a TCP port, 1-65535")
level = within(int, 1, 9, "a gzip level, 1-9")
part_size = within(int, 5, 5120, "MiB between 5 and 5120 (S3's part size limits)")
# float("inf") is above float_info.max: refused like nan
seconds = within(float, 0, sys.float_info.max, "a number of seconds >= 0 (0 = no limit)")
mib = within(float, 0, sys.float_info.max, "a size in MiB >= 0 (0 = never)")


def boolean(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


def account_id(text: str) -> str:
    if not (len(text) == 12 and text.isdigit()):
        raise ValueError("must be a 12-digit AWS account id")
    return text


def run_id(text: str) -> str:
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
    if not text or set(text) - allowed or text.startswith("."):
        raise ValueError("must be letters, digits, '-', '_' or '.', not starting with '.'")
    return text
