"""The frames between the dumper process and a worker process (dump/workers.py): the kinds,
over core/channel.py's Channel."""

from __future__ import annotations

from ..core.channel import HEADER, Channel

INIT, READ, PASSWORD, NO_PASSWORD, STOP = b"I", b"R", b"P", b"N", b"S"  # parent -> worker
BATCH, DONE, FAIL, LOG, ASK, BEAT = b"B", b"D", b"E", b"L", b"A", b"H"  # worker -> parent

__all__ = [
    "ASK",
    "BATCH",
    "BEAT",
    "DONE",
    "FAIL",
    "HEADER",
    "INIT",
    "LOG",
    "NO_PASSWORD",
    "PASSWORD",
    "READ",
    "STOP",
    "Channel",
]
