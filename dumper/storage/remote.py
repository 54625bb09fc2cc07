"""A file on an object store (or any fsspec file system that is not local):
the upload is the unit, completed on commit or aborted, so no partial object
and no pending upload stays. Object-store calls block, so they run in a worker
thread, never on the loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from .local import CHUNK, Guard

READ_RANGE = 8 << 20  # bytes per GET when reading back from an object store
MIB = 1 << 20
MAX_PART = 5 * 1024 * MIB  # S3's largest part
PARTS_PER_STEP = 1000  # part size doubles every 1000 parts (see part_size)
DISCARD_WAIT = 120  # seconds a part in flight may take before its upload is aborted anyway
T = TypeVar("T")


def part_size(base: int, parts_done: int) -> int:
    """The next part's size: doubles every PARTS_PER_STEP parts, never above S3's
    largest part; S3's 10,000 parts then hold ~13.9 TB at a 16 MiB base."""
    return min(MAX_PART, base << (parts_done // PARTS_PER_STEP))


def read_chunks(fs: Any, path: str) -> Iterator[bytes]:
    """Ranged GETs, not fsspec's file object: s3fs's file read crashes on a read
    timeout (IndexError on the error's args) instead of raising it."""
    size = int(fs.info(path)["size"])
    for start in range(0, size, READ_RANGE):
        data = fs.cat_file(path, start=start, end=min(start + READ_RANGE, size))
        for at in range(0, len(data), CHUNK):
            yield data[at : at + CHUNK]


class RemoteFile:
    """One upload in progress: parts as they fill, completed by commit."""

    def __init__(self, fs: Any, final: str, guard: Guard, part_mib: int, exclusive: bool) -> None:
        self.final = final
        self._guard = guard
        self._part_size = part_mib * MIB
        self._busy: asyncio.Future[Any] | None = None
        # "xb": the upload completes with If-None-Match: *, so it never replaces an object
        mode = "xb" if exclusive else "wb"
        self._file = guard(lambda: fs.open(final, mode, block_size=self._part_size), final)

    async def _blocking(self, action: Callable[[], T]) -> T:
        """Run a blocking object-store call in a thread; remember it until done."""
        self._busy = asyncio.ensure_future(asyncio.to_thread(self._guard, action, self.final))
        return await asyncio.shield(self._busy)

    async def write(self, data: bytes | bytearray) -> None:
        if not data:
            return
        await self._blocking(lambda: self._file.write(data))
        self._file.blocksize = part_size(self._part_size, len(getattr(self._file, "parts", None) or ()))

    async def commit(self) -> None:
        await self._blocking(self._file.close)  # completes the multipart upload

    async def discard(self) -> None:
        """Best effort, never raises: used while another error is on its way out."""
        try:
            if self._busy is not None and not self._busy.done():
                await asyncio.wait([self._busy], timeout=DISCARD_WAIT)  # a part in flight, then abort
            await asyncio.to_thread(self._file.discard)  # aborts the multipart upload
            self._file.closed = True  # or fsspec's __del__ would try to upload the rest
        except (Exception, asyncio.CancelledError):  # noqa: S110 - must not hide the original error
            pass
