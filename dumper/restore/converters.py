"""Processes that turn blocks of rows into COPY data (format/copytext.py) while the restore sends
what they made: the client's share of a load spread over the CPUs this process may use.

`--processes` converter processes (`python -P -m dumper.restore.converting`, started as the
dump's worker processes are: they ignore SIGINT and SIGTERM from their first instruction, the
restore decides, and die with it), each taking one block at a time over its own socket pair: the
table's columns and the block's JSON nulls (pickled: our own child), then the block; it sends the
COPY data back, or the error. Results are taken in file order. A converter that dies, or sends
nothing for LONGEST_SILENCE seconds, fails the table (and the restore) with its number.
"""

from __future__ import annotations

import asyncio
import contextlib
import pickle
import socket
from collections.abc import AsyncIterator

from ..core.channel import Channel
from ..core.cpus import usable_cpus
from ..core.errors import DumperError, LoadError
from ..core.processes import how_it_ended, spawn
from ..core.settings import Settings
from ..format.copytext import Column

CONVERT, MADE, FAIL = b"C", b"M", b"E"  # restore -> converter; converter -> restore (twice)
LONGEST_SILENCE = 60.0  # seconds a block may take (a block of one 100 MB row: about a second)
STOP_WAIT = 5.0  # seconds a converter may take to end once its socket is closed
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


class _Converter:
    def __init__(self, process: asyncio.subprocess.Process, channel: Channel) -> None:
        self.process = process
        self.channel = channel

    async def convert(self, spec: bytes, block: bytes) -> bytes:
        try:
            await self.channel.send(CONVERT, 0, len(spec), spec + block)
            kind, _, _, payload = await self.channel.receive(LONGEST_SILENCE)
        except TimeoutError:
            raise LoadError(
                f"converter process {self.process.pid} sent nothing for {LONGEST_SILENCE:g} s: it is stopped or "
                "starved of CPU (a lower --processes, or more CPU for the pod)"
            ) from None
        except (asyncio.IncompleteReadError, ConnectionError):
            how = await how_it_ended(self.process, STOP_WAIT)
            raise LoadError(f"converter process {self.process.pid} {how} while turning rows into COPY data") from None
        if kind == FAIL:
            raise LoadError(f"converter process {self.process.pid}: {bytes(payload).decode()}")
        return bytes(payload)


class Converters:
    """The converters, as a table's COPY (restore/copying.py) uses them."""

    def __init__(self, converters: list[_Converter]) -> None:
        self.count = len(converters)
        self._idle: asyncio.Queue[_Converter] = asyncio.Queue()
        for converter in converters:
            self._idle.put_nowait(converter)

    def convert(
        self, columns: tuple[Column, ...], block: bytes, json_nulls: dict[str, list[int]] | None
    ) -> asyncio.Future[bytes]:
        """The block's COPY data, made by the next idle converter (a task: await them in order)."""
        return asyncio.ensure_future(self._convert(pickle.dumps((columns, json_nulls)), block))

    async def _convert(self, spec: bytes, block: bytes) -> bytes:
        converter = await self._idle.get()
        # A converter that failed (or whose exchange was cancelled halfway) is not put back.
        made = await converter.convert(spec, block)
        self._idle.put_nowait(converter)
        return made


def count_for(settings: Settings) -> int:
    """--processes; by default the CPUs this process may use, but one that the database needs when it
    runs on this machine (a loopback host or a socket folder: it parses what the converters send on
    the same CPUs). 1: convert in the restore's own process, in its reading thread."""
    if settings.processes:
        return settings.processes
    shared = settings.host in LOCAL_HOSTS or settings.host.startswith("/")
    return max(1, usable_cpus() - (1 if shared else 0))


@contextlib.asynccontextmanager
async def started(settings: Settings) -> AsyncIterator[Converters | None]:
    """The converters for a restore (None: one CPU: the restore converts in its reading thread).
    Every one of them is gone (exited, or killed and reaped) when the block ends."""
    count = count_for(settings)
    if count < 2:
        yield None
        return
    started: list[_Converter] = []
    try:
        for _ in range(count):
            ours, theirs = socket.socketpair()
            try:
                process = await spawn("dumper.restore.converting", [theirs.fileno()])
            finally:
                theirs.close()
            started.append(_Converter(process, Channel(ours)))
        yield Converters(started)
    finally:
        await asyncio.shield(_ended(started))


async def _ended(converters: list[_Converter]) -> None:
    """Their sockets closed, they exit (after at most STOP_WAIT s they are killed); reaped either way."""
    for converter in converters:
        converter.channel.close()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(c.process.wait() for c in converters)), STOP_WAIT)
    for converter in converters:
        if converter.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                converter.process.kill()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(c.process.wait() for c in converters)), STOP_WAIT)


def fail_message(exc: BaseException) -> bytes:
    return (str(exc) if isinstance(exc, DumperError) else f"unexpected {type(exc).__name__}: {exc}").encode()
