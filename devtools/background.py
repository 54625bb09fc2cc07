"""An asyncio TCP server on 127.0.0.1, run from a background thread (test helpers)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _end_connections() -> None:
    """Connections still being handled (a proxy holding one open) end too, sockets closed."""
    pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    await asyncio.sleep(0)  # transports close on the next iteration


class BackgroundServer:
    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self.port = 0

    def start(self) -> BackgroundServer:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        async def serve() -> None:
            server = await asyncio.start_server(self._handler, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            async with server:
                await server.serve_forever()

        def run() -> None:
            self._task = self._loop.create_task(serve())
            try:
                self._loop.run_until_complete(self._task)
            except asyncio.CancelledError:
                pass
            finally:
                self._loop.run_until_complete(_end_connections())
                self._loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("background server did not start")
        return self

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The server's own event loop (in its thread)."""
        return self._loop

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(10)
