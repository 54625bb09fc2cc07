"""Bytes as stored: optional gzip, with size and sha256 computed while writing.

Pure (compression and hashing only). The same code reads a stored file back
for `verify`. gzip levels 1-3 use ISA-L (python-isal): as small as zlib's
level 3-4 at ~5x its speed on dump output; levels 4-9 use zlib.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

from isal import isal_zlib

GZIP = 31  # wbits: gzip header and trailer
# What a damaged gzip stream raises (ISA-L's error is its own class, not zlib's).
CORRUPT: tuple[type[Exception], ...] = (zlib.error, cast(type[Exception], isal_zlib.error))
OUT_PIECE = 1 << 20  # bytes decompressed at a time while verifying


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

    def _out(self, data: bytes) -> bytes:
        self._sha.update(data)
        self.bytes += len(data)
        return data

    def add(self, data: bytes) -> bytes:
        return self._out(self._zip.compress(data) if self._zip else data)

    def finish(self) -> bytes:
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


def read_stats(chunks: Iterable[bytes], compression: str) -> StoredStats:
    """Size and sha256 of stored bytes, and '\\n' count of their content."""
    sha = hashlib.sha256()
    size = newlines = 0
    unzip = isal_zlib.decompressobj(GZIP) if compression == "gzip" else None
    for chunk in chunks:
        sha.update(chunk)
        size += len(chunk)
        if unzip is None:
            newlines += chunk.count(b"\n")
            continue
        # At most OUT_PIECE bytes decompressed at a time: a small gzip bomb stays small.
        data = chunk
        while data:
            newlines += unzip.decompress(data, OUT_PIECE).count(b"\n")
            data = unzip.unconsumed_tail
    if unzip:
        newlines += unzip.flush().count(b"\n")
    return StoredStats(size, sha.hexdigest(), newlines)
