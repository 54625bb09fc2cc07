"""Worker processes a process starts (the dump's readers, a restore's converters): how they are
started, what they inherit, and their lifetime's guarantees, on both sides."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from .malloc import tune_malloc, young_gc_only

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


async def spawn(module: str, fds: list[int]) -> asyncio.subprocess.Process:
    """`python -P -m <module> <this pid> <fd>...`: a child of ours holding `fds` (socket pairs'
    ends, closed here by the caller), no stdin or stdout, its life bound to ours (before_exec)."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-P",
        "-m",
        module,
        str(os.getpid()),
        *map(str, fds),
        pass_fds=fds,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        env=child_env(),
        preexec_fn=before_exec(),
    )


async def how_it_ended(process: asyncio.subprocess.Process, wait: float) -> str:
    """How a child whose socket closed ended, after waiting at most `wait` s for it to exit:
    'was killed by signal SIGKILL', 'exited with status 1', or 'closed its connection'."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(process.wait(), wait)
    code = process.returncode
    if code is None:
        return "closed its connection"
    return f"was killed by signal {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"


def child_main(argv: list[str], serve: Callable[[list[int]], Coroutine[Any, Any, None]]) -> int:
    """A spawned child's `main(PARENT_PID FD...)`: `serve` its sockets' descriptors until it ends.
    1 at once when the parent died before PR_SET_PDEATHSIG took effect."""
    if os.getppid() != int(argv[0]):
        return 1
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)  # as before_exec did already, where libc allows
    tune_malloc()
    with young_gc_only():  # what a child makes is short-lived and acyclic
        asyncio.run(serve([int(fd) for fd in argv[1:]]))
    return 0
