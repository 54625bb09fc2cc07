"""Worker processes: rows read and encoded on several cores.

One Python process encodes at most one core's worth of rows. With
--processes P > 1 the dumper process keeps the coordinator (snapshot, locks),
plans the pieces and writes every file, in order, hashed and compressed; P
worker processes (`python -m dumper.dump.workers`) hold the run's --jobs
connections between them ("lanes"), each joined to the run's snapshot, and
send each batch of encoded JSON back over the lane's own socket pair. A lane
whose table waits for an earlier piece waits alone: no lane's batches queue
behind another's, so a split table always makes progress.

Frames are a header (kind, piece, rows, length) and a payload. Parent to
worker: INIT (settings without secrets, snapshot id), READ (a pickled Piece),
PASSWORD / NO_PASSWORD (the answer to ASK), STOP. Worker to parent: BATCH,
DONE, FAIL (the pickled DumperError, raised again in the parent), LOG (a log
record, logged by the parent with the lane's table), ASK (a password for a new
connection), BEAT (twice a second, proof of life).

Credentials: a worker asks the parent for a password every time it connects;
the parent's provider signs a fresh IAM token. Workers never fetch AWS
credentials, and a token only ever travels through the socket pair.

Lifetime: a worker dies with the dumper process (PR_SET_PDEATHSIG), ignores
SIGINT/SIGTERM (the parent decides and kills it), and the parent kills and
reaps every worker on any failure, cancellation or signal. A worker that dies
(SIGKILL, the OOM killer) or sends nothing, not even its heartbeat, for the
stall bound fails the run with a message naming it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import pickle
import signal
import socket
import sys
import traceback
from collections.abc import AsyncIterator
from contextvars import ContextVar

import orjson

from ..core.errors import DumperError, DumpError
from ..core.logs import fields_of, log
from ..core.processes import child_main, how_it_ended, spawn
from ..core.settings import Settings
from ..dump.reader import Group, Lane, Piece, Reader, Sink
from ..format.encode import ARRAY_SEPARATOR
from ..postgres import db
from .channel import ASK, BATCH, BEAT, DONE, FAIL, INIT, LOG, NO_PASSWORD, PASSWORD, READ, STOP, Channel

BEAT_EVERY = 0.5  # seconds between a worker's heartbeats
LONGEST_SILENCE = 60.0  # seconds without a frame (not even a heartbeat): the worker is stuck
STOP_WAIT = 5.0  # seconds a worker may take to close its connections and exit after STOP
SOCKET_BUFFER = 4 << 20  # bytes; a batch is ~0.4-4 MB of JSON
FRAME_BYTES = 1 << 20  # small batches travel together, up to about this much


# --- the dumper process's side ------------------------------------------------


class RemoteLane:
    """A connection held by a worker process, used like a Reader."""

    def __init__(
        self, process: asyncio.subprocess.Process, channel: Channel, password: db.PasswordProvider, silence: float
    ) -> None:
        self.process = process
        self.channel = channel
        self.password = password
        self.silence = silence

    async def read(self, piece: Piece | Group, sink: Sink) -> None:
        """Sends the piece (or group) to the worker; its batches go into `sink` as they come."""
        await self.channel.send(READ, payload=pickle.dumps(piece))
        while True:
            kind, index, rows, payload = await self._receive()
            if kind == BATCH:
                await sink.add(index, payload, rows)
                del payload
            elif kind == DONE:
                return
            elif kind == ASK:
                secret = await self.password()
                await self.channel.send(
                    PASSWORD if secret is not None else NO_PASSWORD, payload=secret.encode() if secret else b""
                )
            elif kind == LOG:
                record = orjson.loads(payload)
                log.log(record["level"], record["event"], extra={**record["fields"], "worker": self.process.pid})
            elif kind == FAIL:
                raise pickle.loads(payload)  # noqa: S301 - our own worker's DumperError

    async def _receive(self) -> tuple[bytes, int, int, bytes | bytearray]:
        try:
            return await self.channel.receive(self.silence)
        except TimeoutError:
            raise DumpError(
                f"worker process {self.process.pid} sent nothing for {self.silence:g} s, not even its "
                "heartbeat: it is stopped or starved of CPU; the run fails (a lower --processes, or "
                "more CPU for the pod)"
            ) from None
        except (asyncio.IncompleteReadError, ConnectionError):
            raise DumpError(await self._death()) from None

    async def _death(self) -> str:
        how = await how_it_ended(self.process, STOP_WAIT)
        hint = " (e.g. the out-of-memory killer)" if self.process.returncode == -signal.SIGKILL else ""
        return f"worker process {self.process.pid} {how}{hint} while reading; the run fails"

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self.channel.sock.shutdown(socket.SHUT_RDWR)  # the worker sees the end at once

    async def close(self) -> None:
        """The lane's work is done: the worker closes its connection."""
        with contextlib.suppress(ConnectionError):
            await self.channel.send(STOP)


def _pair() -> tuple[socket.socket, socket.socket]:
    """A lane's socket pair, with room for a whole batch in the kernel (where
    net.core.wmem_max allows): a send then never waits for the reader halfway."""
    pair = socket.socketpair()
    for sock in pair:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
    return pair


@contextlib.asynccontextmanager
async def started(
    settings: Settings, password: db.PasswordProvider, snapshot_id: str, lanes: int, count: int
) -> AsyncIterator[list[Lane]]:
    """`count` worker processes holding `lanes` lanes between them; every one
    of them is gone (exited, or killed and reaped) when this block ends."""
    spawned: list[asyncio.subprocess.Process] = []
    result: list[RemoteLane] = []
    silence = max(2.0, min(settings.stall_timeout or LONGEST_SILENCE, LONGEST_SILENCE))
    secretless = dataclasses.replace(settings, password=None, notify_url=None, pushgateway_url=None)
    finished = False
    try:
        for number in range(count):
            pairs = [_pair() for _ in range(number, lanes, count)]
            try:
                process = await spawn("dumper.dump.workers", [theirs.fileno() for _, theirs in pairs])
                spawned.append(process)
            finally:
                for _, theirs in pairs:
                    theirs.close()
            for ours, _ in pairs:
                channel = Channel(ours)
                result.append(RemoteLane(process, channel, password, silence))
                await channel.send(INIT, payload=pickle.dumps((secretless, snapshot_id)))
        log.info("worker processes started", extra={"processes": count, "connections": lanes})
        yield list(result)
        finished = True
    finally:
        await asyncio.shield(_ended(spawned, result, finished))


async def _ended(spawned: list[asyncio.subprocess.Process], lanes: list[RemoteLane], finished: bool) -> None:
    """After success, workers exit on their own (STOP); otherwise, and past
    STOP_WAIT, they are killed. Either way they are reaped."""
    if finished:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in spawned)), STOP_WAIT)
    for process in spawned:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
    for lane in lanes:
        lane.channel.close()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(p.wait() for p in spawned)), STOP_WAIT)


# --- the worker process's side -----------------------------------------------

_lane: ContextVar[_WorkerLane | None] = ContextVar("_lane", default=None)


class _WorkerLane:
    """One connection of a worker process, reading the pieces its parent sends."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.separator = b""  # between two batches of one frame: b",\n" in a JSON array
        self._held: list[bytes | bytearray] = []  # batches of one piece not sent yet
        self._held_rows = 0
        self._held_bytes = 0
        self._held_piece = 0

    async def add(self, piece: int, body: bytes | bytearray, rows: int) -> None:
        """Batches of ~0.4 MB go out in frames of about FRAME_BYTES: each frame
        costs the parent a wake-up, a store and a thread hand-off."""
        if self._held and (piece != self._held_piece or len(body) >= FRAME_BYTES):
            await self.flush()  # a large batch is sent as it is, never copied into a join
        self._held.append(body)
        self._held_rows += rows
        self._held_bytes += len(body)
        self._held_piece = piece
        if self._held_bytes >= FRAME_BYTES:
            await self.flush()

    async def flush(self) -> None:
        """Sends what is held (returns when the parent has taken it)."""
        if not self._held:
            return
        body = self._held[0] if len(self._held) == 1 else self.separator.join(self._held)
        rows, self._held, self._held_rows, self._held_bytes = self._held_rows, [], 0, 0
        await self.channel.send(BATCH, self._held_piece, rows, body)

    async def password(self) -> str | None:
        await self.channel.send(ASK)
        kind, _, _, payload = await self.channel.receive()
        return bytes(payload).decode() if kind == PASSWORD else None

    async def serve(self) -> None:
        _lane.set(self)
        try:
            _, _, _, payload = await self.channel.receive()
        except (asyncio.IncompleteReadError, ConnectionError):
            return  # the parent is gone before the first word
        settings, snapshot_id = pickle.loads(payload)  # noqa: S301 - from our parent, over a private socket pair
        reader = Reader(settings, self.password, snapshot_id)
        self.separator = ARRAY_SEPARATOR if settings.format == "json" else b""
        try:
            while True:
                kind, _, _, payload = await self.channel.receive()
                if kind == STOP:
                    break
                piece: Piece | Group = pickle.loads(payload)  # noqa: S301 - as above
                await reader.read(piece, self)
                await self.flush()
                await self.channel.send(DONE)
        except DumperError as exc:
            reader.abort()
            await self._send_quietly(FAIL, pickle.dumps(exc))
        except (asyncio.IncompleteReadError, ConnectionError):
            reader.abort()  # the parent is gone: nothing to report to
        except Exception as exc:
            reader.abort()
            traceback.print_exc()
            error = DumperError(f"worker process {os.getpid()}: unexpected {type(exc).__name__}: {exc}")
            await self._send_quietly(FAIL, pickle.dumps(error))
        else:
            await reader.close()

    async def _send_quietly(self, kind: bytes, payload: bytes) -> None:
        with contextlib.suppress(ConnectionError):
            await self.channel.send(kind, payload=payload)


class _Forward(logging.Handler):
    """Log records go to the parent, which writes them with the lane's table bound."""

    def __init__(self, first: _WorkerLane) -> None:
        super().__init__()
        self.first = first

    def emit(self, record: logging.LogRecord) -> None:
        lane = _lane.get() or self.first
        body = {"level": record.levelno, "event": record.getMessage(), "fields": fields_of(record)}
        lane.channel.send_later(LOG, orjson.dumps(body, default=str))  # goes before the lane's next frame


async def _beat(lanes: list[_WorkerLane]) -> None:
    """Proof of life, and pending log lines, for lanes not busy sending."""
    while True:
        for lane in lanes:
            if not lane.channel.sending.locked():
                with contextlib.suppress(OSError):  # that lane's parent end is gone: its task ends on its own
                    await lane.channel.send(BEAT)
        await asyncio.sleep(BEAT_EVERY)


async def _serve(fds: list[int]) -> None:
    lanes = [_WorkerLane(Channel(socket.socket(fileno=fd))) for fd in fds]
    forward = _Forward(lanes[0])
    for logger in (log, logging.getLogger()):
        logger.handlers[:] = [forward]
    log.setLevel(logging.INFO)
    log.propagate = False
    beat = asyncio.create_task(_beat(lanes))
    try:
        async with asyncio.TaskGroup() as group:
            for lane in lanes:
                group.create_task(lane.serve())
    finally:
        beat.cancel()


def main(argv: list[str]) -> int:
    """`python -m dumper.dump.workers PARENT_PID FD...` (started by `started`, never by hand)."""
    return child_main(argv, _serve)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
