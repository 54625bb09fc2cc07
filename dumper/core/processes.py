"""Worker processes a process starts (the dump's readers, a restore's converters): what they
inherit, and their lifetime's guarantees."""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Callable
from pathlib import Path

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def child_env() -> dict[str, str]:
    """A worker's environment: it imports this very package, not one found in the working
    directory (-P drops that), and gets no password."""
    root = str(Path(__file__).resolve().parents[2])  # the folder that holds the dumper package
    paths = [root, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {k: v for k, v in os.environ.items() if k != "PGPASSWORD"}
    return {**env, "PYTHONPATH": os.pathsep.join(paths)}


def before_exec() -> Callable[[], None]:
    """A function for the forked child, before exec: die with the dumper process
    (PR_SET_PDEATHSIG; Linux), and ignore SIGINT/SIGTERM from the first
    instruction on (an ignored signal stays ignored across exec): a terminal's
    Ctrl-C reaches the whole group, and a worker still importing must not die of
    it - the dumper process decides. Looked up here, so the child only calls."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        prctl, set_handler = libc.prctl, libc.signal
    except (OSError, AttributeError):  # not Linux/glibc: the worker still exits when its sockets close
        return lambda: None
    set_handler.argtypes, set_handler.restype = [ctypes.c_int, ctypes.c_void_p], ctypes.c_void_p
    ignore = int(signal.Handlers.SIG_IGN)

    def before_exec() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
        for signum in (signal.SIGINT, signal.SIGTERM):
            set_handler(int(signum), ignore)

    return before_exec
