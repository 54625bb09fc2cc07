"""A TCP proxy that cuts each connection after N bytes from the client.

Stands in for a network or S3 endpoint failing mid-upload: small requests
(create/abort multipart upload, list) pass, large part uploads are cut.
"""

from __future__ import annotations

import asyncio

from devtools.background import BackgroundServer


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
        self._server = BackgroundServer(self._handle).start()
        self.port = self._server.port
        return self

    def stop(self) -> None:
        self._server.stop()
