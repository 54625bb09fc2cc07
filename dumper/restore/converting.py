"""A converter process (restore/converters.py): `python -P -m dumper.restore.converting PARENT_PID FD`,
started by a restore, never by hand. It turns each block it is sent into COPY data, until its
socket closes; SIGINT and SIGTERM are ignored (the restore decides), and it dies with the restore.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import signal
import socket
import sys

from ..core.channel import Channel
from ..core.malloc import tune_malloc, young_gc_only
from ..format.copytext import convert_block
from .converters import CONVERT, FAIL, MADE, fail_message


async def _serve(fd: int) -> None:
    channel = Channel(socket.socket(fileno=fd))
    while True:
        try:
            kind, _, spec_size, payload = await channel.receive()
        except (asyncio.IncompleteReadError, ConnectionError):
            return  # the restore is done with us (or gone)
        if kind != CONVERT:
            continue
        try:
            columns, json_nulls = pickle.loads(payload[:spec_size])  # noqa: S301 - from our parent, a socket pair
            made = convert_block(columns, bytes(payload[spec_size:]), json_nulls)
            await channel.send(MADE, payload=made)
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        except Exception as exc:  # the restore says it, naming this process
            await channel.send(FAIL, payload=fail_message(exc))
        del payload


def main(argv: list[str]) -> int:
    if os.getppid() != int(argv[0]):  # the restore died before PR_SET_PDEATHSIG took effect
        return 1
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)  # as before_exec did already, where libc allows
    tune_malloc()
    with young_gc_only():
        asyncio.run(_serve(int(argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
