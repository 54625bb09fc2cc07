"""Bytes as stored: optional gzip, with size and sha256 computed while writing.

Pure (compression and hashing only). The same code reads a stored file back
for `verify`. gzip levels 1-3 use ISA-L (python-isal): as small as zlib's
level 3-4 at ~5x its speed on dump output; levels 4-9 use zlib.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, cast

from isal import isal_zlib

from ..core.errors import VerifyError

GZIP = 31  # wbits: gzip header and trailer
# What a damaged gzip stream raises (ISA-L's error is its own class, not zlib's).
CORRUPT: tuple[type[Exception], ...] = (zlib.error, cast(type[Exception], isal_zlib.error))
OUT_PIECE = 1 << 20  # bytes decompressed at a time while verifying
# A stored chunk this large is hashed in a thread of its own while the reader goes on with it
# (hashlib lets go of the GIL): measured on the bench's 357 MB table file, hashing is ~0.2 s of
# the ~0.36 s a verify takes, and the same again in the thread that turns a restore's rows
# into COPY data. A smaller one (a small table's file) is hashed where it is read.
HASH_BEHIND = 256 << 10


def _compressor(level: int) -> Any:
    if level <= isal_zlib.ISAL_BEST_COMPRESSION:
        return isal_zlib.compressobj(level, isal_zlib.DEFLATED, GZIP)
    return zlib.compressobj(level, zlib.DEFLATED, GZIP)


class StoredWriter:
    """Compress and checksum a stream of bytes; returns what to store."""

    def __init__(self, compression: str, level: int = 1) -> None:
        self._zip = _compressor(level) if compression == "gzip" else None
        self._sha = hashlib.sha256()
        self.bytes = 0

    def _out(self, data: bytes | bytearray) -> bytes | bytearray:
        self._sha.update(data)
        self.bytes += len(data)
        return data

    def add(self, data: bytes | bytearray) -> bytes | bytearray:
        return self._out(self._zip.compress(data) if self._zip else data)

    def finish(self) -> bytes | bytearray:
        """The last stored bytes (gzip trailer); call once, at the end."""
        return self._out(self._zip.flush()) if self._zip else b""

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()


@dataclass(frozen=True)
class StoredStats:
    bytes: int
    sha256: str
    newlines: int


class Tally:
    """Stored chunks passed through, counted and hashed on the way."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = chunks
        self._sha = hashlib.sha256()
        self.bytes = 0

    def __iter__(self) -> Iterator[bytes]:
        pool: ThreadPoolExecutor | None = None
        hashing: Future[None] | None = None  # the previous chunk's: the hash takes them in order
        chunks = iter(self._chunks)
        try:
            chunk = next(chunks, None)
            while chunk is not None:
                self.bytes += len(chunk)
                if hashing is not None:
                    hashing.result()
                if len(chunk) < HASH_BEHIND:
                    self._sha.update(chunk)
                else:
                    pool = pool or ThreadPoolExecutor(1, thread_name_prefix="sha256")
                    hashing = pool.submit(self._sha.update, chunk)
                following = next(chunks, None)  # read while the chunk is hashed (its thread starts then)
                yield chunk
                chunk = following
            if hashing is not None:
                hashing.result()
        finally:
            if pool is not None:
                pool.shutdown()  # (a chunk being hashed is finished first)

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()


def check_read(tally: Tally, read_rows: int, name: str, rows: int, stored_bytes: int, sha256: str) -> None:
    """A table file as a restore read it equals the manifest's entry (VerifyError if not)."""
    if tally.bytes != stored_bytes or tally.sha256 != sha256:
        raise VerifyError(
            f"{name}: changed since it was verified ({tally.bytes} bytes, "
            f"sha256 {tally.sha256}; the manifest says {stored_bytes} bytes, sha256 {sha256})"
        )
    if read_rows != rows:
        raise VerifyError(f"{name}: {read_rows} rows, the manifest says {rows}")


def content(chunks: Iterable[bytes], compression: str) -> Iterator[bytes]:
    """The content of stored chunks, decompressed at most OUT_PIECE bytes at a
    time: a small gzip bomb stays small. A file of several gzip members (a sharded
    run's: one a piece) is their contents in order. A damaged stream raises CORRUPT."""
    if compression != "gzip":
        yield from chunks
        return
    unzip = isal_zlib.decompressobj(GZIP)
    for chunk in chunks:
        data = chunk
        while data:
            yield unzip.decompress(data, OUT_PIECE)
            if unzip.eof:  # a member ended: the next one starts in what is left
                data = unzip.unused_data
                unzip = isal_zlib.decompressobj(GZIP)
            else:
                data = unzip.unconsumed_tail
    yield unzip.flush()


def read_stats(chunks: Iterable[bytes], compression: str) -> StoredStats:
    """Size and sha256 of stored bytes, and '\\n' count of their content."""
    tally = Tally(chunks)
    newlines = sum(piece.count(b"\n") for piece in content(tally, compression))
    return StoredStats(tally.bytes, tally.sha256, newlines)
