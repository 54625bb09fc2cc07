"""A TCP proxy that cuts each connection after N bytes from the client.

Stands in for a network or S3 endpoint failing mid-upload: small requests
(create/abort multipart upload, list) pass, large part uploads are cut.
"""

from __future__ import annotations

import asyncio
import threading


class CuttingProxy:
    def __init__(self, upstream_host: str, upstream_port: int, cut_after: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.cut_after = cut_after
        self.port = 0
        self.cuts = 0

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    limit: int | None) -> None:
        sent = 0
        try:
            while data := await reader.read(65536):
                if limit is not None and sent + len(data) > limit:
                    self.cuts += 1
                    break
                sent += len(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection(*self.upstream)
        await asyncio.gather(self._pipe(client_r, up_w, self.cut_after), self._pipe(up_r, client_w, None))

    def start(self) -> CuttingProxy:
        ready = threading.Event()
        loop = asyncio.new_event_loop()
        self._loop = loop

        async def serve() -> None:
            server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            async with server:
                await server.serve_forever()

        def run() -> None:
            self._task = loop.create_task(serve())
            try:
                loop.run_until_complete(self._task)
            except asyncio.CancelledError:
                pass
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(10)
