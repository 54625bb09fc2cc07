"""Frames between a process and a worker process it started: a header (kind, a number, a
count, length) and a payload, over a socket pair. The dump's workers (dump/workers.py) and a
restore's converters (restore/converters.py) each name their own kinds."""

from __future__ import annotations

import asyncio
import socket
import struct

HEADER = struct.Struct("!cIIQ")  # kind, piece index, rows, payload bytes


class Channel:
    """Frames over one lane's socket (non-blocking). Payloads go out and come
    in without intermediate buffers: one copy each way, done by the kernel."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.sending = asyncio.Lock()  # one frame at a time, never interleaved
        self._later: list[bytes] = []  # frames queued without waiting (log lines), sent before the next frame

    async def send(self, kind: bytes, piece: int = 0, rows: int = 0, payload: bytes | bytearray = b"") -> None:
        async with self.sending:
            while self._later:
                await self.loop.sock_sendall(self.sock, self._later.pop(0))
            await self.loop.sock_sendall(self.sock, HEADER.pack(kind, piece, rows, len(payload)))
            if payload:
                await self.loop.sock_sendall(self.sock, payload)

    def send_later(self, kind: bytes, payload: bytes) -> None:
        """Queue a frame from code that cannot wait (a logging handler)."""
        self._later.append(HEADER.pack(kind, 0, 0, len(payload)) + payload)

    async def receive(self, silence: float | None = None) -> tuple[bytes, int, int, bytes | bytearray]:
        """The next frame; TimeoutError when no byte came for `silence` seconds,
        IncompleteReadError when the other side is gone."""
        kind, piece, rows, size = HEADER.unpack(await self._exactly(HEADER.size, silence))
        return kind, piece, rows, (await self._exactly(size, silence) if size else b"")

    async def _exactly(self, size: int, silence: float | None) -> bytearray:
        data = bytearray(size)
        with memoryview(data) as view:
            got = 0
            while got < size:
                async with asyncio.timeout(silence):
                    count = await self.loop.sock_recv_into(self.sock, view[got:])
                if not count:
                    raise asyncio.IncompleteReadError(bytes(view[:got]), size)
                got += count
        return data

    def close(self) -> None:
        self.sock.close()
