"""A converter process (restore/converters.py): `python -P -m dumper.restore.converting PARENT_PID FD`,
started by a restore, never by hand. It turns each block it is sent into COPY data, until its
socket closes; SIGINT and SIGTERM are ignored (the restore decides), and it dies with the restore.
"""

from __future__ import annotations

import asyncio
import pickle
import socket
import sys

from ..core.channel import Channel
from ..core.processes import child_main
from ..format.copytext import convert_block
from .converters import CONVERT, FAIL, MADE, fail_message


async def _serve(fds: list[int]) -> None:
    channel = Channel(socket.socket(fileno=fds[0]))
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
    return child_main(argv, _serve)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
