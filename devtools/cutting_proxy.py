"""A TCP proxy that cuts, or stalls, each connection after N bytes from the client,
and keeps what clients sent (`requests()` parses it as HTTP/1.1).

Stands in for a network or S3 endpoint failing mid-upload: small requests
(create/abort multipart upload, list) pass, large part uploads are cut. With
stall=True the connection is not cut but held open without reading: the
client's send window closes, as with a frozen endpoint or a black hole. With
stall_replies_after, replies stop after N bytes of each connection (a download
that freezes, or a database that stops sending in the middle of a table).
With cut_when, a connection is cut as soon as its client has sent those bytes
(several: each, in that order), at most cuts_at_most times in all (a database
connection lost at one chosen statement; it must speak without TLS).

A stall lasts until stop(), or until release(): held connections go on
where they stopped (nothing is lost or reordered) and are never held again;
from then on nothing is held, or with release(hold_next=True) the next
connections past N bytes are. `held` is set once some connection is held: a
test waits for it, then knows where the client is (past N bytes of one
connection, and no further).
"""

from __future__ import annotations

import asyncio
import threading
import time

from devtools.background import BackgroundServer


class CuttingProxy:
    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        cut_after: int | None = None,
        stall: bool = False,
        cut_when: bytes | tuple[bytes, ...] | None = None,
        stall_replies_after: int | None = None,
        cuts_at_most: int | None = None,
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.stall_replies_after = stall_replies_after  # hold each reply after this many bytes (a frozen server)
        self.cut_after = cut_after
        # cut a connection as soon as the client has sent these bytes (or each of these, in this order)
        self.cut_when = (cut_when,) if isinstance(cut_when, bytes) else cut_when
        self.cuts_at_most = cuts_at_most  # then let every connection be
        self.stall = stall
        self.port = 0
        self.cuts = 0
        self.stalls = 0
        self.held = threading.Event()  # some connection is held now (or was, before release())
        self.held_at = 0.0  # when the last connection was held (time.monotonic)
        self._released: asyncio.Event | None = None  # created on the proxy's own loop
        self._handlers: set[asyncio.Task[None]] = set()  # held connections: referenced until stop()
        self.sent: list[bytearray] = []  # what each client connection sent, in order

    async def _hold(self) -> None:
        """Read nothing more until release() (or stop())."""
        assert self._released is not None
        self.stalls += 1
        self.held_at = time.monotonic()
        self.held.set()
        await self._released.wait()

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        limit: int | None,
        keep: bytearray | None = None,
        stall: bool | None = None,
    ) -> None:
        stall = self.stall if stall is None else stall
        sent = 0
        was_held = False
        try:
            while data := await reader.read(65536):
                if keep is not None:
                    keep += data
                    if self._cut_now(keep):
                        self.cuts += 1
                        break
                if limit is not None and sent + len(data) > limit and not was_held and not self._is_released():
                    if not stall:
                        self.cuts += 1
                        break
                    head, data = data[: limit - sent], data[limit - sent :]  # exactly `limit` bytes go through
                    writer.write(head)
                    await writer.drain()
                    sent += len(head)
                    await self._hold()
                    was_held = True
                sent += len(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    def _cut_now(self, sent: bytearray) -> bool:
        if self.cut_when is None or (self.cuts_at_most is not None and self.cuts >= self.cuts_at_most):
            return False
        at = 0
        for pattern in self.cut_when:
            at = sent.find(pattern, at)
            if at < 0:
                return False
            at += len(pattern)
        return True

    def _is_released(self) -> bool:
        return self._released is not None and self._released.is_set()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            up_r, up_w = await asyncio.open_connection(*self.upstream)
            keep = bytearray()
            self.sent.append(keep)
            await asyncio.gather(
                self._pipe(client_r, up_w, self.cut_after, keep),
                self._pipe(up_r, client_w, self.stall_replies_after, stall=True),
            )
        finally:
            client_w.close()
            self._handlers.discard(task)

    def start(self) -> CuttingProxy:
        self._server = BackgroundServer(self._handle).start()
        self._loop = self._server.loop
        asyncio.run_coroutine_threadsafe(self._make_event(), self._loop).result(10)
        self.port = self._server.port
        return self

    async def _make_event(self) -> None:
        self._released = asyncio.Event()  # bound to the proxy's loop

    def release(self, hold_next: bool = False) -> None:
        """Held connections go on (never to be held again); nothing more is held,
        or with hold_next the next connection past the bound is (in one step: no
        connection can slip past the bound between the two)."""

        async def set_released() -> None:
            assert self._released is not None
            self._released.set()
            if hold_next:
                self.held.clear()
                self._released = asyncio.Event()

        asyncio.run_coroutine_threadsafe(set_released(), self._loop).result(10)

    def stop(self) -> None:
        self._server.stop()


def http_requests(stream: bytes) -> list[tuple[str, dict[str, str]]]:
    """(request line, headers with lower-case names) of each HTTP/1.1 request in
    what one client connection sent (bodies framed by Content-Length)."""
    found = []
    while stream:
        head, sep, rest = stream.partition(b"\r\n\r\n")
        if not sep:
            raise ValueError(f"incomplete request head: {head[:200]!r}")
        line, *fields = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (f.partition(":") for f in fields)}
        if "chunked" in headers.get("transfer-encoding", ""):
            raise ValueError("chunked bodies are not parsed")
        length = int(headers.get("content-length", "0"))
        found.append((line, headers))
        stream = rest[length:]
    return found
